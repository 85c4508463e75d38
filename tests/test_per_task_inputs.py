"""One input per task (inputs [B, T, D], task t's at [:, t]) for every model family that has it:
equal inputs give the shared-input model's predictions with the same parameters, y_t depends on
x_t only, the representation split still reproduces the model, and MGDA trains through it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import TrainState, make_train_step, models, tasks as T, weighting

TASKS = T.TaskSet([T.regression('a'), T.multiclass('b', 3), T.binary('c')])
NUM, B, D = len(TASKS), 4, 6
# case -> (model, options); the new per-task-input models (shared_bottom, independent and
# adversarial are covered by test_model_zoo and test_adversarial).
CASES = {
    'omoe': ('omoe', {'num_experts': 3}),
    'mmoe': ('mmoe', {'num_experts': 3}),
    'dselect_k': ('dselect_k', {'num_experts': 3}),    # not a power of 2: both regularisers
    'cgc': ('cgc', {'num_task_experts': 2}),
    'ple': ('ple', {'expert_hidden': (5,)}),
    'ple3': ('ple', {'num_levels': 3, 'num_shared_experts': 2, 'expert_hidden': (5,)}),
    'cross_stitch': ('cross_stitch', {}),
    'residual': ('residual', {}),
    'mtan': ('mtan', {}),
    'task_attention': ('task_attention', {'subspace_dim': 4, 'num_heads': 2}),
    'gated_fusion': ('gated_fusion', {}),
}
# The train step: every model ('ple3' trains through the path of 'ple', with one more leaf in
# z: one compilation saved).
TRAINED = [c for c in CASES if c != 'ple3']


def _model(case, per_task):
  name, options = CASES[case]
  return models.get(name, TASKS, models.get_backbone('mlp', hidden=(8,)), tower_hidden=(),
                    per_task_inputs=per_task, **options)


def _inputs(per_task, seed=0):
  shape = (B, NUM, D) if per_task else (B, D)
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _variables(model, x, seed=0):
  """Variables of the model's structure filled with N(0, 0.5^2): non-zero mixing weights
  (residual links start at 0 otherwise), and nothing compiled."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


def _labels(seed=1):
  rng = np.random.default_rng(seed)
  return {'labels': {'a': rng.standard_normal((B, 1)).astype(np.float32),
                     'b': rng.integers(0, 3, (B,)).astype(np.int32),
                     'c': rng.integers(0, 2, (B, 1)).astype(np.float32)},
          'masks': {n: np.ones((B,), np.float32) for n in TASKS.names}}


def _has_split(model):
  return hasattr(model, 'representation') and hasattr(model, 'heads')


def _jacobian(fn, arg):
  """(d sum(y_t) / d arg for every task t: leaves [T, *leaf.shape], the predictions y)."""
  sums = lambda preds: jnp.stack([jnp.sum(preds[n]) for n in TASKS.names])
  return jax.jacrev(lambda a: (lambda preds: (sums(preds), preds))(fn(a)), has_aux=True)(arg)


@functools.lru_cache(maxsize=None)
def _results(case):
  """Everything the tests check for one case, from ONE jitted function (one compilation)."""
  shared_model, model = _model(case, False), _model(case, True)
  x, x_tasks = _inputs(False), _inputs(True, seed=3)
  variables = _variables(shared_model, x)
  # The parameter trees are the same: nothing in the parameters depends on the input layout.
  per_task_shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x_tasks)
  assert (jax.tree.map(lambda a: a.shape, per_task_shapes)
          == jax.tree.map(lambda a: a.shape, variables)), case
  state_vars = dict(variables)
  params, method, optimizer = state_vars.pop('params'), weighting.get('mgda'), optax.sgd(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=state_vars,
                     opt_state=optimizer.init(params), weighting_state=method.init(NUM),
                     rng=jax.random.PRNGKey(0), num_rejected=jnp.zeros((), jnp.int32))
  batch = {'inputs': x_tasks, **_labels()}
  split = _has_split(model)
  # mode='rep' (the per-task gradients of z, through the stacked heads) where the model has the
  # representation split, the generic Jacobian of the shared parameters otherwise.
  train_step = make_train_step(model, TASKS, optimizer, method, jit=False,
                               mode='rep' if split else 'param')

  def run(variables, x, x_tasks, state, batch):
    out = {'shared': shared_model.apply(variables, x),
           'equal': model.apply(variables, jnp.broadcast_to(x[:, None], (B, NUM, D)))}
    out['jac'], out['preds'] = _jacobian(lambda xt: model.apply(variables, xt), x_tasks)
    if case == 'dselect_k':                      # its regularisers too (training mode)
      sown = lambda m, inputs: m.apply(variables, inputs, train=True, mutable=['aux_loss'])[1]
      out['aux'] = (sown(model, jnp.broadcast_to(x[:, None], (B, NUM, D))),
                    sown(shared_model, x))
    if split:
      z = model.apply(variables, x_tasks, method='representation')
      copies = jax.tree.map(lambda a: jnp.broadcast_to(a, (NUM,) + a.shape), z)
      heads = lambda z, inputs=x_tasks, stacked=False: model.apply(
          variables, z, stacked=stacked, inputs=inputs, method='heads')
      out['split'] = heads(z)
      out['stacked_jac'], out['stacked'] = _jacobian(lambda c: heads(c, stacked=True), copies)
      out['moved'] = heads(z, inputs=x_tasks.at[:, 1].add(1.0))     # input 1 changed
    if case in TRAINED:
      out['expected_losses'] = TASKS.losses(out['preds'], batch)
      new_state, out['metrics'] = train_step(state, batch)
      out['moved_params'] = jax.tree.map(lambda a, b: jnp.any(a != b), new_state.params,
                                         state.params)
    return out

  args = (variables, x, x_tasks, state, batch)
  # XLA's backend at -O0: a third less compile time, the same operations.
  compiled = jax.jit(run).lower(*args).compile({'xla_backend_optimization_level': 0})
  return jax.device_get(compiled(*args))


