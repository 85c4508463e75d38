"""The MMoE paper's synthetic experiment (Ma et al., KDD 2018, Sec. 3.2): Shared-Bottom vs
OMoE vs MMoE, plus CGC and PLE, at task correlations p in {0.5, 0.9, 1.0}.

    .venv/bin/python benchmarks/mmoe_synthetic.py            # full run
    .venv/bin/python benchmarks/mmoe_synthetic.py --quick    # smoke test

Sizes as in the MMoE paper's synthetic experiment: input d = 100, two regression tasks,
10 000 / 1 000 / 1 000 examples, towers of width 8; MoE models: 8 single-layer experts of
width 16 (CGC/PLE: 2 shared + 3 per task = 8 experts per level); Shared-Bottom: one shared
layer of width 113 (about the same parameter count).  Squared loss, Adam, equal weights.
Each (model, p) trains ``--seeds`` independent runs, each with fresh data (its own task
vectors, inputs and noise) and its own initialisation: the runs are vmapped and the steps
run in one ``lax.scan``, so all seeds train as one compiled program.  The reported number is
each run's test MSE averaged over the two tasks; the table gives its mean and standard
deviation over runs.

Writes ``benchmarks/results/mmoe_synthetic.json``:
``{"<p>": {"<model>": {"mse_mean", "mse_std", "runs", "mse_per_task", "train_mse_mean",
"params"}}}`` and a plot, ``mmoe_synthetic.png``.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models, weighting
from mtl_jax.data import make_synthetic
from mtl_jax import init_train_state, make_train_step

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERT = dict(hidden=(16,))
MODELS = {
    'shared_bottom': dict(hidden=(113,), options={}),
    'omoe': dict(EXPERT, options=dict(num_experts=8)),
    'mmoe': dict(EXPERT, options=dict(num_experts=8)),
    'cgc': dict(EXPERT, options=dict(num_shared_experts=2, num_task_experts=3)),
    'ple': dict(EXPERT, options=dict(num_levels=2, num_shared_experts=2, num_task_experts=3,
                                     expert_hidden=(16,))),
}


def stacked_data(correlation, seeds, args):
  """Per-seed data sets stacked on a leading seed axis: {split: {'inputs', 'labels'}}."""
  sets = [make_synthetic(2, correlation, input_dim=args.input_dim, preset=args.preset,
                         sizes=tuple(args.sizes), seed=1000 * seed + 17) for seed in seeds]
  tasks = sets[0].tasks
  out = {}
  for split in ('train', 'val', 'test'):
    parts = [s.split(split) for s in sets]
    out[split] = {'inputs': np.stack([p['inputs'] for p in parts]),
                  'labels': {n: np.stack([p['labels'][n] for p in parts]) for n in tasks.names}}
  return tasks, out


def run(name, correlation, args):
  """Test and train MSE [seeds, T] of ``name`` at ``correlation``, and its parameter count."""
  spec = MODELS[name]
  seeds = list(range(args.seeds))
  tasks, data = stacked_data(correlation, seeds, args)
  model = models.get(name, tasks, models.get_backbone('mlp', hidden=spec['hidden']),
                     tower_hidden=(8,), **spec['options'])
  optimizer, method = optax.adam(args.lr), weighting.get('ew')
  train = data['train']
  num_train = train['inputs'].shape[1]
  states = [init_train_state(model, tasks, optimizer, method, train['inputs'][s, :8],
                             jax.random.PRNGKey(s)) for s in seeds]
  state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  params = sum(x.size for x in jax.tree_util.tree_leaves(states[0].params))
  step = jax.vmap(make_train_step(model, tasks, optimizer, method, jit=False))

  rng = np.random.default_rng(args.batch_seed)
  epochs = -(-args.steps * args.batch_size // num_train)
  order = np.stack([np.concatenate([rng.permutation(num_train) for _ in range(epochs)])
                    for _ in seeds], 1)                           # [epochs * N, S]
  index = order[:args.steps * args.batch_size].reshape(args.steps, args.batch_size, len(seeds))
  index = jnp.asarray(np.transpose(index, (0, 2, 1)))            # [steps, S, B]
  train_dev = jax.device_put(train)

  def batch_of(idx):                                              # idx [S, B]
    take = jax.vmap(lambda a, i: a[i])
    return {'inputs': take(train_dev['inputs'], idx),
            'labels': {n: take(v, idx) for n, v in train_dev['labels'].items()},
            'masks': {n: jnp.ones(idx.shape, bool) for n in tasks.names}}

  @jax.jit
  def train_all(state, index):
    def body(state, idx):
      state, metrics = step(state, batch_of(idx))
      return state, metrics['losses']
    return jax.lax.scan(body, state, index)

  @jax.jit
  def mse(params, split):
    preds = jax.vmap(lambda p, x: model.apply({'params': p}, x))(params, split['inputs'])
    return jnp.stack([jnp.mean((preds[n] - split['labels'][n]) ** 2, axis=(1, 2))
                      for n in tasks.names], 1)                   # [S, T]

  start = time.time()
  state, losses = train_all(state, index)
  jax.block_until_ready(state)
  seconds = time.time() - start
  test = np.asarray(mse(state.params, jax.device_put(data['test'])))
  train_mse = np.asarray(mse(state.params, train_dev))
  assert int(jnp.sum(state.num_rejected)) == 0
  return test, train_mse, params, seconds


def plot(results, correlations, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  width = 0.8 / len(MODELS)
  for i, name in enumerate(MODELS):
    means = [results[f'{p:g}'][name]['mse_mean'] for p in correlations]
    stds = [results[f'{p:g}'][name]['mse_std'] for p in correlations]
    xs = np.arange(len(correlations)) + (i - (len(MODELS) - 1) / 2) * width
    ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
  ax.set_xticks(np.arange(len(correlations)), [f'p = {p:g}' for p in correlations])
  ax.set_ylabel('test MSE (mean of the 2 tasks)')
  runs = results[f'{correlations[0]:g}'][next(iter(MODELS))]['runs']
  ax.set_title(f'MMoE synthetic data: mean ± std over {runs} runs')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--correlations', default='0.5,0.9,1.0')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--seeds', type=int, default=10, help='independent runs per (model, p)')
  parser.add_argument('--steps', type=int, default=4000)
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--preset', default='keras_mmoe',
                      help="data preset ('google': the paper-default sines)")
  parser.add_argument('--input-dim', type=int, default=100)
  parser.add_argument('--sizes', type=int, nargs=3, default=(10000, 1000, 1000))
  parser.add_argument('--batch-seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true', help='tiny smoke test')
  parser.add_argument('--out', default=os.path.join(HERE, 'results', 'mmoe_synthetic.json'))
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.steps, args.sizes = 2, 50, (512, 64, 64)
  correlations = [float(p) for p in args.correlations.split(',')]
  names = args.models.split(',')
  results = {}
  for p in correlations:
    results[f'{p:g}'] = {}
    for name in names:
      test, train_mse, params, seconds = run(name, p, args)
      per_run = test.mean(1)
      results[f'{p:g}'][name] = {
          'mse_mean': float(per_run.mean()), 'mse_std': float(per_run.std(ddof=1)),
          'runs': len(per_run), 'mse_per_task': test.mean(0).tolist(),
          'mse_runs': per_run.tolist(), 'train_mse_mean': float(train_mse.mean()),
          'params': int(params), 'train_seconds': seconds}
      print(f'p={p:g} {name:14s} test MSE {per_run.mean():.4f} ± {per_run.std(ddof=1):.4f} '
            f'(train {train_mse.mean():.4f}; {params} params; {seconds:.1f}s)', flush=True)
  print(f'\nmean test MSE ± std over {args.seeds} runs ({args.steps} steps, batch '
        f'{args.batch_size}, Adam {args.lr:g}, preset {args.preset})')
  header = f"{'model':14s} {'params':>7s} " + ' '.join(f'{"p=" + format(p, "g"):>17s}'
                                                      for p in correlations)
  print(header)
  for name in names:
    r = [results[f'{p:g}'][name] for p in correlations]
    print(f'{name:14s} {r[0]["params"]:7d} ' + ' '.join(
        f'{x["mse_mean"]:8.4f} ± {x["mse_std"]:.4f}' for x in r))
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({**results, '_config': config, '_models': MODELS}, f, indent=1, default=list)
  if len(names) == len(MODELS):
    plot(results, correlations, args.out.replace('.json', '.png'))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
