"""The train step against a hand-written optax step; tracing once; NaN rejection."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models, tasks as T, weighting
from mtl_jax.data import make_synthetic, take
from mtl_jax import init_train_state, make_eval_step, make_train_step
from tests.conftest import xla_default_codegen

TASKS = T.TaskSet([T.regression('y1'), T.regression('y2'), T.multiclass('c', 3), T.binary('b'),
                   T.multilabel('m', 4)])


def _setup(method, optimizer=None):
  model = models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(16,)),
                     tower_hidden=(8,))
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(32, 6)).astype(np.float32),
           'labels': {'y1': rng.normal(size=(32, 1)).astype(np.float32),
                      'y2': rng.normal(size=(32,)).astype(np.float32),
                      'c': rng.integers(0, 3, 32),
                      'b': rng.integers(0, 2, 32).astype(np.float32),
                      'm': rng.integers(0, 2, (32, 4)).astype(np.float32)},
           'masks': {'y2': rng.random(32) < 0.5}}
  optimizer = optimizer or optax.adam(1e-2)
  state = init_train_state(model, TASKS, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  return model, optimizer, state, batch


def _hand_losses(model, params, batch):
  """The three task losses written out independently of TaskSet."""
  preds = model.apply({'params': params}, batch['inputs'])
  y1 = jnp.mean((preds['y1'][:, 0] - batch['labels']['y1'][:, 0]) ** 2)
  m = batch['masks']['y2']
  y2 = jnp.sum(jnp.where(m, (preds['y2'][:, 0] - batch['labels']['y2']) ** 2, 0)) / m.sum()
  logp = jax.nn.log_softmax(preds['c'])
  c = -jnp.mean(logp[jnp.arange(32), batch['labels']['c']])
  bce = lambda z, y: -(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))
  b = jnp.mean(bce(preds['b'][:, 0], batch['labels']['b']))
  m = jnp.mean(bce(preds['m'], batch['labels']['m']))
  return jnp.stack([y1, y2, c, b, m])


@pytest.mark.parametrize('method,weights', [
    (weighting.get('ew'), np.ones(5)),
    (weighting.get('ew', reduction='mean'), np.ones(5) / 5),
    (weighting.get('static', weights=[0.5, 2.0, 0.0, 1.0, 3.0]),
     np.array([0.5, 2.0, 0.0, 1.0, 3.0])),
])
def test_step_equals_hand_written_optax_step(method, weights):
  model, optimizer, state, batch = _setup(method)
  params0 = jax.tree.map(jnp.array, state.params)
  opt0 = optimizer.init(params0)
  step = make_train_step(model, TASKS, optimizer, method, schedule=optax.constant_schedule(1e-2))
  new_state, metrics = step(state, batch)

  total = lambda p: jnp.dot(weights, _hand_losses(model, p, batch))

  @jax.jit
  def hand_step(params, opt_state):
    grads = jax.grad(total)(params)
    updates, _ = optimizer.update(grads, opt_state, params)
    return grads, optax.apply_updates(params, updates), _hand_losses(model, params, batch)

  grads, expected, hand_losses = hand_step(params0, opt0)

  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['losses'], hand_losses, rtol=1e-5)
  np.testing.assert_allclose(metrics['weights'], weights, rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm'], optax.tree.norm(grads), rtol=1e-5)
  np.testing.assert_allclose(metrics['param_norm'], optax.tree.norm(expected), rtol=1e-5)
  np.testing.assert_allclose(metrics['lr'], 1e-2)
  assert int(new_state.step) == 1 and int(metrics['rejected']) == 0


def test_step_traces_once_over_many_steps():
  method = weighting.get('ew')
  model, optimizer, state, batch = _setup(method)
  raw = make_train_step(model, TASKS, optimizer, method, jit=False)
  step = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=0)
  rng = np.random.default_rng(1)
  for _ in range(5):  # new values, same shapes: no retrace
    batch = jax.tree.map(lambda a: a[rng.permutation(32)], batch)
    state, _ = step(state, batch)
  assert int(state.step) == 5


def _counting_weighting(weights=1.0):
  """EW with a state that counts its updates, to see that a rejected step leaves it alone;
  ``weights`` NaN gives finite losses with a NaN gradient."""
  def update(inputs, state, key):
    return weighting.WeightingResult(jnp.full_like(inputs.losses, weights), state + 1)
  return weighting.Weighting('counting', weighting.Needs.LOSSES, lambda n: jnp.zeros(()), update)


@pytest.mark.parametrize('bad', ['nan_input', 'overflowing_loss', 'nan_gradient'])
def test_nonfinite_loss_or_gradient_is_rejected(bad):
  method = _counting_weighting()
  model, optimizer, state, batch = _setup(method)
  bad_batch = jax.tree.map(np.copy, batch)
  bad_step = make_train_step(model, TASKS, optimizer, method, donate=False)
  if bad == 'nan_input':
    bad_batch['inputs'][0, 0] = np.nan
  elif bad == 'overflowing_loss':
    # A finite, valid label whose squared error overflows (an inf label would be invalid:
    # masked out and counted, see test_label_checks.py).
    bad_batch['labels']['y1'][3, 0] = 3e38
  else:
    # Finite losses, a NaN gradient: only the gradient's check can catch it.
    bad_step = make_train_step(model, TASKS, optimizer, _counting_weighting(np.nan),
                               donate=False)
  before = jax.tree.map(np.asarray, state)
  rejected, metrics = bad_step(state, bad_batch)
  assert int(metrics['rejected']) == 1 and int(rejected.num_rejected) == 1
  if bad == 'nan_gradient':
    assert np.all(np.isfinite(metrics['losses'])) and np.isnan(metrics['grad_norm'])
  else:
    assert not np.all(np.isfinite(metrics['losses']))
  for field in ('params', 'opt_state', 'weighting_state', 'model_state'):
    chex.assert_trees_all_equal(getattr(rejected, field), getattr(before, field))
  np.testing.assert_allclose(metrics['param_norm'], optax.tree.norm(before.params), rtol=1e-5)
  assert int(rejected.step) == 1
  step = make_train_step(model, TASKS, optimizer, method, donate=False)
  # A good batch afterwards trains normally.
  after, metrics = step(rejected, batch)
  assert int(metrics['rejected']) == 0 and int(after.num_rejected) == 1
  assert int(after.weighting_state) == 1
  chex.assert_tree_all_finite(after.params)
  assert not np.allclose(after.params['shared']['Dense_0']['kernel'],
                         before.params['shared']['Dense_0']['kernel'])


def test_guard_rejects_a_gradient_whose_squares_overflow():
  """Every entry finite, but 2e19^2 > float32 max: Adam's second moment would overflow."""
  from mtl_jax._src import step as step_lib
  method = _counting_weighting()
  _, _, state, _ = _setup(method)
  grads = jax.tree.map(jnp.zeros_like, state.params)
  grads['shared']['Dense_0']['bias'] = grads['shared']['Dense_0']['bias'].at[0].set(2e19)
  moved = lambda: state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
  kept, norms, rejected = step_lib.guard(state, moved, grads, jnp.asarray(True))
  assert int(rejected) == 1 and int(kept.num_rejected) == 1 and norms['grad_norm'] == np.inf
  chex.assert_trees_all_equal(kept.params, state.params)
  grads['shared']['Dense_0']['bias'] = grads['shared']['Dense_0']['bias'].at[0].set(1e19)
  kept, norms, rejected = step_lib.guard(state, moved, grads, jnp.asarray(True))
  assert int(rejected) == 0 and int(kept.num_rejected) == 0
  np.testing.assert_allclose(norms['grad_norm'], 1e19, rtol=1e-6)
  chex.assert_trees_all_equal(kept.params, moved().params)


