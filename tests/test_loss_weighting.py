"""Loss-based weightings (EW, static, UW, DWA, RLW, GLS, FAMO) against independent
computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting
from mtl_jax.weighting import Needs, WeightingInputs, dwa, famo, gls, rlw, uw

KEY = jax.random.PRNGKey(0)


def run_update(method, losses, state, step=0, key=KEY):
  dtype = losses.dtype if isinstance(losses, jax.Array) else jnp.float32
  inputs = WeightingInputs(losses=jnp.asarray(losses, dtype),
                           step=jnp.asarray(step, jnp.int32))
  return method.update(inputs, state, key)


class NumpyAdam:
  """Adam as in torch.optim.Adam, float64, with coupled (L2) weight decay."""

  def __init__(self, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.weight_decay, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = self.v = 0.0
    self.t = 0

  def step(self, params, grad):
    grad = grad + self.weight_decay * params
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad**2
    step_size = self.lr / (1 - self.b1**self.t)
    denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + self.eps
    return params - step_size * self.m / denom


def np_softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


# ---------------------------------------------------------------------------------------------
# EW and static


def test_ew_sum_and_mean():
  losses = jnp.array([0.3, 2.0, 7.5, 1.1])
  np.testing.assert_array_equal(run_update(weighting.ew(), losses, ()).weights, np.ones(4))
  np.testing.assert_allclose(run_update(weighting.ew('mean'), losses, ()).weights,
                             np.full(4, 0.25))


def test_static_without_weights_gives_ones():
  method = weighting.static()
  assert method.init(5) == ()
  for dtype in (jnp.float32, jnp.bfloat16):
    losses = jnp.asarray([0.3, 2.0, 7.5, 1.1, 0.0], dtype)
    weights = run_update(method, losses, ()).weights
    assert weights.dtype == dtype
    np.testing.assert_array_equal(weights, np.ones(5))
  # Same as giving ones, and as EW.
  given = run_update(weighting.static((1.0, 1.0, 1.0)), jnp.ones(3), ()).weights
  np.testing.assert_array_equal(run_update(method, jnp.ones(3), ()).weights, given)


def test_static_weights_are_used_as_given():
  method = weighting.static((0.5, 2.0, 0.0))
  np.testing.assert_array_equal(run_update(method, jnp.ones(3), ()).weights, [0.5, 2.0, 0.0])
  with pytest.raises(ValueError, match='static: 3 weights given for 2 tasks'):
    method.init(2)


# ---------------------------------------------------------------------------------------------
# GLS


def test_gls_weights_are_gradient_of_geometric_mean():
  losses = jnp.array([0.3, 2.0, 7.5, 1.1])
  geometric_mean = lambda l: jnp.prod(l) ** (1.0 / l.shape[0])
  result = run_update(gls(), losses, gls().init(4))
  np.testing.assert_allclose(result.weights, jax.grad(geometric_mean)(losses), rtol=1e-5)
  np.testing.assert_allclose(result.aux['objective'], geometric_mean(losses), rtol=1e-5)


def test_gls_zero_loss_gives_finite_weights():
  for losses in ([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1e-30, 1e30, 1.0]):
    weights = run_update(gls(), losses, ()).weights
    assert np.all(np.isfinite(weights)), losses
    assert np.all(np.asarray(weights) > 0)


# ---------------------------------------------------------------------------------------------
# UW


def test_uw_weights_are_gradient_of_objective():
  method = uw(init=0.3)
  state = method.init(3)
  losses = jnp.array([0.5, 1.0, 4.0])
  objective = lambda l, s: jnp.sum(0.5 * jnp.exp(-s) * l + 0.5 * s)
  result = run_update(method, losses, state)
  np.testing.assert_allclose(result.weights, 0.5 * np.exp(-0.3) * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(result.weights, jax.grad(objective)(losses, state.log_vars),
                             rtol=1e-6)
  np.testing.assert_allclose(result.aux['objective'], objective(losses, state.log_vars),
                             rtol=1e-6)


def test_uw_log_vars_follow_adam_on_closed_form_gradient():
  rng = np.random.default_rng(0)
  scripted = rng.uniform(0.2, 3.0, size=(8, 3))
  method = uw(init=-0.5, lr=0.05)
  update = jax.jit(method.update)
  state = method.init(3)
  adam = NumpyAdam(lr=0.05)
  log_vars = np.full(3, -0.5)
  for step, losses in enumerate(scripted):
    result = update(WeightingInputs(jnp.asarray(losses, jnp.float32), jnp.int32(step)), state,
                    KEY)
    np.testing.assert_allclose(result.weights, 0.5 * np.exp(-log_vars), rtol=1e-5)
    log_vars = adam.step(log_vars, 0.5 - 0.5 * np.exp(-log_vars) * losses)
    state = result.state
    np.testing.assert_allclose(state.log_vars, log_vars, rtol=1e-5, atol=1e-6)


def test_uw_converges_to_log_losses_for_constant_losses():
  method = uw()
  losses = jnp.array([0.5, 2.0, 4.0])

  def body(state, step):
    return run_update(method, losses, state, step).state, None

  state, _ = jax.lax.scan(body, method.init(3), jnp.arange(3000))
  np.testing.assert_allclose(state.log_vars, np.log(losses), atol=0.02)
  # At the optimum alpha_t = 1 / (2 L_t).
  np.testing.assert_allclose(run_update(method, losses, state).weights, 0.5 / losses, rtol=0.03)


# ---------------------------------------------------------------------------------------------
# DWA


def numpy_dwa(scripted, steps_per_epoch, temperature):
  """Weights for each step: T softmax(mean(e-1) / mean(e-2) / tau), ones in epochs 0 and 1."""
  num_steps, num = scripted.shape
  epoch_means = scripted.reshape(-1, steps_per_epoch, num).mean(axis=1)
  weights = []
  for step in range(num_steps):
    epoch = step // steps_per_epoch
    if epoch < 2:
      weights.append(np.ones(num))
    else:
      ratio = epoch_means[epoch - 1] / epoch_means[epoch - 2]
      weights.append(num * np_softmax(ratio / temperature))
  return np.stack(weights)


@pytest.mark.parametrize('steps_per_epoch,temperature', [(3, 2.0), (1, 0.5), (5, 1.0)])
def test_dwa_matches_epoch_mean_rule(steps_per_epoch, temperature):
  rng = np.random.default_rng(steps_per_epoch)
  num_epochs, num = 4, 3
  # Losses that fall at task-dependent rates, with noise, so the ratios differ per task.
  decay = np.array([0.5, 0.8, 0.95])
  base = decay ** np.arange(num_epochs * steps_per_epoch)[:, None] / steps_per_epoch
  scripted = base * rng.uniform(0.8, 1.2, size=base.shape) + 0.1
  method = dwa(steps_per_epoch, temperature)
  update = jax.jit(method.update)
  state = method.init(num)
  weights = []
  for step, losses in enumerate(scripted):
    result = update(WeightingInputs(jnp.asarray(losses, jnp.float32), jnp.int32(step)), state,
                    KEY)
    weights.append(np.asarray(result.weights))
    state = result.state
  weights = np.stack(weights)
  expected = numpy_dwa(scripted, steps_per_epoch, temperature)
  np.testing.assert_allclose(weights, expected, rtol=1e-5)
  np.testing.assert_allclose(weights.sum(axis=1), num, rtol=1e-5)
  assert not np.allclose(weights[2 * steps_per_epoch:], 1.0)
  assert int(state.epochs_done) == num_epochs and int(state.epoch_updates) == 0


def test_dwa_zero_epoch_mean_is_finite():
  method = dwa(1)
  state = method.init(2)
  for losses in ([0.0, 1.0], [0.0, 0.5], [0.0, 0.2]):
    result = run_update(method, losses, state)
    state = result.state
  assert np.all(np.isfinite(result.weights))


# ---------------------------------------------------------------------------------------------
# RLW


def test_rlw_sums_and_randomness():
  losses = jnp.ones(4)
  for match_sum, total in ((True, 4.0), (False, 1.0)):
    weights = run_update(rlw(match_sum), losses, (), key=jax.random.PRNGKey(3)).weights
    np.testing.assert_allclose(jnp.sum(weights), total, rtol=1e-6)
    assert np.all(np.asarray(weights) > 0)
  # Softmax of a standard normal draw from exactly the given key.
  key = jax.random.PRNGKey(7)
  expected = 4 * np_softmax(np.asarray(jax.random.normal(key, (4,))))
  np.testing.assert_allclose(run_update(rlw(), losses, (), key=key).weights, expected, rtol=1e-5)
  first = run_update(rlw(), losses, (), key=jax.random.PRNGKey(1)).weights
  second = run_update(rlw(), losses, (), key=jax.random.PRNGKey(2)).weights
  assert not np.allclose(first, second)


def test_rlw_mean_over_keys_is_one():
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  weights = jax.vmap(lambda k: run_update(rlw(), jnp.ones(3), (), key=k).weights)(keys)
  np.testing.assert_allclose(weights.mean(axis=0), np.ones(3), atol=0.02)


# ---------------------------------------------------------------------------------------------
# FAMO


class NumpyFAMO:
  """The reference algorithm (``famo.py``), float64, as weights and a logits step."""

  def __init__(self, num, gamma, beta, eps, min_losses):
    self.logits = np.zeros(num)
    self.adam = NumpyAdam(lr=beta, weight_decay=gamma)
    self.eps, self.min_losses = eps, np.broadcast_to(np.asarray(min_losses, float), (num,))

  def weights(self, losses):
    z = np_softmax(self.logits)
    gap = losses - self.min_losses + self.eps
    c = np.sum(z / gap)
    return z / (c * gap)

  def update(self, before, after):
    delta = (np.log(before - self.min_losses + self.eps)
             - np.log(after - self.min_losses + self.eps))
    z = np_softmax(self.logits)
    jacobian = np.diag(z) - np.outer(z, z)   # d softmax / d logits (symmetric)
    self.logits = self.adam.step(self.logits, jacobian.T @ delta)


@pytest.mark.parametrize('match_sum,gamma,min_losses', [(True, 1e-3, 0.0),
                                                        (False, 0.05, [0.1, 0.0, 0.2])])
def test_famo_matches_reference(match_sum, gamma, min_losses):
  rng = np.random.default_rng(1)
  num, beta, eps = 3, 0.1, 1e-8
  method = famo(gamma=gamma, beta=beta, eps=eps, min_losses=min_losses, match_sum=match_sum)
  update, after_step = jax.jit(method.update), jax.jit(method.after_step)
  reference = NumpyFAMO(num, gamma, beta, eps, min_losses)
  state = method.init(num)
  before = rng.uniform(1.0, 3.0, size=num)
  for step in range(10):
    # Task-dependent decrease so that the logits move.
    after = before * np.array([0.9, 0.97, 1.01]) * rng.uniform(0.98, 1.02, size=num)
    result = update(WeightingInputs(jnp.asarray(before, jnp.float32), jnp.int32(step)), state,
                    KEY)
    expected = reference.weights(before) * (num if match_sum else 1)
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(result.weights), num if match_sum else 1.0, rtol=1e-5)
    state = after_step(result.state, jnp.asarray(before, jnp.float32),
                       jnp.asarray(after, jnp.float32))
    reference.update(before, after)
    np.testing.assert_allclose(state.logits, reference.logits, rtol=1e-4, atol=1e-5)
    before = after
  # The fastest-improving task loses weight.
  assert state.logits[0] < state.logits[2]


def test_famo_weights_are_gradient_of_objective():
  method = famo()
  logits = jnp.array([0.3, -0.2, 0.1])
  state = method.init(3)._replace(logits=logits)
  losses = jnp.array([0.5, 2.0, 1.2])
  z = jax.nn.softmax(logits)
  c = jnp.sum(z / (losses + 1e-8))
  objective = lambda l: jnp.sum(z * jnp.log(l + 1e-8)) / c
  np.testing.assert_allclose(run_update(method, losses, state).weights,
                             3 * jax.grad(objective)(losses), rtol=1e-5)


def test_famo_zero_and_below_minimum_losses_are_finite():
  method = famo(min_losses=[0.0, 0.5, 0.0])
  state = method.init(3)
  for losses in ([0.0, 1.0, 2.0], [0.1, 0.2, 1.0]):   # second: below its minimum
    result = run_update(method, losses, state)
    assert np.all(np.isfinite(result.weights))
    state = method.after_step(result.state, jnp.asarray(losses), jnp.asarray([0.0, 0.1, 0.5]))
    assert np.all(np.isfinite(state.logits))


# ---------------------------------------------------------------------------------------------
# Every method


ALL_METHODS = {
    'uw': lambda: uw(),
    'dwa': lambda: dwa(steps_per_epoch=2),
    'rlw': lambda: rlw(),
    'gls': lambda: gls(),
    'famo': lambda: famo(),
}


def _spec(tree):
  """Tree structure and the leaves' (shape, dtype, weak type)."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, [(jnp.shape(x), jnp.result_type(x), getattr(x, 'weak_type', False))
                   for x in leaves]


