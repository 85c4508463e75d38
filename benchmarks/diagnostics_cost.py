"""What the gradient diagnostics cost in the train step (CPU benchmark).

    .venv/bin/python benchmarks/diagnostics_cost.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/diagnostics_cost.py --quick    # tiny smoke test

On step_time.py's shared-bottom MLP (T regression tasks, one device-resident batch), the
jitted, donated train step's time per step (median over interleaved repeats of back-to-back
steps) of:

* ``ew`` without diagnostics (the baseline of every ratio), and with
  ``diagnostics_every`` = 10 and = 1 (one Jacobian of the shared parameters every 10th step,
  or every step);
* ``mgda`` as the trainer runs it (its Gram matrix's norms, cosines and conflict count in the
  metrics), and ``mgda`` with those metrics left out (the step traced with
  ``gradient_diagnostics`` replaced by ``{}``): the price of the free diagnostics.

Writes ``--out`` (JSON) and prints a table; says the load average before and after.
"""

import argparse
import json
import os
import statistics
import sys
import time
from unittest import mock

import numpy as np

from mtl_jax import make_train_step, weighting
from mtl_jax._src import step as step_module   # to trace one variant without diagnostics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import FULL, QUICK, Setup, lower_compile, machine_info, run_steps  # noqa: E402

VARIANTS = ('ew', 'ew, diagnostics every 10', 'ew, diagnostics every 1', 'mgda',
            'mgda without diagnostics')


def build(setup: Setup, variant: str):
  """(compiled step, state, batch) of one variant."""
  name = variant.split(',')[0].split(' ')[0]
  method = weighting.get(name)
  every = int(variant.rsplit(' ', 1)[1]) if 'every' in variant else 0
  step = make_train_step(setup.model, setup.tasks, setup.optimizer, method,
                         diagnostics_every=every)
  state = setup.state(method)
  if variant.endswith('without diagnostics'):
    with mock.patch.object(step_module, 'gradient_diagnostics', lambda gram: {}):
      compiled, _ = lower_compile(step, state, setup.batch)
  else:
    compiled, _ = lower_compile(step, state, setup.batch)
  return [compiled, state, setup.batch]


def measure(num_tasks: int, cfg: dict, repeats: int, steps: int, rng) -> dict:
  setup = Setup(num_tasks, cfg)
  runners = {v: build(setup, v) for v in VARIANTS}
  for r in runners.values():
    _, r[1] = run_steps(r[0], r[1], r[2], 3)       # warm-up
  times = {v: [] for v in VARIANTS}
  order = list(VARIANTS)
  for _ in range(repeats):
    rng.shuffle(order)
    for v in order:
      seconds, runners[v][1] = run_steps(*runners[v], steps)
      times[v].append(1e3 * seconds / steps)
  median = {v: statistics.median(t) for v, t in times.items()}
  return {'median_ms': median, 'all_ms': times,
          'over_ew': {v: median[v] / median['ew'] for v in VARIANTS},
          'mgda_diagnostics_overhead': median['mgda'] / median['mgda without diagnostics']}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default='2,8')
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    'results', 'diagnostics_cost.json'))
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  repeats, steps = (3, 5) if args.quick else (args.repeats, args.steps)
  load_before, start = os.getloadavg(), time.time()
  rng = np.random.default_rng(0)
  results = {f'T={t}': measure(int(t), cfg, repeats, steps, rng) for t in args.tasks.split(',')}
  report = {'config': {**cfg, 'hidden': list(cfg['hidden']),
                       'tower_hidden': list(cfg['tower_hidden']), 'repeats': repeats,
                       'steps_per_repeat': steps, 'quick': args.quick},
            'machine': machine_info(), 'load_before': load_before,
            'load_after': os.getloadavg(), 'wall_s': time.time() - start, 'results': results}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'load average before {load_before[0]:.2f}, after {report["load_after"][0]:.2f}; '
        f'{report["wall_s"]:.0f} s')
  print(f'{"variant":28s}' + ''.join(f'{k:>22s}' for k in results))
  for v in VARIANTS:
    cells = ''.join(f'{r["median_ms"][v]:10.3f} ms ({r["over_ew"][v]:5.2f}x)'
                    for r in results.values())
    print(f'{v:28s}{cells}')
  print('mgda with / without its diagnostics: ' + ', '.join(
      f'{k} {r["mgda_diagnostics_overhead"]:.3f}' for k, r in results.items()))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