@pytest.mark.parametrize('case', CASES)
def test_equal_inputs_give_the_shared_input_predictions(case):
  r = _results(case)
  for task in TASKS.names:
    assert r['equal'][task].shape == r['shared'][task].shape == (B, TASKS[task].out_dim)
    np.testing.assert_allclose(r['equal'][task], r['shared'][task], rtol=1e-5, atol=1e-5)
  if 'aux' in r:
    assert set(r['aux'][0]) == set(r['aux'][1]) == {'aux_loss'}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), *r['aux'])


@pytest.mark.parametrize('case', CASES)
def test_prediction_t_depends_on_input_t_only(case):
  jac = np.asarray(_results(case)['jac'])                 # [T_out, B, T_in, D]
  touched = np.abs(jac).max(axis=(1, 3)) > 0              # [T_out, T_in]
  np.testing.assert_array_equal(touched, np.eye(NUM, dtype=bool))


@pytest.mark.parametrize('case', [c for c in CASES if _has_split(_model(c, True))])
def test_representation_split_with_per_task_inputs(case):
  r = _results(case)
  for task in TASKS.names:
    np.testing.assert_allclose(r['split'][task], r['preds'][task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r['stacked'][task], r['preds'][task], rtol=1e-5, atol=1e-6)
  for leaf in jax.tree_util.tree_leaves(r['stacked_jac']):  # copy t of z reaches task t only
    touched = np.abs(np.asarray(leaf)).reshape(NUM, NUM, -1).max(-1) > 0
    assert not np.any(touched[~np.eye(NUM, dtype=bool)]), case
  # Heads whose gates read the inputs (mmoe, cgc, ple with N <= 2) read task t's from
  # inputs[:, t]: changing input 1 moves 'b' only; the other heads ignore the inputs.
  reads_inputs = case in ('mmoe', 'cgc', 'ple')
  for t, task in enumerate(TASKS.names):
    if reads_inputs and t == 1:
      assert not np.allclose(r['moved'][task], r['preds'][task]), case
    else:
      np.testing.assert_array_equal(r['moved'][task], r['preds'][task])


@pytest.mark.parametrize('case', TRAINED)
def test_one_mgda_train_step_on_per_task_inputs(case):
  r = _results(case)
  metrics = r['metrics']
  assert int(metrics['rejected']) == 0 and np.all(np.isfinite(metrics['losses']))
  np.testing.assert_allclose(metrics['losses'], r['expected_losses'], rtol=1e-5, atol=1e-6)
  assert np.isfinite(metrics['grad_norm']) and metrics['grad_norm'] > 0
  assert any(jax.tree_util.tree_leaves(r['moved_params']))


@pytest.mark.parametrize('name', sorted({name for name, _ in CASES.values()}))
def test_bad_per_task_inputs_name_the_model(name):
  model = models.get(name, TASKS, models.get_backbone('mlp', hidden=(8,)), per_task_inputs=True)
  message = (r'per-task inputs must be \[B, T=3, \.\.\.\]' if name == 'omoe'  # SharedBottom's
             else rf'^{name}\.per_task_inputs: inputs must be \[B, T=3, \.\.\.\] \(task t at '
             r'\[:, t\]\)')
  with pytest.raises(ValueError, match=message + r', got (shape )?\(4, 6\)'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), _inputs(False))
  with pytest.raises(ValueError, match=rf'^{name}\.per_task_inputs: must be a bool'):
    models.get(name, TASKS, models.get_backbone('mlp', hidden=(8,)), per_task_inputs='yes')
