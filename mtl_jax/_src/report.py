"""Plots and a results table of a training run, from its ``metrics.jsonl`` and ``results.json``.

``write_report(workdir)`` writes into ``workdir/plots/``:

* ``losses.png``: each task's training loss against the step (a light raw line and an
  exponential moving average), and the validation metrics ``val/<task>/<metric>`` (one panel
  per metric) when the run evaluated during training (``config.eval.every``);
* ``weights.png``: the task weights ``weight/<task>`` against the step;
* ``conflicts.png``: the gradient diagnostics, when the run logged them: the cosine of each
  task pair's gradients ``grad_cos/<a>/<b>`` (curves for up to 6 pairs; for more, the
  ``[T, T]`` cosine matrix averaged over up to 4 stretches of the run), each task's gradient
  norm ``grad_norm/<task>`` and the number of conflicting pairs ``conflicts``;
* ``results.md``: the test metrics as a Markdown table (and single-task baselines and Delta-m%
  when the run has them), with links to the plots.

A plot whose data is not in ``metrics.jsonl`` is left out and the returned ``Report``'s
``notes`` say why.  ``figures(workdir)`` returns the same plots as ``matplotlib`` figures
(made without ``pyplot``, so they need no backend; a notebook shows them inline once
``%matplotlib inline`` is active, as in Colab, or after any pyplot figure).
matplotlib is the optional extra ``plots``: ``pip install 'mtl_jax[plots]'``.
"""

import argparse
import itertools
import json
import math
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

NO_DIAGNOSTICS = ('metrics.jsonl has no gradient diagnostics (grad_cos/<a>/<b>, '
                  'grad_norm/<task>, conflicts): the method is loss-only and '
                  'config.train.diagnostics_every is 0')
MAX_PAIR_CURVES = 6       # more task pairs than this: cosine matrices instead of curves
MAX_MATRICES = 4          # the cosine matrices of at most this many stretches of the run
PLOT_FILES = {'losses': 'losses.png', 'weights': 'weights.png', 'conflicts': 'conflicts.png'}


class ReportError(ValueError):
  """A work directory the report cannot be made from (missing, no metrics, bad results.json)."""


