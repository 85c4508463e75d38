"""The mission's three architecture comparisons through the sweep runner, with enough seeds
(vmapped) that each ordering is either established or shown not to hold.

    .venv/bin/python benchmarks/seed_comparisons.py --workdir=runs/seedcmp            # full
    .venv/bin/python benchmarks/seed_comparisons.py --workdir=/tmp/seedcmp --quick    # smoke

1. weighted-sum MTL (shared-bottom, equal weights) vs gated MTL (``gated_fusion``);
2. a shared encoder vs per-task encoders with attention and a task discriminator
   (``adversarial``, ``fusion='attention'``: shared + private encoders, each task's head
   reading its attention over its shared and private features, a task discriminator behind
   gradient reversal, the orthogonality penalty), on data with one input per task whose
   input distributions differ by task (``domain_shift``);
3. independent networks vs networks with residual links between them (``residual``).

Settings: the synthetic data (``keras_mmoe`` preset, two tasks) at two correlations, and
MultiMNIST.  Each setting is one ``run_sweep(..., variants=...)`` with the single-task
baselines (shared-bottom on one task, same backbone, steps and seeds); comparison 2 needs one
input per task, so it is its own sweep on the synthetic data with ``per_task_inputs`` (its
own baselines), and it does not run on MultiMNIST, whose two tasks read one image.

For every comparison the table gives each model's Delta-m% (mean ± std over seeds, against
the baselines' mean) and the paired per-seed difference B - A of Delta-m% with its 95%
interval (1.96 standard errors; the seeds pair the two models' data order): the ordering is
*established* when the interval excludes 0, else it does not hold at this number of seeds.
``--more-seeds N`` reruns a synthetic sweep whose ordering ``--seeds`` left undecided with N
seeds (a further setting in the table; deciding after a look at the first seeds makes the
intervals a little optimistic).  Writes ``benchmarks/results/seed_comparisons.json`` and
``seed_comparisons.png``.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mtl_jax import train  # pylint: disable=wrong-import-position
from mtl_jax import metrics  # pylint: disable=wrong-import-position
from mtl_jax.configs import default, multimnist  # pylint: disable=wrong-import-position

RESULTS = os.path.join(REPO, 'benchmarks', 'results')
COMPARISONS = {       # name: (sweep, variant A, variant B); B - A < 0: B is better
    'weighted_vs_gated': ('shared', 'weighted_sum', 'gated'),
    'shared_vs_private_adversarial': ('per_task', 'shared_encoder',
                                      'private_attention_adversarial'),
    'independent_vs_residual': ('shared', 'independent', 'residual'),
}
VARIANTS = {
    'shared': {'weighted_sum': {'model.name': 'shared_bottom'},
               'gated': {'model.name': 'gated_fusion'},
               'independent': {'model.name': 'independent'},
               'residual': {'model.name': 'residual'}},
    'per_task': {'shared_encoder': {'model.name': 'shared_bottom'},
                 'private_attention_adversarial': {'model.name': 'adversarial',
                                                   'model.adversarial.fusion': 'attention'}},
}


def synthetic_config(p: float, per_task: bool, args):
  c = default.get_config()
  c.name = f'seedcmp-synthetic-p{p}' + ('-per_task' if per_task else '')
  c.data.synthetic.preset = 'keras_mmoe'
  c.data.synthetic.correlation = p
  c.data.synthetic.sizes = tuple(args.sizes)
  if per_task:
    c.data.synthetic.per_task_inputs = True
    c.data.synthetic.domain_shift = 1.0
  c.model.mlp.hidden = (64,)
  c.model.tower_hidden = (8,)
  c.train.steps = args.steps
  c.train.batch_size = 128
  return c


def multimnist_config(args):
  c = multimnist.get_config()
  c.name = 'seedcmp-multimnist'
  c.train.steps = args.mnist_steps
  c.train.diagnostics_every = 0
  c.eval.every = 0
  c.eval.baselines = False
  c.eval.delta_m_metrics = ('accuracy',)
  return c


def _quiet(c, steps):
  c.train.log_every = steps
  c.train.metrics_every = steps
  c.train.checkpoint_every = steps
  c.eval.splits = ('test',)
  return c


def settings(args) -> dict:
  """``{setting: {sweep: config}}``: the synthetic data at each correlation, and MultiMNIST."""
  out = {}
  for p in args.correlations:
    out[f'synthetic p={p}'] = {
        'shared': _quiet(synthetic_config(p, False, args), args.steps),
        'per_task': _quiet(synthetic_config(p, True, args), args.steps)}
  if args.mnist_steps:
    out['multimnist'] = {'shared': _quiet(multimnist_config(args), args.mnist_steps)}
  return out


def per_seed_delta(record: dict, name: str) -> np.ndarray:
  """Delta-m% of every seed of ``name`` against the baselines' mean over seeds (as the sweep's
  summary), in seed order."""
  base = {t: {k: v[0] for k, v in ms.items()}
          for t, ms in record['summary']['baseline']['metrics'].items()}
  unit = record['units'][name]
  only = tuple(record['config']['eval'].get('delta_m_metrics') or ())
  return np.array([metrics.delta_m(unit['seeds'][str(s)], base, unit['higher_is_better'],
                                   only=only) for s in record['seeds']])


def compare(records: dict) -> dict:
  """Every comparison that ran: both models' Delta-m% and the paired difference B - A."""
  out = {}
  for comparison, (sweep, a, b) in COMPARISONS.items():
    if sweep not in records:
      continue
    da, db = per_seed_delta(records[sweep], a), per_seed_delta(records[sweep], b)
    d = db - da
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    verdict = ('established: ' + (f'{b} better' if d.mean() + half < 0 else f'{a} better')
               if abs(d.mean()) > half else 'not established (the interval contains 0)')
    out[comparison] = {
        'a': a, 'b': b, 'delta_m_a': [float(da.mean()), float(da.std(ddof=1))],
        'delta_m_b': [float(db.mean()), float(db.std(ddof=1))],
        'b_minus_a': [float(d.mean()), float(d.mean() - half), float(d.mean() + half)],
        'verdict': verdict, 'runs_a': da.tolist(), 'runs_b': db.tolist()}
  return out


