"""The MMoE paper's synthetic experiment (Ma et al., KDD 2018, Sec. 3.2) through the sweep
runner: Shared-Bottom vs OMoE vs MMoE at task correlations p in {0.5, 0.9, 1.0}, 200 runs per
model and correlation, each run with fresh data and its own initialisation.

    .venv/bin/python benchmarks/mmoe_synthetic.py --workdir=runs/mmoe          # 200 runs
    .venv/bin/python benchmarks/mmoe_synthetic.py --workdir=/tmp/mmoe --quick  # smoke test

Set-up as in the paper: input d = 100, two regression tasks, 10 000 / 1 000 / 1 000 examples
(the ``google`` data preset: c = 1, ten sines alpha_i = i, beta_i = (i - 1)^2, noise std
0.01), towers of width 8; OMoE / MMoE: 8 single-layer experts of width 16; Shared-Bottom one
shared layer of width 113 (about the same parameter count); squared loss, Adam, equal
weights.  ``config.data.reseed``: run s draws its data (task vectors, inputs, noise) with
data seed s, so the models see the same 200 data sets (differences are paired by run).

Every (p, model) is one unit of ``run_sweep(..., variants=...)`` (workdir/p<p>/<model>/), its
200 seeds one vmapped program.  The training loss of every run is kept every
``--curve-every`` steps (``config.train.metrics_every``) and the held-out loss (the ``val``
split, drawn like the test split) every ``--curve-every`` steps (``config.eval.every``).

Reported (the paper plots loss against training steps over its 200 runs): per (p, model) the
mean over runs and the 10th-90th percentile band of both curves; three per-run measures (each
the mean over the two tasks): the final training MSE on the whole training split, the best
held-out MSE along the curve (early stopping) and the final test MSE, as mean ± std; for each
measure the paired per-run differences MMoE - OMoE, OMoE - Shared-Bottom and MMoE -
Shared-Bottom with 95% intervals (1.96 standard errors), and whether the Shared-Bottom - MMoE
gap grows from p = 1 to p = 0.5.  Writes
``benchmarks/results/mmoe_synthetic.json`` and ``mmoe_synthetic.png``.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mtl_jax import train  # pylint: disable=wrong-import-position
from mtl_jax.configs import default  # pylint: disable=wrong-import-position

RESULTS = os.path.join(REPO, 'benchmarks', 'results')
MODELS = {
    'shared_bottom': {'model.name': 'shared_bottom', 'model.mlp.hidden': (113,)},
    'omoe': {'model.name': 'omoe', 'model.mlp.hidden': (16,), 'model.omoe.num_experts': 8},
    'mmoe': {'model.name': 'mmoe', 'model.mlp.hidden': (16,), 'model.mmoe.num_experts': 8},
}
TASKS = ('y1', 'y2')


def config_for(p: float, args):
  c = default.get_config()
  c.name = f'mmoe_synthetic_p{p}'
  c.data.synthetic.preset = args.preset
  c.data.synthetic.correlation = p
  c.data.synthetic.sizes = tuple(args.sizes)
  c.data.reseed = True
  c.model.tower_hidden = (8,)
  c.weighting.name = 'ew'
  c.optim.lr = args.lr
  c.train.steps = args.steps
  c.train.batch_size = args.batch_size
  c.train.log_every = args.curve_every * 10
  c.train.metrics_every = args.curve_every
  c.train.checkpoint_every = args.steps
  c.eval.every = args.curve_every
  c.eval.splits = ('train', 'test')
  c.eval.batch_size = 1000
  return c


def read_curves(unit_dir: str, seeds) -> dict:
  """``{'steps', 'train', 'heldout_steps', 'heldout'}``: per run [S, points] the mean over
  the tasks of the training-batch loss and of the held-out (val) MSE."""
  train_rows, held_rows = [], []
  for s in seeds:
    with open(os.path.join(unit_dir, f'seed_{s}', 'metrics.jsonl')) as f:
      lines = [json.loads(line) for line in f]
    train_rows.append([(l['step'], np.mean([l[f'loss/{t}'] for t in TASKS])) for l in lines])
    held_rows.append([(l['step'], np.mean([l[f'val/{t}/mse'] for t in TASKS]))
                      for l in lines if f'val/{TASKS[0]}/mse' in l])
  return {'steps': [s for s, _ in train_rows[0]],
          'train': np.array([[v for _, v in r] for r in train_rows]),
          'heldout_steps': [s for s, _ in held_rows[0]],
          'heldout': np.array([[v for _, v in r] for r in held_rows])}


def band(values: np.ndarray) -> dict:
  """Mean and 10th / 50th / 90th percentiles over runs (axis 0)."""
  return {'mean': values.mean(0).tolist(), 'p10': np.percentile(values, 10, 0).tolist(),
          'median': np.median(values, 0).tolist(), 'p90': np.percentile(values, 90, 0).tolist()}


def paired(a: np.ndarray, b: np.ndarray) -> list:
  """Mean of a - b over runs and its 95% interval (1.96 standard errors)."""
  d = a - b
  half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float('nan')
  return [float(d.mean()), float(d.mean() - half), float(d.mean() + half)]


MEASURES = {'train_mse': 'final training MSE (whole training split)',
            'heldout_min': 'best held-out MSE over training (val split, early stopping)',
            'test_mse': 'final test MSE'}


def summarize_p(record: dict, workdir: str) -> dict:
  """The curves and the per-run measures (``MEASURES``, each the mean over the two tasks) of
  every model at one correlation."""
  seeds = record['seeds']
  out = {}
  for m in record['methods']:
    splits = []
    for s in seeds:
      with open(os.path.join(workdir, m, f'seed_{s}', 'results.json')) as f:
        splits.append(json.load(f)['split_metrics'])
    curves = read_curves(os.path.join(workdir, m), seeds)
    runs = {'train_mse': [np.mean([r['train'][t]['mse'] for t in TASKS]) for r in splits],
            'heldout_min': curves['heldout'].min(1),
            'test_mse': [np.mean([r['test'][t]['mse'] for t in TASKS]) for r in splits]}
    out[m] = {'steps': curves['steps'], 'train_curve': band(curves['train']),
              'heldout_steps': curves['heldout_steps'],
              'heldout_curve': band(curves['heldout'])}
    for k, v in runs.items():
      v = np.asarray(v, dtype=float)
      out[m].update({k: v.tolist(), f'{k}_mean': float(v.mean()),
                     f'{k}_std': float(v.std(ddof=1)),
                     f'{k}_pct': np.percentile(v, [10, 50, 90]).tolist()})
  return out


PAIRS = {'mmoe - omoe': ('mmoe', 'omoe'), 'omoe - shared_bottom': ('omoe', 'shared_bottom'),
         'mmoe - shared_bottom': ('mmoe', 'shared_bottom')}


def comparisons(results: dict) -> dict:
  """Per measure: the paired per-run differences at each p (the runs of one seed share their
  data), and how the Shared-Bottom - MMoE gap changes from the highest p to the lowest
  (unpaired across p: a 95% interval from both standard errors)."""
  ps = sorted(results, key=float)
  out = {}
  for measure in MEASURES:
    out[measure] = {p: {k: paired(np.array(results[p][a][measure]),
                                  np.array(results[p][b][measure]))
                        for k, (a, b) in PAIRS.items() if a in results[p] and b in results[p]}
                    for p in ps}
    if len(ps) > 1 and all(m in results[p] for p in ps for m in ('mmoe', 'shared_bottom')):
      gap = {}
      for p in (ps[0], ps[-1]):
        d = (np.array(results[p]['shared_bottom'][measure])
             - np.array(results[p]['mmoe'][measure]))
        gap[p] = (d.mean(), d.std(ddof=1) / np.sqrt(len(d)))
      diff, half = gap[ps[0]][0] - gap[ps[-1]][0], 1.96 * np.hypot(gap[ps[0]][1], gap[ps[-1]][1])
      out[measure]['gap_growth'] = {'from_p': ps[-1], 'to_p': ps[0], 'sb_minus_mmoe_growth': [
          float(diff), float(diff - half), float(diff + half)]}
  return out


def plot(results: dict, path: str) -> None:
  """Rows: training loss, held-out loss (mean over runs, 10-90th percentile band), final test
  MSE per run (box); columns: the correlations."""
  import matplotlib.figure  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  ps = sorted(results, key=float)
  fig = matplotlib.figure.Figure(figsize=(4.2 * len(ps), 9.5))
  axes = fig.subplots(3, len(ps), squeeze=False)
  colours = {'shared_bottom': 'tab:blue', 'omoe': 'tab:orange', 'mmoe': 'tab:green'}
  for col, p in enumerate(ps):
    for row, (curve, steps, label) in enumerate((
        ('train_curve', 'steps', 'training loss (batch MSE, mean of tasks)'),
        ('heldout_curve', 'heldout_steps', 'held-out MSE (val split, mean of tasks)'))):
      ax = axes[row, col]
      for m, r in results[p].items():
        x = r[steps]
        ax.plot(x, r[curve]['mean'], color=colours.get(m), label=m, lw=1.4)
        ax.fill_between(x, r[curve]['p10'], r[curve]['p90'], color=colours.get(m), alpha=0.15)
      ax.set_yscale('log')
      ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
      ax.tick_params(axis='y', which='both', labelsize=7)
      ax.set_title(f'p = {p}', fontsize=10)
      ax.set_xlabel('step')
      ax.set_ylabel(label, fontsize=8)
      ax.legend(fontsize=7)
    ax = axes[2, col]
    names = list(results[p])
    ax.boxplot([results[p][m]['test_mse'] for m in names], showfliers=True, whis=(5, 95))
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_ylabel('final test MSE per run (box: quartiles, whiskers: 5-95%)', fontsize=7)
  n = len(next(iter(results[ps[0]].values()))['test_mse'])
  fig.suptitle(f'MMoE synthetic experiment: {n} runs per model and p (mean, 10-90% band)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def table(results: dict, comp: dict) -> str:
  ps = sorted(results, key=float)
  models = list(results[ps[0]])
  lines = []
  for measure, title in MEASURES.items():
    lines += [f'{title}, mean ± std over runs:', '',
              '| model | ' + ' | '.join(f'p = {p}' for p in ps) + ' |', '|---|' + '---|' * len(ps)]
    for m in models:
      lines.append(f'| {m} | ' + ' | '.join(
          f'{results[p][m][measure + "_mean"]:.4f} ± {results[p][m][measure + "_std"]:.4f}'
          for p in ps) + ' |')
    lines += ['', '| paired difference per run (95% interval) | '
              + ' | '.join(f'p = {p}' for p in ps) + ' |', '|---|' + '---|' * len(ps)]
    for k in comp[measure][ps[0]]:
      lines.append(f'| {k} | ' + ' | '.join(
          f'{comp[measure][p][k][0]:+.4f} [{comp[measure][p][k][1]:+.4f}, '
          f'{comp[measure][p][k][2]:+.4f}]' for p in ps) + ' |')
    if 'gap_growth' in comp[measure]:
      g = comp[measure]['gap_growth']
      lo, mid, hi = g['sb_minus_mmoe_growth'][1], *g['sb_minus_mmoe_growth'][:1], \
          g['sb_minus_mmoe_growth'][2]
      lines += ['', f'Shared-Bottom - MMoE gap at p = {g["to_p"]} minus at p = {g["from_p"]}: '
                f'{mid:+.4f} [{lo:+.4f}, {hi:+.4f}]']
    lines.append('')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', type=int, default=200)
  parser.add_argument('--correlations', type=float, nargs='+', default=(0.5, 0.9, 1.0))
  parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--preset', default='google')
  parser.add_argument('--sizes', type=int, nargs=3, default=(10000, 1000, 1000))
  parser.add_argument('--curve-every', type=int, default=50)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(RESULTS, 'mmoe_synthetic.json'))
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.steps, args.sizes, args.curve_every = 3, 40, (512, 128, 128), 10
    args.out = os.path.join(args.workdir, 'mmoe_synthetic.json')
  results, timing = {}, {}
  for p in args.correlations:
    unit_dir = os.path.join(args.workdir, f'p{p}')
    record = train.run_sweep(config_for(p, args), [], args.seeds, unit_dir, baselines=False,
                             variants={m: MODELS[m] for m in args.models})
    results[str(p)] = summarize_p(record, unit_dir)
    timing[str(p)] = {m: record['units'][m]['time_s'] for m in record['methods']}
  comp = comparisons(results)
  text = table(results, comp)
  print(f'\n{args.seeds} runs per (model, p), {args.steps} steps, batch {args.batch_size}, '
        f'Adam {args.lr}, preset {args.preset}; mean ± std over runs\n\n{text}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'config': vars(args), 'results': results, 'comparisons': comp,
               'unit_time_s': timing}, f)
  plot(results, args.out.replace('.json', '.png'))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
