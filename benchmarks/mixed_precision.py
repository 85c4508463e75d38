"""bfloat16 against float32, method by method: how far the losses drift, and what the
bfloat16 per-task gradients save.

    .venv/bin/python benchmarks/mixed_precision.py            # all methods (see README)
    .venv/bin/python benchmarks/mixed_precision.py --quick    # 3 methods, smoke test

For every weighting method: the synthetic experiment (3 tasks, ``keras_mmoe`` preset,
shared-bottom MLP 64-64, towers of 8, Adam 1e-3, batch 128) trained ``--steps`` steps three
times from the same initialisation and data order: float32; ``compute_dtype='bfloat16'``
(model in bfloat16, losses / Gram / solver / state float32); and with
``grad_dtype='bfloat16'`` as well (per-task gradients stored in bfloat16).  Reported per
method: the largest relative difference of the summed task loss from float32's over the
steps, the final losses, and rejected steps.  Then, for ``upgrad`` in mode 'param' (the
per-task Jacobian J of the shared parameters), XLA's temp bytes of the compiled step at
T = 8 and 32 in float32 and with ``grad_dtype='bfloat16'`` (``compiled.memory_analysis()``).
On a CPU bfloat16 is emulated, so no step time is reported: the speed belongs to the GPU
suite (``gpu_suite.py``).  Writes ``results/mixed_precision.json``.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mtl_jax import init_train_state, make_train_step, models, weighting  # pylint: disable=wrong-import-position
from mtl_jax.data import BatchIterator, make_synthetic  # pylint: disable=wrong-import-position

SETTINGS = {'float32': (None, None), 'bf16 compute': ('bfloat16', None),
            'bf16 compute + grads': ('bfloat16', 'bfloat16')}


def _setup(num_tasks: int, hidden: int, batch_size: int, method):
  ds = make_synthetic(num_tasks, 0.5, input_dim=100, sizes=(4096, 8, 8), preset='keras_mmoe')
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(hidden,
                                                                                   hidden)),
                     tower_hidden=(8,))
  batch_size -= batch_size % method.sub_batches
  return ds, model, BatchIterator(ds.split('train'), batch_size, seed=0)


def run_method(name: str, steps: int) -> dict:
  """The summed-loss curves of one method in the three settings."""
  out = {}
  for label, (compute, grads) in SETTINGS.items():
    method = weighting.get(name, **({'steps_per_epoch': 32} if name == 'dwa' else {}))
    ds, model, batches = _setup(3, 64, 128, method)
    optimizer = optax.adam(1e-3)
    first = next(batches)
    state = init_train_state(model, ds.tasks, optimizer, method, first['inputs'],
                             jax.random.PRNGKey(0))
    step = make_train_step(model, ds.tasks, optimizer, method, compute_dtype=compute,
                           grad_dtype=grads)
    curve, batch = [], first
    for _ in range(steps):
      state, metrics = step(state, batch)
      curve.append(float(jnp.sum(metrics['losses'])))
      batch = next(batches)
    out[label] = {'curve': curve, 'rejected': int(state.num_rejected)}
  ref = np.array(out['float32']['curve'])
  for label in SETTINGS:
    curve = np.array(out[label]['curve'])
    out[label]['max_rel_diff'] = float(np.max(np.abs(curve - ref) / np.abs(ref)))
  return out


def jacobian_memory(num_tasks: int) -> dict:
  """XLA temp bytes of upgrad's mode-'param' step, float32 and bfloat16 per-task grads."""
  out = {}
  for label, grads in (('float32', None), ('bf16 grads', 'bfloat16')):
    method = weighting.get('upgrad')
    ds, model, batches = _setup(num_tasks, 256, 128, method)
    batch = next(batches)
    optimizer = optax.sgd(1e-3)
    state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                             jax.random.PRNGKey(0))
    step = make_train_step(model, ds.tasks, optimizer, method, mode='param',
                           compute_dtype='bfloat16' if grads else None, grad_dtype=grads)
    stats = step.lower(state, batch).compile().memory_analysis()
    out[label] = int(stats.temp_size_in_bytes)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'mixed_precision.json'))
  args = parser.parse_args()
  names = ['ew', 'upgrad', 'famo'] if args.quick else weighting.names()
  steps = 5 if args.quick else args.steps
  start, load = time.time(), os.getloadavg()[0]
  results = {name: run_method(name, steps) for name in names}
  memory = {t: jacobian_memory(t) for t in ((8,) if args.quick else (8, 32))}
  print(f'\n{steps} steps; max relative difference of the summed task loss from float32\n')
  print('| method | bf16 compute | bf16 compute + grads | final loss f32 / bf16 | rejected |')
  print('|---|---|---|---|---|')
  for name, r in results.items():
    print(f'| {name} | {r["bf16 compute"]["max_rel_diff"]:.2e} | '
          f'{r["bf16 compute + grads"]["max_rel_diff"]:.2e} | '
          f'{r["float32"]["curve"][-1]:.4f} / {r["bf16 compute"]["curve"][-1]:.4f} | '
          f'{sum(s["rejected"] for s in r.values())} |')
  for t, m in memory.items():
    print(f'upgrad mode=param, T={t}: XLA temp {m["float32"] / 2**20:.2f} MiB float32, '
          f'{m["bf16 grads"] / 2**20:.2f} MiB bf16 grads ({m["bf16 grads"] / m["float32"]:.2f}x)')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out if not args.quick else '/tmp/mixed_precision_quick.json', 'w') as f:
    json.dump({'steps': steps, 'load_before': load, 'time_s': time.time() - start,
               'jax': jax.__version__, 'device': str(jax.devices()[0]),
               'methods': results, 'jacobian_temp_bytes': memory}, f, indent=1)


if __name__ == '__main__':
  main()