def table(results: dict) -> str:
  lines = ['| setting | comparison | A: Δm% | B: Δm% | B − A (95% interval) | ordering |',
           '|---|---|---|---|---|---|']
  for setting, res in results.items():
    for comparison, r in res['comparisons'].items():
      lines.append(
          f'| {setting} | {r["a"]} vs {r["b"]} | {r["delta_m_a"][0]:+.2f} ± '
          f'{r["delta_m_a"][1]:.2f} | {r["delta_m_b"][0]:+.2f} ± {r["delta_m_b"][1]:.2f} | '
          f'{r["b_minus_a"][0]:+.2f} [{r["b_minus_a"][1]:+.2f}, {r["b_minus_a"][2]:+.2f}] | '
          f'{r["verdict"]} |')
  return '\n'.join(lines)


def plot(results: dict, path: str) -> None:
  """One panel per setting: each comparison's paired difference B - A with its interval."""
  import matplotlib.figure  # pylint: disable=import-outside-toplevel
  fig = matplotlib.figure.Figure(figsize=(4.3 * len(results), 3.4))
  axes = np.atleast_1d(fig.subplots(1, len(results)))
  for ax, (setting, res) in zip(axes, results.items()):
    names = list(res['comparisons'])
    for k, n in enumerate(names):
      mean, lo, hi = res['comparisons'][n]['b_minus_a']
      ax.errorbar(k, mean, yerr=[[mean - lo], [hi - mean]], fmt='o', capsize=4)
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xticks(range(len(names)), [n.replace('_vs_', '\nvs ') for n in names], fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_title(setting, fontsize=9)
    ax.set_ylabel('Δm%(B) − Δm%(A), 95% interval', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def run_setting(setting: str, sweeps: dict, num_seeds: int, args) -> dict:
  """Runs (or resumes) the sweeps of one setting with ``num_seeds`` seeds; its comparisons."""
  records = {}
  for sweep, config in sweeps.items():
    name = sweep if num_seeds == args.seeds else f'{sweep}_seeds{num_seeds}'
    workdir = os.path.join(args.workdir, setting.replace(' ', '_').replace('=', ''), name)
    records[sweep] = train.run_sweep(config, [], num_seeds, workdir, vmap=bool(args.vmap),
                                     variants=VARIANTS[sweep])
  return {'seeds': num_seeds, 'comparisons': compare(records),
          'tables': {k: train.sweep_markdown(r) for k, r in records.items()},
          'unit_time_s': {k: {n: u['time_s'] for n, u in r['units'].items()}
                          for k, r in records.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', type=int, default=10)
  parser.add_argument('--correlations', type=float, nargs='*', default=(0.5, 0.9),
                      help='synthetic settings (none: MultiMNIST only)')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--mnist-steps', type=int, default=300, help='0: no MultiMNIST')
  parser.add_argument('--sizes', type=int, nargs=3, default=(10000, 1000, 1000))
  parser.add_argument('--vmap', type=int, default=1, help='0: run the seeds one by one')
  parser.add_argument('--more-seeds', type=int, default=0,
                      help='rerun the synthetic sweeps whose ordering --seeds left undecided '
                           'with this many seeds (0: no)')
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(RESULTS, 'seed_comparisons.json'))
  parser.add_argument('--merge', action='store_true',
                      help='keep the settings of an existing --out that this run does not redo')
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.steps, args.mnist_steps, args.sizes = 3, 20, 4, (256, 64, 64)
    args.out = os.path.join(args.workdir, 'seed_comparisons.json')
  results = {}
  for setting, sweeps in settings(args).items():
    results[setting] = run_setting(setting, sweeps, args.seeds, args)
    undecided = sorted({COMPARISONS[c][0] for c, r in results[setting]['comparisons'].items()
                        if r['verdict'].startswith('not')})
    if args.more_seeds and setting.startswith('synthetic') and undecided:
      results[f'{setting}, {args.more_seeds} seeds'] = run_setting(
          setting, {k: sweeps[k] for k in undecided}, args.more_seeds, args)
  record = {'config': vars(args)}
  if args.merge and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    results = {**old['results'], **results}
    record['earlier_runs'] = old.get('earlier_runs', []) + [old['config']]
  text = table(results)
  print(f'\n{args.seeds} seeds; synthetic {args.steps} steps, MultiMNIST {args.mnist_steps} '
        f'steps; Δm% vs single-task (lower is better), mean ± std over seeds\n\n{text}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({**record, 'results': results}, f, indent=1)
  plot(results, args.out.replace('.json', '.png'))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
