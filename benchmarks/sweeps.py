"""The sweep runner's benchmark tables: QM9 (the CPU sweep preset) and MultiMNIST, methods x 3
seeds with single-task baselines, Delta-m% and mean rank, and the seed-vmap speed-up.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/sweeps.py qm9 --workdir=runs/sweep_qm9
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/sweeps.py multimnist --workdir=runs/sweep_mm

Each runs ``mtl_jax.train.run_sweep`` (resumable: run it again to continue), prints the
Markdown table, and writes ``benchmarks/results/sweep_<name>.json`` (the sweep record),
``sweep_<name>.md`` and ``sweep_<name>.png`` (Delta-m% per method, mean ± std).
"""

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mtl_jax import train  # pylint: disable=wrong-import-position
from mtl_jax.configs import multimnist, qm9  # pylint: disable=wrong-import-position

METHODS = ('ew', 'uw', 'mgda', 'pcgrad', 'cagrad', 'nash_mtl', 'famo', 'fairgrad')
RESULTS = os.path.join(REPO, 'benchmarks', 'results')


def config_for(name: str, data_dir: str):
  """The sweep's config: QM9's 'sweep' preset, or MultiMNIST at 300 steps (5.5 epochs) without
  the in-training validation and diagnostics (the test metrics are what the table reads)."""
  if name == 'qm9':
    c = qm9.get_config('sweep')
    if data_dir:
      c.data.qm9.data_dir = data_dir
  else:
    c = multimnist.get_config()
    c.train.steps = 300
    c.train.diagnostics_every = 0
    c.eval.every = 0
    c.eval.delta_m_metrics = ('accuracy',)
  c.eval.baselines = False
  c.train.checkpoint_every = c.train.steps // 2
  return c


def plot(record: dict, path: str) -> None:
  """Delta-m% per method: the mean over seeds a bar, the standard deviation its error bar."""
  import matplotlib.figure  # pylint: disable=import-outside-toplevel
  methods = [m for m in record['methods'] if record['summary'].get(m, {}).get('delta_m')]
  fig = matplotlib.figure.Figure(figsize=(1.1 * len(methods) + 2, 3.6))
  ax = fig.subplots()
  for k, m in enumerate(methods):
    mean, std = record['summary'][m]['delta_m']
    ax.bar(k, mean, color='#9ecae1', yerr=std, capsize=3)
  ax.set_xticks(range(len(methods)), methods, rotation=30)
  ax.axhline(0, color='k', lw=0.8)
  ax.set_ylabel('Δm% vs single-task (lower is better)')
  ax.set_title(f'{record["config"]["name"]}: {len(record["seeds"])} seeds, mean ± std')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('name', choices=('qm9', 'multimnist'))
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--data_dir', default='', help='the QM9 cache directory')
  args = parser.parse_args(argv)
  config = config_for(args.name, args.data_dir)
  record = train.run_sweep(config, args.methods.split(','), args.seeds, args.workdir,
                           sequential_check='ew')
  table = train.sweep_markdown(record)
  print(table)
  os.makedirs(RESULTS, exist_ok=True)
  base = os.path.join(RESULTS, f'sweep_{args.name}')
  shutil.copy(os.path.join(args.workdir, 'sweep.json'), base + '.json')
  with open(base + '.md', 'w') as f:
    f.write(table)
  plot(record, base + '.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
