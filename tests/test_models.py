"""Models: stacked vmapped heads equal the same heads applied one by one; shared-bottom by hand;
the registry functions (names, options, errors, registering a new model)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, tasks as T
from mtl_jax._src import registry

StackedTowers, Tower = models.StackedTowers, models.Tower


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


def _relu(a):
  return np.maximum(a, 0.0)


def test_shared_bottom_matches_a_numpy_forward_pass_and_splits_trunk_from_towers():
  tasks = T.TaskSet([T.regression('a'), T.multiclass('b', 4), T.regression('c'),
                     T.binary('d')])
  model = models.get('shared_bottom', tasks, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=(5,))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 10)))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  params = jax.tree.map(np.asarray, variables['params'])
  assert set(params) == {models.SHARED, models.TASK}
  # The trunk (one Dense 10 -> 8) is all of 'shared'; the towers are all of 'task', one
  # stacked module per group of same-kind tasks ('a' and 'c' are regressions of size 1: one
  # group of two towers, parameters with a leading axis of 2).
  trunk = params['shared']['Dense_0']
  assert jax.tree.map(np.shape, params['shared']) == {
      'Dense_0': {'kernel': (10, 8), 'bias': (8,)}}
  assert [g.names for g in tasks.groups] == [('a', 'c'), ('b',), ('d',)]
  assert set(params['task']) == {'group0', 'group1', 'group2'}
  # By hand: z = relu(x W + b); y_t = relu(z U_t + c_t) V_t + d_t.
  z = _relu(x @ trunk['kernel'] + trunk['bias'])
  expected = {}
  for g, group in enumerate(tasks.groups):
    towers = params['task'][f'group{g}']['towers']
    assert jax.tree.map(lambda a: a.shape[0], towers) == {
        'mlp': {'Dense_0': {'kernel': len(group.names), 'bias': len(group.names)}},
        'out': {'kernel': len(group.names), 'bias': len(group.names)}}
    for j, name in enumerate(group.names):
      hidden, out = towers['mlp']['Dense_0'], towers['out']
      h = _relu(z @ hidden['kernel'][j] + hidden['bias'][j])
      expected[name] = h @ out['kernel'][j] + out['bias'][j]
  preds = jax.jit(model.apply)(variables, x)
  assert list(preds) == list(tasks.names)
  assert {k: v.shape for k, v in preds.items()} == {
      'a': (3, 1), 'b': (3, 4), 'c': (3, 1), 'd': (3, 1)}
  for name in tasks.names:
    np.testing.assert_allclose(preds[name], expected[name], rtol=1e-5, atol=1e-6)
  # The split computes the same two halves: z from 'shared', the towers from 'task'.
  np.testing.assert_allclose(model.apply(variables, x, method='representation'), z,
                             rtol=1e-5, atol=1e-6)
  split = model.apply(variables, jnp.asarray(z), method='heads')
  np.testing.assert_allclose(split['b'], expected['b'], rtol=1e-5, atol=1e-6)


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
  with pytest.raises(ValueError, match="unknown model 'mmoee'"):
    models.get('mmoee', T.TaskSet([T.binary('a')]), nn.Dense(3))
  with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
    models.get_backbone('vgg')


def test_unknown_options_name_the_field():
  tasks = T.TaskSet([T.binary('a')])
  with pytest.raises(ValueError, match=r"mmoe.experts: unknown option of model 'mmoe'"):
    models.get('mmoe', tasks, models.get_backbone('mlp'), experts=3)
  with pytest.raises(ValueError, match=r"mlp.width: unknown option of backbone 'mlp'"):
    models.get_backbone('mlp', width=3)
  with pytest.raises(ValueError, match=r'mlp.hidden: must be positive integer widths'):
    models.get_backbone('mlp', hidden=(0,))
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    models.hyperparameters('nope')
  with pytest.raises(ValueError, match="unknown backbone 'nope'"):
    models.backbone_hyperparameters('nope')


def test_every_registered_builder_has_the_model_signature():
  context = ['tasks', 'backbone', 'tower_hidden', 'dropout', 'per_task_inputs']
  for name in models.names():
    parameters = registry.MODELS.parameters(name)
    assert list(parameters)[:5] == context, name
    assert registry.MODELS.builder(name).__name__ == name        # registered where defined
    assert models.hyperparameters(name) == {k: v for k, v in parameters.items()
                                            if k not in context}, name
  for name in models.backbone_names():
    assert registry.BACKBONES.builder(name).__name__ == name
    assert 'dropout' in registry.BACKBONES.parameters(name), name


class _Linear(nn.Module):
  tasks: T.TaskSet
  scale: float

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return {n: self.scale * nn.Dense(t.out_dim, name=n)(x)
            for n, t in zip(self.tasks.names, self.tasks)}


def test_register_adds_a_model_with_its_options():
  name = 'test_models_linear'

  @models.register(name)
  def build(tasks, backbone, tower_hidden=(), dropout=0.0, scale=2.0):
    del backbone, tower_hidden, dropout
    return _Linear(tasks, scale)

  try:
    assert name in models.names() and models.hyperparameters(name) == {'scale': 2.0}
    tasks = T.TaskSet([T.regression('a'), T.binary('b')])
    model = models.get(name, tasks, models.get_backbone('mlp'), per_task_inputs=False,
                       scale=3.0)
    assert model.scale == 3.0
    with pytest.raises(ValueError, match=f'{name}.per_task_inputs: .* does not support'):
      models.get(name, tasks, models.get_backbone('mlp'), per_task_inputs=True)
    with pytest.raises(ValueError, match='registered twice'):
      models.register(name)(lambda tasks, backbone: None)
  finally:
    del registry.MODELS._builders[name]  # pylint: disable=protected-access
  assert name not in models.names()


def test_public_api_exports_the_model_classes_and_the_registry():
  assert all(hasattr(models, name) for name in models.__all__)
  assert {'SharedBottom', 'Independent', 'MMoE', 'PLE', 'DSelectK', 'ColumnModel', 'MTAN',
          'TaskAttention', 'GatedFusion', 'AdversarialSharedPrivate', 'MLP', 'SmallCNN', 'LeNet',
          'TransformerEncoder', 'TaskHeads', 'Stacked', 'Hook', 'run_hook', 'resolve_stages',
          'register', 'register_backbone', 'get', 'names'} <= set(models.__all__)
  tasks = T.TaskSet([T.regression('a'), T.regression('b')])
  for name, cls in [('shared_bottom', models.SharedBottom), ('omoe', models.SharedBottom),
                    ('mmoe', models.MMoE), ('cgc', models.PLE), ('ple', models.PLE),
                    ('residual', models.ColumnModel), ('task_attention', models.TaskAttention)]:
    assert isinstance(models.get(name, tasks, models.get_backbone('mlp')), cls), name