@pytest.mark.parametrize('name', sorted(ALL_METHODS))
def test_jit_once_and_state_is_a_stable_pytree(name):
  method = ALL_METHODS[name]()
  assert method.name == name and method.needs is Needs.LOSSES
  assert method.head_grads == 'weighted'
  assert (method.after_step is not None) == (name == 'famo')
  traces = []

  def counted_update(inputs, state, key):
    traces.append(1)
    return method.update(inputs, state, key)

  update = jax.jit(counted_update)
  after_step = jax.jit(method.after_step) if method.after_step else None
  state = method.init(3)
  spec = _spec(state)
  losses = jnp.array([1.0, 2.0, 0.5])
  for step in range(7):   # crosses several DWA epochs
    result = update(WeightingInputs(losses, jnp.int32(step)), state, jax.random.PRNGKey(step))
    assert result.weights.shape == (3,) and np.all(np.isfinite(result.weights))
    assert all(jnp.ndim(v) == 0 for v in (result.aux or {}).values())
    assert _spec(result.state) == spec, 'update changed the state structure, shapes or dtypes'
    state = result.state
    if after_step is not None:
      state = after_step(state, losses, losses * 0.9)
      assert _spec(state) == spec, 'after_step changed the state structure, shapes or dtypes'
    losses = losses * 0.9
  # A state restored from host arrays (as from a checkpoint) does not retrace and gives the
  # same weights.
  inputs = WeightingInputs(losses, jnp.int32(7))
  restored = jax.tree.map(np.asarray, state)
  np.testing.assert_array_equal(update(inputs, restored, KEY).weights,
                                update(inputs, state, KEY).weights)
  assert len(traces) == 1