class Report(dict):
  """``{plot name: value}`` (a file path or a figure) with ``notes``: ``{name: why it was left
  out, or what was skipped}``."""

  def __init__(self, *args, notes: Optional[Mapping[str, str]] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.notes = dict(notes or {})


def _matplotlib():
  """``matplotlib.figure``, or an ``ImportError`` saying how to install it."""
  try:
    import matplotlib.figure  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("mtl_jax.report needs matplotlib: pip install 'mtl_jax[plots]'") from e
  return matplotlib.figure


def _check_workdir(workdir: str) -> None:
  if not os.path.exists(workdir):
    raise ReportError(f'{workdir}: no such directory')
  if not os.path.isdir(workdir):
    raise ReportError(f'{workdir}: not a directory (give a training run\'s work directory)')


def _read_metrics(workdir: str) -> tuple[list, list]:
  """The rows of ``metrics.jsonl`` and the numbers of the lines that could not be parsed."""
  _check_workdir(workdir)
  path = os.path.join(workdir, 'metrics.jsonl')
  why = 'metrics.jsonl is missing'
  rows, bad = [], []
  if os.path.isfile(path):
    with open(path, errors='replace') as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          row = None
        if isinstance(row, dict) and isinstance(row.get('step'), (int, float)):
          rows.append(row)
        else:
          bad.append(number)         # e.g. the last line of a killed run, cut short
    why = (f'metrics.jsonl has no parseable line ({len(bad)} unparseable)' if bad
           else 'metrics.jsonl is empty')
  if not rows:
    raise ReportError(f"{workdir} has no metrics: {why}; was this a training run's work "
                      'directory?')
  return rows, bad


def read_metrics(workdir: str) -> list:
  """The parsed lines of ``workdir/metrics.jsonl`` (``[{'step': n, key: value}]``, in file
  order); lines that are not a JSON object with a ``step`` (a line cut short when the run was
  killed) are skipped.  Raises ``ReportError`` if there is no such line."""
  return _read_metrics(workdir)[0]


def read_results(workdir: str) -> Optional[dict]:
  """``workdir/results.json``, or None if the run has not written it (still going, killed).
  Raises ``ReportError`` naming the file if it is not a JSON object."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ReportError(f'{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})'
                      ) from e
  except (OSError, UnicodeDecodeError) as e:
    raise ReportError(f'{path}: cannot be read ({e})') from e
  if not isinstance(results, dict):
    raise ReportError(f'{path}: expected a JSON object, got {type(results).__name__}')
  return results


def task_names(rows: Sequence[Mapping], results: Optional[Mapping] = None) -> list:
  """The tasks, in task order: ``results['tasks']``, else the ``loss/<task>`` keys of
  ``rows`` in first-seen order."""
  if results and isinstance(results.get('tasks'), list):
    return [str(t) for t in results['tasks']]
  names = {}
  for row in rows:
    names.update((k[len('loss/'):], None) for k in row if k.startswith('loss/'))
  return list(names)


def series(rows: Sequence[Mapping], key: str, finite: bool = False) -> tuple:
  """``(steps, values)`` float arrays of the rows that have ``key`` (only its finite values
  with ``finite``: NaN marks an unmeasured diagnostic)."""
  pairs = [(r['step'], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  steps, values = (np.array(x, float) for x in zip(*pairs)) if pairs else (np.zeros(0),) * 2
  if finite:
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
  return steps, values


def smoothing_weight(count: int, smooth: Optional[float] = None) -> float:
  """The EMA weight for ``count`` points: ``smooth`` if given (in ``[0, 1)``; 0 is no
  smoothing), else ``1 - 50 / count`` in ``[0, 0.95]`` (a window of ``count / 50`` points,
  at most 20: more would lag behind a loss that falls fast)."""
  if smooth is not None:
    if not 0.0 <= smooth < 1.0:
      raise ValueError(f'smooth: the EMA weight must be in [0, 1), got {smooth}')
    return float(smooth)
  return float(np.clip(1.0 - 50.0 / max(count, 1), 0.0, 0.95))


def ema(values: np.ndarray, weight: float) -> np.ndarray:
  """Exponential moving average ``s_i = weight s_{i-1} + (1 - weight) x_i``, ``s_0 = x_0``;
  non-finite values (rejected steps) are stepped over, keeping the previous average."""
  out = np.full(len(values), np.nan)
  average = np.nan
  for i, x in enumerate(np.asarray(values, float)):
    if np.isfinite(x):
      average = x if np.isnan(average) else weight * average + (1.0 - weight) * x
    out[i] = average
  return out


def _log_if_wide(ax, values) -> None:
  """A log y-axis when every finite value is positive and they span more than a decade."""
  values = np.concatenate([np.ravel(v) for v in values]) if len(values) else np.zeros(0)
  values = values[np.isfinite(values)]
  if values.size and values.min() > 0 and values.max() > 10 * values.min():
    ax.set_yscale('log')


def _title(results: Optional[Mapping], workdir: str) -> str:
  if not results:
    return f'{os.path.basename(os.path.abspath(workdir))} (no results.json yet)'
  parts = [results.get('model'), results.get('weighting')]
  what = ', '.join(str(p) for p in parts if p)
  return f"{results.get('config_name', os.path.basename(os.path.abspath(workdir)))}: {what}"


def _grid(figure_module, panels: int, title: str, width: float = 5.5, height: float = 4.0):
  """A constrained-layout figure with ``panels`` axes, up to 3 a row."""
  cols = min(panels, 3)
  rows = math.ceil(panels / cols)
  fig = figure_module.Figure(figsize=(width * cols, height * rows), layout='constrained')
  fig.suptitle(title)
  axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
  return fig, axes


def _markers(count: int) -> dict:
  return {'marker': 'o', 'markersize': 3} if count <= 50 else {}


def _val_metrics(rows: Sequence[Mapping], tasks: Sequence[str]) -> dict:
  """``{metric: [(task, key)]}`` of the ``val/<task>/<metric>`` keys, in first-seen order."""
  found = {}
  by_length = sorted(tasks, key=len, reverse=True)    # 'a/b' before 'a'
  for row in rows:
    for key in row:
      if not key.startswith('val/'):
        continue
      task = next((t for t in by_length if key.startswith(f'val/{t}/')), None)
      if task is not None:
        found.setdefault(key[len(f'val/{task}/'):], {})[task] = key
  return {m: [(t, keys[t]) for t in tasks if t in keys] for m, keys in found.items()}


def losses_figure(rows: Sequence[Mapping], tasks: Sequence[str], *, smooth=None,
                  results: Optional[Mapping] = None, title: str = ''):
  """Training losses and validation metrics against the step.

  The first panel has, per task, the raw ``loss/<task>`` (light line, gid ``loss/<task>/raw``)
  and its EMA (gid ``loss/<task>/smoothed``, weight ``smoothing_weight(n, smooth)``), on a
  log scale when positive and spanning more than a decade.  One more panel per validation
  metric: ``val/<task>/<metric>`` per task (gid ``val/<task>/<metric>``), with the metric's
  direction (↑ higher is better, ↓ lower) from ``results['higher_is_better']``.

  Args:
    rows: the lines of ``metrics.jsonl`` (``read_metrics``).
    tasks: the task names, in task order.
    smooth: the EMA weight in ``[0, 1)``; None chooses one from the number of steps.
    results: ``results.json`` (for the metrics' directions), or None.
    title: the figure's title.

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  figure_module = _matplotlib()
  val = _val_metrics(rows, tasks)
  fig, axes = _grid(figure_module, 1 + len(val), title)
  ax, raw_values = axes[0], []
  for i, task in enumerate(tasks):
    steps, values = series(rows, f'loss/{task}')
    if not steps.size:
      continue
    weight = smoothing_weight(len(values), smooth)
    ax.plot(steps, values, color=f'C{i}', alpha=0.3, linewidth=0.8, gid=f'loss/{task}/raw',
            label='_nolegend_', **_markers(len(values)))
    ax.plot(steps, ema(values, weight), color=f'C{i}', linewidth=1.6,
            gid=f'loss/{task}/smoothed', label=task)
    raw_values.append(values)
  _log_if_wide(ax, raw_values)
  ax.set(title='training loss per task (light: raw; solid: moving average)', xlabel='step',
         ylabel='loss')
  if raw_values:
    ax.legend(fontsize='small')
  directions = (results or {}).get('higher_is_better') or {}
  for ax, (metric, keys) in zip(axes[1:], val.items()):
    for task, key in keys:
      steps, values = series(rows, key)
      ax.plot(steps, values, color=f'C{list(tasks).index(task)}', gid=key, label=task,
              **_markers(len(values)))
    higher = [directions.get(t, {}).get(metric) for t, _ in keys]
    arrow = ' ↑' if any(higher) else ' ↓' if any(h is False for h in higher) else ''
    ax.set(title=f'validation {metric}{arrow}', xlabel='step', ylabel=metric)
    ax.legend(fontsize='small')
  return fig


def weights_figure(rows: Sequence[Mapping], tasks: Sequence[str], *, smooth=None,
                   title: str = ''):
  """The task weights ``weight/<task>`` against the step, or None when ``rows`` have none.

  One curve per task (gid ``weight/<task>``); when the EMA weight
  ``smoothing_weight(n, smooth)`` is above 0 (long runs; noisy weightings such as ``rlw``)
  that curve is light and its EMA (gid ``weight/<task>/smoothed``) is drawn over it.
  Arguments as ``losses_figure``.
  """
  found = [(i, t) for i, t in enumerate(tasks) if series(rows, f'weight/{t}')[0].size]
  if not found:
    return None
  fig, (ax,) = _grid(_matplotlib(), 1, title, width=7.0)
  smoothed = False
  for i, task in found:
    steps, values = series(rows, f'weight/{task}')
    weight = smoothing_weight(len(values), smooth)
    smoothed |= weight > 0
    ax.plot(steps, values, color=f'C{i}', gid=f'weight/{task}',
            **({'alpha': 0.3, 'linewidth': 0.8, 'label': '_nolegend_'} if weight > 0
               else {'label': task}), **_markers(len(values)))
    if weight > 0:
      ax.plot(steps, ema(values, weight), color=f'C{i}', gid=f'weight/{task}/smoothed',
              label=task)
  ax.set(title='task weights' + (' (light: raw; solid: moving average)' if smoothed else ''),
         xlabel='step', ylabel='weight')
  ax.legend(fontsize='small')
  return fig


def _cosine_curves(ax, rows, pairs) -> None:
  """One curve of ``grad_cos/<a>/<b>`` per pair (gid the key), and the zero line."""
  for k, (a, b) in enumerate(pairs):
    steps, values = series(rows, f'grad_cos/{a}/{b}', finite=True)
    ax.plot(steps, values, color=f'C{k}', gid=f'grad_cos/{a}/{b}', label=f'{a} · {b}',
            **_markers(len(values)))
  ax.axhline(0.0, color='gray', linewidth=0.8, linestyle='--')
  ax.set(title='gradient cosine per task pair (below 0: conflict)', xlabel='step',
         ylabel='cosine', ylim=(-1.05, 1.05))
  ax.legend(fontsize='small')


def cosine_matrices(rows: Sequence[Mapping], tasks: Sequence[str],
                    parts: int = MAX_MATRICES) -> list:
  """``[(first step, last step, [T, T] mean cosine)]`` over up to ``parts`` equal stretches
  of the steps that logged ``grad_cos``; 1 on the diagonal, NaN for a pair never measured."""
  steps = sorted({r['step'] for r in rows if any(k.startswith('grad_cos/') for k in r)})
  out = []
  for chunk in np.array_split(np.array(steps), min(parts, len(steps))):
    low, high = chunk[0], chunk[-1]
    part = [r for r in rows if low <= r['step'] <= high]
    matrix = np.eye(len(tasks))
    for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
      values = series(part, f'grad_cos/{a}/{b}', finite=True)[1]
      matrix[i, j] = matrix[j, i] = values.mean() if values.size else np.nan
    out.append((int(low), int(high), matrix))
  return out


def _cosine_matrix_axes(fig, axes, rows, tasks) -> None:
  """The mean cosine matrices of ``cosine_matrices`` as heat maps, with one color bar."""
  image = None
  for ax, (low, high, matrix) in zip(axes, cosine_matrices(rows, tasks, len(axes))):
    image = ax.imshow(matrix, cmap='RdBu', vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize='small')
    ax.set_yticks(range(len(tasks)), tasks, fontsize='small')
    ax.set_title(f'gradient cosine, steps {low}-{high}')
  fig.colorbar(image, ax=list(axes), label='mean cosine (red: conflict)')


def conflicts_figure(rows: Sequence[Mapping], tasks: Sequence[str], *, smooth=None,
                     title: str = ''):
  """Gradient conflict over the run, or None when ``rows`` have no gradient diagnostics.

  Top row: the cosine between each task pair's gradients (``grad_cos/<a>/<b>``, the mean
  since the previous log line): a curve per pair (gid the key) for up to 6 pairs, else the
  ``[T, T]`` mean cosine matrices of up to 4 stretches of the run as heat maps.  Bottom row:
  each task's gradient norm ``grad_norm/<task>`` on the steps it was measured (gid the key),
  and the number of conflicting pairs ``conflicts`` (raw, gid ``conflicts/raw``, and its EMA,
  gid ``conflicts/smoothed``).  Panels without data are left out.  Arguments as
  ``losses_figure``.
  """
  pairs = [(a, b) for a, b in itertools.combinations(tasks, 2)
           if series(rows, f'grad_cos/{a}/{b}', finite=True)[0].size]
  norms = [(i, t) for i, t in enumerate(tasks)
           if series(rows, f'grad_norm/{t}', finite=True)[0].size]
  conflict_steps, conflicts = series(rows, 'conflicts', finite=True)
  top = 0 if not pairs else 1 if len(pairs) <= MAX_PAIR_CURVES else min(
      MAX_MATRICES, len(cosine_matrices(rows, tasks)))
  bottom = bool(norms) + bool(conflicts.size)
  if not top and not bottom:
    return None
  figure_module = _matplotlib()
  cols = math.lcm(max(top, 1), max(bottom, 1))
  width = 4.5 * cols if cols > 2 else 11.0
  fig = figure_module.Figure(figsize=(width, 4.0 * ((top > 0) + (bottom > 0))),
                             layout='constrained')
  fig.suptitle(title)
  grid = fig.add_gridspec((top > 0) + (bottom > 0), cols)
  if top:
    axes = [fig.add_subplot(grid[0, k * cols // top:(k + 1) * cols // top]) for k in range(top)]
    if len(pairs) <= MAX_PAIR_CURVES:
      _cosine_curves(axes[0], rows, pairs)
    else:
      _cosine_matrix_axes(fig, axes, rows, tasks)
  axes = [fig.add_subplot(grid[int(top > 0), k * cols // bottom:(k + 1) * cols // bottom])
          for k in range(bottom)]
  if norms:
    _norm_axis(axes.pop(0), rows, norms)
  if conflicts.size:
    _conflict_count_axis(axes.pop(0), conflict_steps, conflicts, len(tasks), smooth)
  return fig


def _norm_axis(ax, rows, norms) -> None:
  """``grad_norm/<task>`` per ``(index, task)`` of ``norms``, on its measured steps."""
  all_values = []
  for i, task in norms:
    steps, values = series(rows, f'grad_norm/{task}', finite=True)
    ax.plot(steps, values, color=f'C{i}', gid=f'grad_norm/{task}', label=task,
            **_markers(len(values)))
    all_values.append(values)
  _log_if_wide(ax, all_values)
  ax.set(title='gradient norm per task (shared parameters)', xlabel='step', ylabel='norm')
  ax.legend(fontsize='small')


def _conflict_count_axis(ax, steps, conflicts, num_tasks: int, smooth) -> None:
  """The number of conflicting pairs per measured step, and its EMA."""
  total = max(num_tasks * (num_tasks - 1) // 2, 1)
  ax.plot(steps, conflicts, color='C3', alpha=0.3, linewidth=0.8, gid='conflicts/raw',
          label='raw', **_markers(len(conflicts)))
  ax.plot(steps, ema(conflicts, smoothing_weight(len(conflicts), smooth)), color='C3',
          gid='conflicts/smoothed', label='moving average')
  ax.set(title=f'conflicting task pairs (of {total})', xlabel='step', ylabel='pairs',
         ylim=(-0.05 * total, 1.05 * total))
  ax.legend(fontsize='small')


def _figures(workdir: str, smooth=None) -> tuple:
  """``(Report of figures, rows, results)``; notes for plots left out and skipped lines."""
  smoothing_weight(1, smooth)                  # a bad ``smooth`` fails before any reading
  rows, bad = _read_metrics(workdir)
  results = read_results(workdir)
  tasks = task_names(rows, results)
  title = _title(results, workdir)
  report = Report()
  if bad:
    report.notes['metrics.jsonl'] = (f'skipped {len(bad)} unparseable line(s) of '
                                     f'metrics.jsonl (line {", ".join(map(str, bad[:5]))}'
                                     f'{", ..." if len(bad) > 5 else ""})')
  report['losses'] = losses_figure(rows, tasks, smooth=smooth, results=results, title=title)
  made = {'weights': weights_figure(rows, tasks, smooth=smooth, title=title),
          'conflicts': conflicts_figure(rows, tasks, smooth=smooth, title=title)}
  why = {'weights': 'metrics.jsonl has no task weights (weight/<task>)',
         'conflicts': NO_DIAGNOSTICS}
  for name, fig in made.items():
    if fig is None:
      report.notes[name] = why[name]
    else:
      report[name] = fig
  return report, rows, results


def figures(workdir: str, *, smooth: Optional[float] = None) -> Report:
  """The plots of the run in ``workdir`` as ``matplotlib.figure.Figure`` objects.

  Args:
    workdir: a training run's work directory (``metrics.jsonl``, optionally
      ``results.json``; a run still going or killed has no ``results.json``).
    smooth: the EMA weight of the smoothed curves in ``[0, 1)``; None chooses it from the
      number of steps.

  Returns:
    ``Report`` ``{'losses': fig, 'weights': fig, 'conflicts': fig}`` (see the module
    docstring); a plot without data is left out, ``notes[name]`` says why.

  Raises:
    ReportError: no such directory, no metrics, an unreadable ``results.json``.
    ImportError: matplotlib is not installed.
  """
  return _figures(workdir, smooth)[0]


def _number(value) -> str:
  if not isinstance(value, (int, float)):
    return str(value)
  if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e5:
    return f'{value:.4f}'
  return f'{value:.3e}'


def metrics_table(metrics: Mapping, higher_is_better: Mapping, tasks: Sequence[str]) -> str:
  """``{task: {metric: value, 'count': n}}`` as a Markdown table: a row per task, a column
  per metric (first-seen order, ↑ when higher is better, ↓ when lower), then ``n``."""
  names = list({m: None for t in tasks for m in metrics.get(t, {}) if m != 'count'})
  arrows = {m: '↑' if any((higher_is_better.get(t) or {}).get(m) for t in tasks) else '↓'
            for m in names}
  lines = ['| task | ' + ' | '.join(f'{m} {arrows[m]}' for m in names) + ' | n |',
           '|---|' + '---:|' * (len(names) + 1)]
  for task in tasks:
    row = metrics.get(task, {})
    cells = [_number(row[m]) if m in row else '-' for m in names]
    count = row.get('count')
    cells.append(str(int(count)) if isinstance(count, (int, float)) else '-')
    lines.append(f'| {task} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def results_table(results: Mapping) -> str:
  """The results of a run (``results.json``) in Markdown: a summary line; the test metrics
  as a ``metrics_table``; with baselines, their table and Delta-m%; the other splits' tables.
  A stopped run (``status: 'stopped'``) has no metrics: the text says so and why."""
  tasks = [str(t) for t in results.get('tasks') or results.get('metrics', {})]
  directions = results.get('higher_is_better') or {}
  name = results.get('config_name', 'run')
  what = ', '.join(str(results[k]) for k in ('model', 'weighting') if results.get(k))
  lines = [f'# {name}' + (f': {what}' if what else ''), '']
  if results.get('status') == 'stopped':
    reason = ' '.join(str(results.get('stop_reason', 'no reason recorded')).split())
    lines += [f"**Stopped** at step {results.get('steps', '?')}: {reason}", '',
              'No test metrics: the run stopped before its evaluation.']
    return '\n'.join(lines) + '\n'
  lines += [f"Tasks: {', '.join(tasks)}. {results.get('steps', '?')} steps, "
            f"{results.get('rejected_steps', '?')} updates rejected "
            f"(status {results.get('status', 'unknown')}).", '']
  if results.get('metrics'):
    lines += ['## Test metrics', '', metrics_table(results['metrics'], directions, tasks), '']
  else:
    lines += ['No test metrics in results.json.', '']
  if results.get('baselines'):
    lines += ['## Single-task baselines (test)', '',
              metrics_table(results['baselines'], directions, tasks), '']
  if isinstance(results.get('delta_m'), (int, float)):
    lines += [f"**Δm% = {results['delta_m']:+.2f}** against the single-task baselines "
              '(lower is better; the loss left out).', '']
  for split, metrics in (results.get('split_metrics') or {}).items():
    if split != 'test' and metrics:
      lines += [f'## {split} metrics', '', metrics_table(metrics, directions, tasks), '']
  return '\n'.join(lines).rstrip('\n') + '\n'


def write_report(workdir: str, *, out_dir: Optional[str] = None,
                 smooth: Optional[float] = None) -> Report:
  """Writes the plots of the run in ``workdir`` and ``results.md`` into ``out_dir``.

  Args:
    workdir: a training run's work directory (``metrics.jsonl``, optionally
      ``results.json``).
    out_dir: where the files go (created if needed); default ``workdir/plots``.
    smooth: the EMA weight of the smoothed curves in ``[0, 1)``; None chooses it.

  Returns:
    ``Report`` ``{name: path}`` of the files written (``losses``, ``weights``, ``conflicts``,
    ``results``); ``notes`` say why a plot was left out (e.g. no gradient diagnostics) and
    whether lines of ``metrics.jsonl`` were skipped.

  Raises:
    ReportError: no such directory, no metrics, an unreadable ``results.json``.
    ImportError: matplotlib is not installed.
  """
  figs, rows, results = _figures(workdir, smooth)
  out_dir = out_dir or os.path.join(workdir, 'plots')
  os.makedirs(out_dir, exist_ok=True)
  paths = Report(notes=figs.notes)
  for name, fig in figs.items():
    paths[name] = os.path.join(out_dir, PLOT_FILES[name])
    fig.savefig(paths[name], dpi=100)
  if results is not None:
    text = results_table(results)
  else:
    text = (f'# {os.path.basename(os.path.abspath(workdir))}\n\nNo results.json: the run has '
            f"not finished (metrics.jsonl reaches step {rows[-1]['step']}).\n")
  text += '\n## Plots\n\n' + ''.join(f'![{n}]({PLOT_FILES[n]})\n\n' for n in figs)
  text += ''.join(f'* no {PLOT_FILES.get(n, n)}: {why}\n' if n in PLOT_FILES else f'* {why}\n'
                  for n, why in figs.notes.items())
  paths['results'] = os.path.join(out_dir, 'results.md')
  with open(paths['results'], 'w') as f:
    f.write(text)
  return paths


class _Parser(argparse.ArgumentParser):
  """argparse with its errors as one ``mtl_jax: ...`` line and exit status 2."""

  def error(self, message):
    from mtl_jax._src import cli  # pylint: disable=import-outside-toplevel
    usage = ' '.join(self.format_usage().split()[1:])      # one line, without 'usage:'
    cli.fail(f'{message}; usage: {usage}', status=2, hint='')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line: ``python -m mtl_jax.report WORKDIR [--out_dir=DIR] [--smooth=W]``.

  Prints the files written, one a line, and why a plot was left out (on stderr).  Exit
  status 0; 2 with a one-line ``mtl_jax: ...`` error for a bad work directory, a bad
  ``results.json`` or a missing matplotlib (``--debug`` shows the traceback instead).
  """
  from mtl_jax._src import cli  # pylint: disable=import-outside-toplevel
  parser = _Parser(prog='python -m mtl_jax.report',
                   description='Plots and a results table of a training run.')
  parser.add_argument('workdir', help="a training run's work directory")
  parser.add_argument('--out_dir', help='where the files go (default WORKDIR/plots)')
  parser.add_argument('--smooth', type=float, help='EMA weight in [0, 1) (default: chosen)')
  parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')            # no display needed; the figures never touch pyplot
  except ImportError:
    pass                             # write_report says how to install it
  try:
    paths = write_report(args.workdir, out_dir=args.out_dir, smooth=args.smooth)
  except (ReportError, ImportError, ValueError) as e:
    if args.debug:
      raise
    cli.fail(str(e), status=2, hint='')
  for path in paths.values():
    print(path)
  for name, why in paths.notes.items():
    print(f'{PLOT_FILES.get(name, name)}: {why}' if name in PLOT_FILES else why,
          file=sys.stderr)
  return 0