def test_an_update_that_overflows_from_finite_gradients_is_applied_and_seen_next_step():
  """The documented limit of the guard: it decides before the optimizer runs, so an update
  that overflows (here a step size of 3e39) is applied; its param_norm is not finite, and the
  next step, whose losses are not finite, is rejected and changes nothing."""
  method = _counting_weighting()
  blowup = optax.chain(optax.scale(3e38), optax.scale(10.0))
  model, _, state, batch = _setup(method, blowup)
  step = make_train_step(model, TASKS, blowup, method, donate=False)
  state, metrics = step(state, batch)
  assert int(metrics['rejected']) == 0 and np.isfinite(metrics['grad_norm'])
  assert not np.isfinite(metrics['param_norm'])
  assert not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
  before = jax.tree.map(np.asarray, state)
  state, metrics = step(state, batch)
  assert int(metrics['rejected']) == 1 and int(state.num_rejected) == 1
  assert not np.all(np.isfinite(metrics['losses']))
  for field in ('params', 'opt_state', 'weighting_state'):
    chex.assert_trees_all_equal(getattr(state, field), getattr(before, field))


def _branch_copies(hlo: str) -> list:
  """The sizes of the arrays copied in the branches of the entry's conditionals (fused
  computations are separate, so a copy here moves a whole buffer)."""
  import re
  entry = hlo[hlo.index('\nENTRY '):]
  names = set()
  for line in entry.splitlines():
    if ' conditional(' in line:
      m = re.search(r'branch_computations=\{([^}]*)\}', line)
      found = m.group(1).split(',') if m else re.findall(r'(?:true|false)_computation=(%[^\s,]+)',
                                                         line)
      names.update(n.strip().lstrip('%') for n in found)
  assert len(names) >= 2, 'no conditional found'
  sizes = []
  for name in names:
    body = hlo[hlo.index(f'\n%{name} '):]
    for shape in re.findall(r'= [a-z0-9]+\[([0-9,]*)\]\S* copy\(', body[:body.index('\n}')]):
      sizes.append(int(np.prod([int(d) for d in shape.split(',') if d])))
  return sizes