@pytest.mark.parametrize('name', sorted(ALL_METHODS))
def test_vmap_over_loss_batch(name):
  method = ALL_METHODS[name]()
  state = method.init(3)
  batch = jnp.asarray(np.random.default_rng(0).uniform(0.1, 3.0, size=(5, 3)), jnp.float32)
  weights_of = lambda losses: run_update(method, losses, state).weights
  batched = jax.vmap(weights_of)(batch)
  for row, losses in zip(batched, batch):
    np.testing.assert_allclose(row, weights_of(losses), rtol=1e-6)
  if method.after_step is not None:
    after = batch * jnp.array([0.9, 0.97, 1.01])
    logits = jax.vmap(method.after_step, in_axes=(None, 0, 0))(state, batch, after).logits
    for row, before_row, after_row in zip(logits, batch, after):
      np.testing.assert_allclose(row, method.after_step(state, before_row, after_row).logits,
                                 rtol=1e-5)


@pytest.mark.parametrize('factory,kwargs,pattern', [
    (uw, dict(lr=-0.1), 'uw: lr'),
    (uw, dict(init=float('nan')), 'uw: init'),
    (dwa, dict(), 'dwa: steps_per_epoch=0 means "one epoch of the training data"'),
    (dwa, dict(steps_per_epoch=-1), 'dwa: steps_per_epoch must be a positive int'),
    (dwa, dict(steps_per_epoch=2.5), 'dwa: steps_per_epoch'),
    (dwa, dict(steps_per_epoch=True), 'dwa: steps_per_epoch'),
    (dwa, dict(steps_per_epoch=10, temperature=0.0), 'dwa: temperature'),
    (dwa, dict(steps_per_epoch=10, temperature=-1.0), 'dwa: temperature'),
    (rlw, dict(match_sum='yes'), 'rlw: match_sum'),
    (gls, dict(eps=0.0), 'gls: eps'),
    (famo, dict(gamma=-1e-3), 'famo: gamma'),
    (famo, dict(beta=-0.1), 'famo: beta'),
    (famo, dict(eps=0.0), 'famo: eps'),
    (famo, dict(min_losses=[[0.0]]), 'famo: min_losses'),
    (famo, dict(min_losses=[float('inf')]), 'famo: min_losses'),
    (famo, dict(match_sum=1), 'famo: match_sum'),
    (weighting.ew, dict(reduction='max'), 'ew: reduction'),
    (weighting.static, dict(weights=[1.0, -1.0]), 'static: weights must be finite and >= 0'),
    (weighting.static, dict(weights=[]), 'static: weights must be a non-empty vector'),
])
def test_bad_hyperparameters(factory, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    factory(**kwargs)


def test_famo_min_losses_length_must_match_tasks():
  with pytest.raises(ValueError, match='famo: 2 min_losses given for 3 tasks'):
    famo(min_losses=[0.0, 0.1]).init(3)
