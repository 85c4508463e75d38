"""Every registered architecture, generically: the parameter split, the representation
split, training through the trainer, per-task inputs and the backbone options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import data, models, tasks as T, train
from mtl_jax.train import ConfigError
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


SPLIT_MODELS = [n for n in SHARED_INPUT_MODELS
                if hasattr(models.get(n, TASKS, models.get_backbone('mlp')), 'representation')]


def _poisoned(variables, subtree):
  """``variables`` with every leaf of ``params[subtree]`` replaced by NaN."""
  params = dict(variables['params'])
  params[subtree] = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), params[subtree])
  return {**variables, 'params': params}


def _assert_trees_close(actual, expected, name):
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    assert np.all(np.isfinite(np.asarray(a))), name
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=name)


def _split_checks(model, variables, x):
  """What the split computes, under one jit: z and the heads' predictions, each also with the
  other half's parameters poisoned; the shared-parameter gradient of sum_t w_t sum(y_t), by the
  chain rule through z and directly through the model; the model's predictions."""
  weights = jnp.arange(1.0, len(TASKS) + 1.0)

  def objective(preds):
    return sum(w * jnp.sum(preds[n]) for w, n in zip(weights, TASKS.names))

  def with_shared(shared):
    return {**variables, 'params': dict(variables['params'], shared=shared)}

  def representation(shared):
    return model.apply(with_shared(shared), x, method='representation')

  def heads(z):
    return model.apply(variables, z, inputs=x, method='heads')

  shared = variables['params']['shared']
  z, pullback = jax.vjp(representation, shared)
  (chain,) = pullback(jax.grad(lambda z: objective(heads(z)))(z))
  return {
      'z': z,
      'z_task_poisoned': model.apply(_poisoned(variables, 'task'), x, method='representation'),
      'heads': heads(z),
      'heads_shared_poisoned': model.apply(_poisoned(variables, 'shared'), z, inputs=x,
                                           method='heads'),
      'chain': chain,
      'direct': jax.grad(lambda s: objective(model.apply(with_shared(s), x)))(shared),
      'preds': model.apply(variables, x)}


@pytest.mark.parametrize('name', SPLIT_MODELS)
def test_representation_reads_only_shared_params_and_heads_only_task_params(name):
  # The contract the engine relies on, checked without going through ``__call__``: z is a
  # function of params['shared'] (and x) alone, the heads a function of params['task'] (and z,
  # x) alone: poisoning the other subtree with NaN leaves each half's output unchanged.
  model, batch = _model(name), _batch()
  variables = _init(model, batch)
  out = jax.jit(lambda v, x: _split_checks(model, v, x))(variables, batch['inputs'])
  _assert_trees_close(out['z_task_poisoned'], out['z'], name)
  _assert_trees_close(out['heads_shared_poisoned'], out['heads'], name)
  # Hence the model's gradient w.r.t. the shared parameters is the chain rule through z,
  # d(sum_t w_t y_t)/d(theta_s) = (dz/d theta_s)^T d(sum_t w_t y_t)/dz (the factors from
  # separate vjps of the two halves), and it is not zero.
  assert any(np.any(np.asarray(a) != 0) for a in jax.tree_util.tree_leaves(out['direct']))
  _assert_trees_close(out['chain'], out['direct'], name)
  # And the halves compose to the model.
  _assert_trees_close(out['heads'], out['preds'], name)


@pytest.mark.parametrize('name', SPLIT_MODELS)
def test_stacked_heads_send_copy_t_of_z_to_task_t_only(name):
  model, batch = _model(name), _batch()
  variables = _init(model, batch)
  x = batch['inputs']
  preds = model.apply(variables, x)
  z = model.apply(variables, x, method='representation')
  z_copies = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(TASKS),) + a.shape), z)
  stacked = model.apply(variables, z_copies, stacked=True, inputs=x, method='heads')
  for task in TASKS.names:
    np.testing.assert_allclose(stacked[task], preds[task], rtol=1e-5, atol=1e-6)
  # Copy t of z reaches task t, and task t only.
  def task_sums(z_copies):
    out = model.apply(variables, z_copies, stacked=True, inputs=x, method='heads')
    return jnp.stack([jnp.sum(out[n]) for n in TASKS.names])
  jac = jax.jacrev(task_sums)(z_copies)               # [T_out, T_copy, ...]
  for leaf in jax.tree_util.tree_leaves(jac):
    per_pair = np.abs(np.asarray(leaf)).reshape(len(TASKS), len(TASKS), -1).max(-1)
    assert np.all(per_pair[~np.eye(len(TASKS), dtype=bool)] == 0), name
    assert np.all(np.diag(per_pair) > 0), name


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
  ds = data.make_synthetic(3, 0.5, input_dim=5, sizes=(20, 4, 4), per_task_inputs=True,
                      domain_shift=2.0, preset='keras_mmoe')
  x = ds.split('train')['inputs']
  assert x.shape == (20, 3, 5) and ds.per_task_inputs
  # The domain shift moves each task's input mean along its own direction, by 2.
  means = data.make_synthetic(3, 0.5, input_dim=5, sizes=(4000, 4, 4), per_task_inputs=True,
                         domain_shift=2.0, preset='keras_mmoe').split('train')['inputs'].mean(0)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0, atol=0.1)
  with pytest.raises(ValueError, match='domain_shift needs per_task_inputs'):
    data.make_synthetic(2, 0.5, sizes=(4, 4, 4), domain_shift=1.0)
  results = train.train_and_evaluate(
      tiny_config(**{'data.synthetic.per_task_inputs': True, 'train.steps': 6,
                     'model.name': 'independent'}),
      str(tmp_path))
  assert all(np.isfinite(m['mse']) for m in results['metrics'].values())
  # Every registered model takes one input per task (adversarial needs it); their behaviour
  # with it is tested in test_per_task_inputs.py.
  for name in models.names():
    _model(name, per_task=True)          # no "does not support one input per task" error


def test_unknown_model_option_names_the_field(tmp_path):
  with pytest.raises(ConfigError, match=r'config.model.shared_bottom.experts: unknown config key'):
    from mtl_jax._src import config_validation  # the validation alone, on purpose
    config = tiny_config()
    config.unlock()
    config.model.shared_bottom.experts = 3
    config_validation.validate(config)


def test_vmapped_independent_equals_separate_networks():
  model, batch = _model('independent'), _batch()
  variables = _init(model, batch)
  preds = model.apply(variables, batch['inputs'])
  task = variables['params']['task']
  for t, name in enumerate(TASKS.names):
    column = jax.tree.map(lambda a: a[t], task['backbone'])
    z = models.MLP((6, 5)).apply({'params': column}, batch['inputs'])
    group = [g for g in TASKS.groups if name in g.names][0]
    g_index = TASKS.groups.index(group)
    tower = jax.tree.map(lambda a: a[group.names.index(name)],
                         task['heads'][f'group{g_index}']['towers'])
    expected = models.Tower((4,), group.prototype.out_dim).apply({'params': tower}, z)
    np.testing.assert_allclose(preds[name], expected, rtol=1e-5, atol=1e-6)