@pytest.mark.parametrize('method', ['ew', 'famo'])
def test_the_guard_updates_the_donated_state_in_place(method):
  """XLA's optimized program: the guard's ``lax.cond`` copies no params or optimizer state
  in either branch (the accepting branch writes the new state into the donated buffers, the
  other passes them on; FAMO's [T] state may be copied).  A guard that chose between the new
  and the old state after the update copied every leaf of params and optimizer state there."""
  method = weighting.get(method)
  model, optimizer, state, batch = _setup(method)
  step = make_train_step(model, TASKS, optimizer, method)
  compiled = step.lower(state, batch).compile(xla_default_codegen())   # as users compile it
  sizes = _branch_copies(compiled.as_text())
  assert all(size <= len(TASKS) for size in sizes), sizes

def test_training_reduces_test_error_on_synthetic_data():
  ds = make_synthetic(2, 0.9, input_dim=16, preset='keras_mmoe', sizes=(2048, 256, 256))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(32,)),
                     tower_hidden=(8,))
  method, optimizer = weighting.get('ew'), optax.adam(3e-3)
  train = ds.split('train')
  state = init_train_state(model, ds.tasks, optimizer, method, take(train, np.arange(64))['inputs'],
                           jax.random.PRNGKey(0))
  step = make_train_step(model, ds.tasks, optimizer, method)
  eval_step = make_eval_step(model, ds.tasks)
  test = ds.split('test')
  before = ds.tasks.finalize_metrics(eval_step(state.params, state.model_state, test))
  rng = np.random.default_rng(0)
  for _ in range(300):
    state, _ = step(state, take(train, rng.integers(0, 2048, 64)))
  after = ds.tasks.finalize_metrics(eval_step(state.params, state.model_state, test))
  for name in ds.tasks.names:
    variance = np.var(test['labels'][name])
    assert after[name]['mse'] < 0.5 * variance < before[name]['mse']


def test_init_train_state_works_inside_vmap_and_jit():
  """Users vmap the init over seeds (notebook 04): the CPU's fast-compile option for the
  top-level init must not reach a traced call, and each copy equals the init of its key."""
  ds = make_synthetic(num_tasks=2, correlation=0.5, sizes=(16, 4, 4), input_dim=6)
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=(4,))
  x = ds.split('train')['inputs'][:4]
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  init = lambda key: init_train_state(model, ds.tasks, optax.sgd(0.1), weighting.get('ew'), x,
                                      key)
  stacked = jax.jit(jax.vmap(init))(keys)
  for i, key in enumerate(keys):
    one = init(key)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], stacked.params), one.params,
                                rtol=1e-6, atol=1e-7)
