"""Models: stacked vmapped heads equal the same heads applied one by one; params split."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import models, tasks as T
from mtl_jax._src.models.heads import StackedTowers, Tower


def test_stacked_towers_equal_towers_applied_one_by_one():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  stacked = StackedTowers(num=4, hidden=(7, 3), out_dim=2)
  variables = jax.jit(stacked.init)(jax.random.PRNGKey(1), x)
  out = jax.jit(stacked.apply)(variables, x)
  assert out.shape == (4, 6, 2)
  towers = variables['params']['towers']
  for t in range(4):
    params_t = jax.tree.map(lambda leaf: leaf[t], towers)
    single = jax.jit(Tower(hidden=(7, 3), out_dim=2).apply)({'params': params_t}, x)
    np.testing.assert_allclose(out[t], single, rtol=1e-6, atol=1e-6)
  # Each tower gets its own initialisation.
  kernels = towers['out']['kernel']
  assert not np.allclose(kernels[0], kernels[1])


def test_per_task_inputs_are_mapped():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 5))
  stacked = StackedTowers(num=3, hidden=(4,), out_dim=1, per_task_inputs=True)
  variables = jax.jit(stacked.init)(jax.random.PRNGKey(1), x)
  out = jax.jit(stacked.apply)(variables, x)
  for t in range(3):
    params_t = jax.tree.map(lambda leaf: leaf[t], variables['params']['towers'])
    np.testing.assert_allclose(out[t], jax.jit(Tower((4,), 1).apply)({'params': params_t}, x[t]),
                               rtol=1e-6, atol=1e-6)


def test_shared_bottom_splits_params_and_returns_dict_by_task():
  tasks = T.TaskSet([T.regression('a'), T.multiclass('b', 4), T.regression('c'),
                     T.binary('d')])
  model = models.get('shared_bottom', tasks, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=(5,))
  x = jnp.ones((3, 10))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  assert set(variables['params']) == {'shared', 'task'}
  preds = jax.jit(model.apply)(variables, x)
  assert {k: v.shape for k, v in preds.items()} == {
      'a': (3, 1), 'b': (3, 4), 'c': (3, 1), 'd': (3, 1)}
  # 'a' and 'c' are regressions of the same size: one stacked group of two heads.
  leaves = jax.tree_util.tree_leaves(variables['params']['task']['group0'])
  assert all(leaf.shape[0] == 2 for leaf in leaves)
  # The shared representation changes every task's prediction; a head changes only its own.
  z = model.apply(variables, x, method=model.representation)
  np.testing.assert_allclose(model.apply(variables, z, method=model.heads)['b'], preds['b'])


def test_head_params_affect_only_their_task():
  tasks = T.TaskSet([T.regression('a'), T.regression('b')])
  model = models.get('shared_bottom', tasks, models.get_backbone('mlp', hidden=(8,)))
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  def pred_b(task_params):
    params = dict(variables['params'], task=task_params)
    return model.apply({'params': params}, x)['b'].sum()

  grads = jax.jit(jax.grad(pred_b))(variables['params']['task'])
  out_kernel = grads['group0']['towers']['out']['kernel']
  assert np.all(out_kernel[0] == 0) and np.any(out_kernel[1] != 0)


def test_unknown_model_and_backbone_names():
  import pytest
  with pytest.raises(ValueError, match="unknown model 'mmoee'"):
    models.get('mmoee', T.TaskSet([T.binary('a')]), nn.Dense(3))
  with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
    models.get_backbone('resnet')
