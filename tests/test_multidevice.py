"""The step with the batch sharded over 4 CPU devices equals the 1-device step."""

import json
import textwrap

from tests.conftest import run_python

WORKER = textwrap.dedent('''
    import jax
    jax.config.update('jax_num_cpu_devices', 4)  # before any other JAX call
    import json
    import numpy as np
    import optax
    from mtl_jax import models, parallel, weighting
    from mtl_jax.data import BatchIterator, make_synthetic, take
    from mtl_jax import init_train_state, make_train_step

    assert len(jax.devices()) == 4, jax.devices()
    ds = make_synthetic(3, 0.5, input_dim=12, sizes=(256, 8, 8))
    model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(16,)),
                       tower_hidden=(8,), dropout=0.1)
    method, optimizer = weighting.get('static', weights=[1.0, 0.5, 2.0]), optax.adam(1e-2)
    train = ds.split('train')
    batches = list(BatchIterator(train, 32, seed=0) for _ in range(1))[0]
    batches = [next(batches) for _ in range(4)]
    batches[1]['masks'] = {'y2': np.arange(32) % 3 == 0}  # masked means span devices
    batches[1]['labels']['y2'][np.arange(32) % 3 != 0] = np.nan
    for b in batches:
        b.setdefault('masks', {})
        b['masks'] = {n: b['masks'].get(n, np.ones(32, bool)) for n in ds.tasks.names}

    def run(mesh):
        state = init_train_state(model, ds.tasks, optimizer, method, batches[0]['inputs'],
                                 jax.random.PRNGKey(0))
        if mesh is None:
            step = make_train_step(model, ds.tasks, optimizer, method)
            put = lambda b: jax.device_put(b, jax.devices()[0])
        else:
            state = parallel.replicate(state, mesh)
            step = make_train_step(model, ds.tasks, optimizer, method, mesh=mesh)
            put = lambda b: parallel.shard_batch(b, mesh)
        history = []
        for b in batches:
            b = put(b)
            if mesh is not None:
                assert len(b['inputs'].sharding.device_set) == 4
                assert b['inputs'].addressable_shards[0].data.shape == (8, 12)
            state, metrics = step(state, b)
            history.append(np.asarray(metrics['losses']).tolist())
        if mesh is not None:
            leaf = jax.tree_util.tree_leaves(state.params)[0]
            assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
        return jax.tree.map(np.asarray, state.params), history

    one, losses_one = run(None)
    four, losses_four = run(parallel.make_mesh(4))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one, four))

    # The whole experiment on the 4-device mesh, and a batch size the mesh cannot split.
    import sys, tempfile
    from mtl_jax import train
    from mtl_jax.train import ConfigError
    from tests.conftest import tiny_config
    results = train.train_and_evaluate(tiny_config(), tempfile.mkdtemp())
    try:
        train.train_and_evaluate(tiny_config(**{'eval.batch_size': 30}), tempfile.mkdtemp())
        error = None
    except ConfigError as e:
        error = str(e)
    print(json.dumps({'max_param_diff': max(diffs), 'losses_one': losses_one,
                      'losses_four': losses_four, 'devices': results['devices'],
                      'traces': results['train_step_traces'], 'error': error}))
''')


def test_four_device_step_equals_one_device_step():
  proc = run_python(['-c', WORKER])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['max_param_diff'] <= 1e-5, out
  assert len(out['devices']) == 4 and out['traces'] == 1
  assert out['error'].startswith('config.eval.batch_size: must be divisible by the 4 devices')
  for a, b in zip(out['losses_one'], out['losses_four']):
    for x, y in zip(a, b):
      assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), out
