"""Equality of every mesh layout with one device, in float32 and bfloat16, on 8 CPU devices.

    .venv/bin/python benchmarks/layouts.py       # ~2 min on 2 cores

For each dtype (float32; ``compute_dtype='bfloat16'``; bfloat16 with ``grad_dtype='bfloat16'``),
method (``ew``, the Gram method ``upgrad``, the Jacobian method ``pcgrad``) and layout (the
1-D data mesh of 8; 2-D meshes 'fsdp' 4x2, 'tasks' 2x4, 'fsdp+tasks' 2x4): 5 Adam steps of a
shared-bottom MLP with 4 tasks (batch 32), and the largest absolute difference of the
params and of the per-task losses from the same dtype's 1-device run.  XLA partitions the
same program, so only the order of float sums differs; in bfloat16 those differences pass
through bfloat16 products.  Writes ``results/layouts.json`` and prints a table.
"""

import os
import sys

import jax

jax.config.update('jax_num_cpu_devices', 8)   # before any other JAX call

import json  # pylint: disable=wrong-import-position,wrong-import-order
import time  # pylint: disable=wrong-import-position,wrong-import-order

import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mtl_jax import init_train_state, make_train_step, models, parallel, weighting  # pylint: disable=wrong-import-position
from mtl_jax.data import BatchIterator, make_synthetic  # pylint: disable=wrong-import-position

LAYOUTS = {'data (8)': None, 'fsdp (4x2)': ('fsdp', (4, 2)), 'tasks (2x4)': ('tasks', (2, 4)),
           'fsdp+tasks (2x4)': ('fsdp+tasks', (2, 4))}
DTYPES = {'float32': (None, None), 'bfloat16': ('bfloat16', None),
          'bfloat16 + grads': ('bfloat16', 'bfloat16')}
STEPS = 5


def run(problem, method, dtypes, layout):
  """(params, losses [STEPS, T]) after STEPS steps on ``layout`` (False: one device)."""
  ds, model, batches = problem
  optimizer = optax.adam(1e-2)
  state = init_train_state(model, ds.tasks, optimizer, method, batches[0]['inputs'],
                           jax.random.PRNGKey(0))
  kwargs, put = dict(compute_dtype=dtypes[0], grad_dtype=dtypes[1]), lambda b: b
  if layout is not False:
    shard, shape = layout if layout else ('none', None)
    mesh = parallel.make_mesh(shape=shape) if shape else parallel.make_mesh()
    if shape:
      sharding = parallel.state_sharding(state, mesh, shard, task_sizes=(4,))
      state, kwargs['sharding'] = jax.device_put(state, sharding.state), sharding
    else:
      state, kwargs['mesh'] = parallel.replicate(state, mesh), mesh
    put = lambda b: parallel.shard_batch(b, mesh)
  step = make_train_step(model, ds.tasks, optimizer, method, **kwargs)
  losses = []
  for b in batches:
    state, metrics = step(state, put(b))
    losses.append(np.asarray(metrics['losses']))
  return jax.tree.map(np.asarray, state.params), np.stack(losses)


def main():
  start, load = time.time(), os.getloadavg()[0]
  ds = make_synthetic(4, 0.5, input_dim=12, sizes=(512, 8, 8))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(32,)),
                     tower_hidden=(8,))
  iterator = BatchIterator(ds.split('train'), 32, seed=0)
  problem = (ds, model, [next(iterator) for _ in range(STEPS)])
  rows = []
  for dtype, dtypes in DTYPES.items():
    for name in ('ew', 'upgrad', 'pcgrad'):
      ref_params, ref_losses = run(problem, weighting.get(name), dtypes, False)
      for label, layout in LAYOUTS.items():
        params, losses = run(problem, weighting.get(name), dtypes, layout)
        diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                                ref_params, params)))
        rows.append({'dtype': dtype, 'method': name, 'layout': label, 'param_diff': diff,
                     'loss_diff': float(np.max(np.abs(ref_losses - losses)))})
        print(f'| {dtype} | {name} | {label} | {diff:.1e} | {rows[-1]["loss_diff"]:.1e} |',
              flush=True)
  out = os.path.join(REPO, 'benchmarks', 'results', 'layouts.json')
  with open(out, 'w') as f:
    json.dump({'steps': STEPS, 'load_before': load, 'time_s': time.time() - start,
               'jax': jax.__version__, 'rows': rows}, f, indent=1)
  print(f'wrote {out} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
  main()
