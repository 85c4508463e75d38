"""The mission's three architecture comparisons, on the same data with the same budget and
several seeds, against single-task baselines trained by the same code.

    .venv/bin/python benchmarks/seed_comparisons.py           # full run
    .venv/bin/python benchmarks/seed_comparisons.py --quick   # smoke test

1. weighted-sum MTL (shared-bottom, equal weights) vs gated MTL (``gated_fusion``);
2. a shared encoder vs per-task encoders with attention and a domain discriminator
   (``adversarial``, ``fusion='attention'``: shared + private encoders, each task's head
   reading its attention over its shared and private features, a task discriminator behind
   gradient reversal, the orthogonality penalty), on data with one input per task whose
   input distributions differ by task (``domain_shift``);
3. independent networks vs networks with residual links between them (``residual``).

Every run goes through ``train.train_and_evaluate`` (the CLI's code path) on the synthetic
data (``keras_mmoe`` preset).  The single-task baseline of task t is a shared-bottom network
trained on task t alone (``data.tasks=(t,)``), same backbone, steps and seed.  Reported:
test MSE/MAE per task (mean ± std over seeds), Delta-m% against the baselines
(Maninis et al., CVPR 2019: mean over all metrics of the signed relative change,
lower is better), parameter counts and the jitted step time (median over interleaved
repeats, same process, same batch).

Writes ``benchmarks/results/seed_comparisons.json`` and ``seed_comparisons.png``.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from mtl_jax import train
from mtl_jax.configs import default
from mtl_jax.data import take, with_all_masks
from mtl_jax import init_train_state, make_train_step

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARISONS = {
    'weighted_vs_gated': {'data': {}, 'models': {
        'weighted_sum': {'model.name': 'shared_bottom'},
        'gated': {'model.name': 'gated_fusion'}}},
    'shared_vs_private_adversarial': {'data': {'data.synthetic.per_task_inputs': True,
                                               'data.synthetic.domain_shift': 1.0}, 'models': {
        'shared_encoder': {'model.name': 'shared_bottom'},
        'private_attention_adversarial': {'model.name': 'adversarial',
                                          'model.adversarial.fusion': 'attention'}}},
    'independent_vs_residual': {'data': {}, 'models': {
        'independent': {'model.name': 'independent'},
        'residual': {'model.name': 'residual'}}},
}


def base_config(args, seed, overrides):
  c = default.get_config()
  c.name = 'seed_comparisons'
  c.seed = seed
  c.data.synthetic.num_tasks = args.tasks
  c.data.synthetic.correlation = args.correlation
  c.data.synthetic.preset = 'keras_mmoe'
  c.data.synthetic.input_dim = args.input_dim
  c.data.synthetic.sizes = tuple(args.sizes)
  c.data.seed = seed
  c.model.mlp.hidden = tuple(args.hidden)
  c.model.tower_hidden = (8,)
  c.train.steps = args.steps
  c.train.batch_size = args.batch_size
  c.train.log_every = args.steps
  c.train.checkpoint_every = args.steps
  c.eval.splits = ('test',)
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split('.')
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def train_run(config):
  with tempfile.TemporaryDirectory() as workdir:
    return train.train_and_evaluate(config, workdir)


def delta_m(metrics, baselines):
  """Delta-m% = 100 / K sum_k (M_k - B_k) / B_k over every (task, metric); lower better."""
  terms = [(metrics[t][m] - baselines[t][m]) / baselines[t][m]
           for t in baselines for m in ('mse', 'mae')]
  return 100 * float(np.mean(terms))


def step_ms(configs, repeats, steps):
  """Median ms per jitted step of each config's model, interleaved (same process)."""
  runners = {}
  for name, config in configs.items():
    dataset = train.build_dataset(config)
    model = train.build_model(config, dataset.tasks, dataset.per_task_inputs)
    optimizer, _ = train.build_optimizer(config)
    method = train.build_weighting(config, dataset.tasks, 1)
    batch = jax.device_put(with_all_masks(take(dataset.split('train'),
                                               np.arange(config.train.batch_size))))
    state = init_train_state(model, dataset.tasks, optimizer, method, batch['inputs'],
                             jax.random.PRNGKey(0))
    step = make_train_step(model, dataset.tasks, optimizer, method)
    for _ in range(3):
      state, out = step(state, batch)
    jax.block_until_ready(state)
    runners[name] = [step, state, batch]
  times = {name: [] for name in runners}
  rng = np.random.default_rng(0)
  for _ in range(repeats):
    for name in rng.permutation(list(runners)):
      step, state, batch = runners[name]
      start = time.perf_counter()
      for _ in range(steps):
        state, out = step(state, batch)
      jax.block_until_ready((state, out))
      runners[name][1] = state
      times[name].append(1e3 * (time.perf_counter() - start) / steps)
  return {name: statistics.median(t) for name, t in times.items()}


