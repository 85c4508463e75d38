"""Every registered architecture, generically: the parameter split, the representation
split, training through the trainer, per-task inputs and the backbone options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, tasks as T, train
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.data.synthetic import make_synthetic
from tests.conftest import run_python, tiny_config

TASKS = T.TaskSet([T.regression('a'), T.multiclass('b', 3), T.binary('c')])
NEEDS_PER_TASK_INPUTS = {'adversarial'}
SHARED_INPUT_MODELS = [n for n in models.names() if n not in NEEDS_PER_TASK_INPUTS]


def _batch(num=6, dim=8, per_task=False, seed=0):
  rng = np.random.default_rng(seed)
  shape = (num, len(TASKS), dim) if per_task else (num, dim)
  return {'inputs': rng.standard_normal(shape).astype(np.float32),
          'labels': {'a': rng.standard_normal((num, 1)).astype(np.float32),
                     'b': rng.integers(0, 3, (num,)).astype(np.int32),
                     'c': rng.integers(0, 2, (num, 1)).astype(np.float32)},
          'masks': {n: np.ones((num,), np.float32) for n in TASKS.names}}


def _model(name, per_task=False):
  return models.get(name, TASKS, models.get_backbone('mlp', hidden=(6, 5)), tower_hidden=(4,),
                    **({'per_task_inputs': True} if per_task else {}))


def _init(model, batch):
  variables = jax.jit(model.init, static_argnames='train')(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, batch['inputs'])
  return variables


def _per_task_losses(model, variables, batch):
  def losses(task_params):
    params = dict(variables['params'], task=task_params)
    preds = model.apply({**variables, 'params': params}, batch['inputs'])
    return TASKS.losses(preds, batch)
  return losses


@pytest.mark.parametrize('name', SHARED_INPUT_MODELS)
def test_params_split_and_task_params_get_only_their_own_task_gradient(name):
  model, batch = _model(name), _batch()
  variables = _init(model, batch)
  assert set(variables['params']) <= {'shared', 'task'} and 'task' in variables['params']
  preds = model.apply(variables, batch['inputs'])
  assert {k: v.shape for k, v in preds.items()} == {'a': (6, 1), 'b': (6, 3), 'c': (6, 1)}
  jac = jax.jit(jax.jacrev(_per_task_losses(model, variables, batch)))(
      variables['params']['task'])                  # leaves [T, *leaf.shape]
  for path, leaf in jax.tree_util.tree_leaves_with_path(jac):
    tasks_touching = (np.abs(np.asarray(leaf)).reshape(len(TASKS), -1) > 0).sum(0)
    assert tasks_touching.max() <= 1, (name, jax.tree_util.keystr(path))


@pytest.mark.parametrize('name', [n for n in SHARED_INPUT_MODELS
                                  if hasattr(models.get(n, TASKS, models.get_backbone('mlp')),
                                             'representation')])
def test_representation_split_reproduces_the_model(name):
  model, batch = _model(name), _batch()
  variables = _init(model, batch)
  x = batch['inputs']
  preds = model.apply(variables, x)
  z = model.apply(variables, x, method='representation')
  split = model.apply(variables, z, inputs=x, method='heads')
  z_copies = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(TASKS),) + a.shape), z)
  stacked = model.apply(variables, z_copies, stacked=True, inputs=x, method='heads')
  for task in TASKS.names:
    np.testing.assert_allclose(split[task], preds[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked[task], preds[task], rtol=1e-5, atol=1e-6)
  # Copy t of z reaches task t only.
  def task_sums(z_copies):
    out = model.apply(variables, z_copies, stacked=True, inputs=x, method='heads')
    return jnp.stack([jnp.sum(out[n]) for n in TASKS.names])
  jac = jax.jacrev(task_sums)(z_copies)               # [T_out, T_copy, ...]
  for leaf in jax.tree_util.tree_leaves(jac):
    per_pair = np.abs(np.asarray(leaf)).reshape(len(TASKS), len(TASKS), -1).max(-1)
    assert np.all(per_pair[~np.eye(len(TASKS), dtype=bool)] == 0), name


@pytest.mark.parametrize('name', SHARED_INPUT_MODELS)
def test_every_model_trains_with_a_gradient_method(name, tmp_path):
  # MGDA takes the engine's Jacobian path (the stacked-heads path where the model has a
  # representation split); the model families' own tests also train with loss weighting.
  config = tiny_config(**{'model.name': name, 'weighting.name': 'mgda', 'train.steps': 4,
                          'train.log_every': 2, 'train.checkpoint_every': 4})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['rejected_steps'] == 0 and results['train_step_traces'] == 1
  assert all(np.isfinite(m['mse']) for m in results['metrics'].values())
  assert results['num_params']['task'] > 0


def test_cli_trains_a_zoo_model(tmp_path):
  proc = run_python(['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py',
                     '--config.model.name=mmoe', '--config.model.mmoe.num_experts=3',
                     '--config.train.steps=5', f'--workdir={tmp_path}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'test metrics after 5 steps' in proc.stdout


@pytest.mark.parametrize('name', ['shared_bottom', 'independent'])
def test_per_task_inputs_feed_task_t_from_input_t(name):
  model, batch = _model(name, per_task=True), _batch(per_task=True)
  variables = _init(model, batch)
  x = jnp.asarray(batch['inputs'])
  def preds_of(x):
    out = model.apply(variables, x)
    return jnp.stack([jnp.sum(out[n]) for n in TASKS.names])
  jac = np.asarray(jax.jacrev(preds_of)(x))           # [T_out, B, T_in, D]
  touched = np.abs(jac).max(axis=(1, 3)) > 0          # [T_out, T_in]
  np.testing.assert_array_equal(touched, np.eye(len(TASKS), dtype=bool))
  if hasattr(model, 'representation'):
    z = model.apply(variables, x, method='representation')
    z_copies = jnp.broadcast_to(z, (len(TASKS),) + z.shape)
    stacked = model.apply(variables, z_copies, stacked=True, method='heads')
    for task in TASKS.names:
      np.testing.assert_allclose(stacked[task], model.apply(variables, x)[task], rtol=1e-5)


def test_per_task_synthetic_data_and_training(tmp_path):
  ds = make_synthetic(3, 0.5, input_dim=5, sizes=(20, 4, 4), per_task_inputs=True,
                      domain_shift=2.0, preset='keras_mmoe')
  x = ds.split('train')['inputs']
  assert x.shape == (20, 3, 5) and ds.per_task_inputs
  # The domain shift moves each task's input mean along its own direction, by 2.
  means = make_synthetic(3, 0.5, input_dim=5, sizes=(4000, 4, 4), per_task_inputs=True,
                         domain_shift=2.0, preset='keras_mmoe').split('train')['inputs'].mean(0)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0, atol=0.1)
  with pytest.raises(ValueError, match='domain_shift needs per_task_inputs'):
    make_synthetic(2, 0.5, sizes=(4, 4, 4), domain_shift=1.0)
  results = train.train_and_evaluate(
      tiny_config(**{'data.per_task_inputs': True, 'train.steps': 6, 'model.name': 'independent'}),
      str(tmp_path))
  assert all(np.isfinite(m['mse']) for m in results['metrics'].values())
  # Every registered model takes one input per task (adversarial needs it); their behaviour
  # with it is tested in test_per_task_inputs.py.
  for name in models.names():
    _model(name, per_task=True)          # no "does not support one input per task" error


def test_unknown_model_option_names_the_field(tmp_path):
  with pytest.raises(ConfigError, match=r'config.model.shared_bottom.experts: unknown config key'):
    from mtl_jax._src import config_validation
    config = tiny_config()
    config.unlock()
    config.model.shared_bottom.experts = 3
    config_validation.validate(config)


def test_vmapped_independent_equals_separate_networks():
  from mtl_jax._src.models.heads import Tower
  from mtl_jax._src.models.mlp import MLP
  model, batch = _model('independent'), _batch()
  variables = _init(model, batch)
  preds = model.apply(variables, batch['inputs'])
  task = variables['params']['task']
  for t, name in enumerate(TASKS.names):
    column = jax.tree.map(lambda a: a[t], task['backbone'])
    z = MLP((6, 5)).apply({'params': column}, batch['inputs'])
    group = [g for g in TASKS.groups if name in g.names][0]
    g_index = TASKS.groups.index(group)
    tower = jax.tree.map(lambda a: a[group.names.index(name)],
                         task['heads'][f'group{g_index}']['towers'])
    expected = Tower((4,), group.prototype.out_dim).apply({'params': tower}, z)
    np.testing.assert_allclose(preds[name], expected, rtol=1e-5, atol=1e-6)
