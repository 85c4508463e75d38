"""Plots and a results table of a training run: ``python -m mtl_jax.report WORKDIR``.

* ``write_report(workdir, *, out_dir=None, smooth=None)``: writes ``losses.png``,
  ``weights.png``, ``conflicts.png`` (when the run logged gradient diagnostics) and
  ``results.md`` into ``workdir/plots/``; returns ``{name: path}`` with ``notes`` saying why a
  plot was left out.
* ``figures(workdir)``: the same plots as ``matplotlib`` figures, for a notebook.
* ``read_metrics(workdir)``, ``read_results(workdir)``, ``results_table(results)``: the
  parsed ``metrics.jsonl`` lines, ``results.json`` and its Markdown table.

Needs matplotlib: ``pip install 'mtl_jax[plots]'``.  The command line prints the files
written, one a line; a bad work directory is a one-line ``mtl_jax: ...`` error, exit status 2.
"""

import sys

from mtl_jax._src.report import (Report, ReportError, conflicts_figure, ema, figures,
                                 losses_figure, main, read_metrics, read_results, results_table,
                                 smoothing_weight, task_names, weights_figure, write_report)

__all__ = ['Report', 'ReportError', 'conflicts_figure', 'ema', 'figures', 'losses_figure', 'main',
           'read_metrics', 'read_results', 'results_table', 'smoothing_weight', 'task_names',
           'weights_figure', 'write_report']

if __name__ == '__main__':
  sys.exit(main())