def summarize(runs):
  """{task: {metric: [mean, std]}} over seeds."""
  tasks = runs[0]['metrics']
  return {t: {m: [float(np.mean([r['metrics'][t][m] for r in runs])),
                  float(np.std([r['metrics'][t][m] for r in runs], ddof=1))
                  if len(runs) > 1 else 0.0]
              for m in ('mse', 'mae')} for t in tasks}


def plot(results, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6))
  for ax, (comparison, res) in zip(np.atleast_1d(axes), results.items()):
    names = list(res['models'])
    means = [res['models'][n]['delta_m_mean'] for n in names]
    stds = [res['models'][n]['delta_m_std'] for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color=['tab:blue', 'tab:orange'])
    ax.axhline(0, color='k', lw=0.8)
    ax.set_title(comparison.replace('_', ' '), fontsize=9)
    ax.set_ylabel('Δm% vs single-task (lower is better)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--tasks', type=int, default=2)
  parser.add_argument('--correlation', type=float, default=0.5)
  parser.add_argument('--input-dim', type=int, default=100)
  parser.add_argument('--hidden', type=int, nargs='+', default=(64,))
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--sizes', type=int, nargs=3, default=(10000, 1000, 1000))
  parser.add_argument('--time-repeats', type=int, default=7)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(HERE, 'results', 'seed_comparisons.json'))
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.steps, args.sizes, args.time_repeats = 2, 20, (256, 64, 64), 2
  seeds = list(range(args.seeds))
  task_names = [f'y{t + 1}' for t in range(args.tasks)]

  baselines = {}                         # data setting -> seed -> {task: metrics}
  for comparison, spec in COMPARISONS.items():
    key = json.dumps(spec['data'], sort_keys=True)
    if key in baselines:
      continue
    baselines[key] = {}
    for seed in seeds:
      baselines[key][seed] = {}
      for task in task_names:
        r = train_run(base_config(args, seed, {**spec['data'], 'data.tasks': (task,)}))
        baselines[key][seed][task] = r['metrics'][task]
      print(f'single-task baselines {spec["data"] or "(shared input)"} seed {seed}: '
            + ', '.join(f'{t} mse {m["mse"]:.4f}' for t, m in baselines[key][seed].items()),
            flush=True)

  results = {}
  for comparison, spec in COMPARISONS.items():
    key = json.dumps(spec['data'], sort_keys=True)
    base_runs = [{'metrics': baselines[key][s]} for s in seeds]
    results[comparison] = {'data': spec['data'], 'single_task': summarize(base_runs),
                           'models': {}}
    configs = {}
    for name, overrides in spec['models'].items():
      runs = []
      for seed in seeds:
        config = base_config(args, seed, {**spec['data'], **overrides})
        r = train_run(config)
        r['delta_m'] = delta_m(r['metrics'], baselines[key][seed])
        runs.append(r)
        configs[name] = config
      deltas = [r['delta_m'] for r in runs]
      results[comparison]['models'][name] = {
          'overrides': overrides, 'metrics': summarize(runs),
          'delta_m_mean': float(np.mean(deltas)),
          'delta_m_std': float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0,
          'delta_m_runs': deltas, 'num_params': runs[0]['num_params'],
          'rejected_steps': sum(r['rejected_steps'] for r in runs)}
      print(f'{comparison}: {name:20s} Δm% {np.mean(deltas):+7.2f} ± '
            f'{results[comparison]["models"][name]["delta_m_std"]:.2f}', flush=True)
    for name, ms in step_ms(configs, args.time_repeats, 10 if not args.quick else 3).items():
      results[comparison]['models'][name]['step_ms'] = ms
    for name in spec['models']:
      model = results[comparison]['models'][name]
      model['step_ratio'] = model['step_ms'] / results[comparison]['models'][
          next(iter(spec['models']))]['step_ms']

  print(f'\n{args.seeds} seeds, {args.steps} steps, batch {args.batch_size}, T = {args.tasks}, '
        f'p = {args.correlation}; test MSE per task (mean ± std); Δm% vs single-task')
  for comparison, res in results.items():
    print(f'\n{comparison}')
    cols = ''.join(f'{t + " mse":>18s}' for t in task_names)
    print(f'{"model":20s}{cols}{"Δm%":>16s}{"params":>9s}{"step ms":>9s}{"x":>6s}')
    rows = [('single-task', res['single_task'], None)] + [
        (n, m['metrics'], m) for n, m in res['models'].items()]
    for name, metrics, m in rows:
      cells = ''.join(f'{metrics[t]["mse"][0]:9.4f} ± {metrics[t]["mse"][1]:.4f}'
                      for t in task_names)
      extra = (f'{m["delta_m_mean"]:+8.2f} ± {m["delta_m_std"]:5.2f}'
               f'{sum(m["num_params"].values()):9d}{m["step_ms"]:9.2f}{m["step_ratio"]:6.2f}'
               if m else '')
      print(f'{name:20s}{cells}{extra}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'config': {k: list(v) if isinstance(v, tuple) else v
                          for k, v in vars(args).items()}, 'results': results}, f, indent=1)
  plot(results, args.out.replace('.json', '.png'))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
