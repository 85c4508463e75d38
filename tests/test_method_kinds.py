"""The engine's method kinds beyond alpha^T J: direct methods, parameter-sized state, k
independent sub-batches, head scales and bilevel methods, against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import mtl_value_and_grad, weighting
from mtl_jax._src.weighting import jacobian as jac_lib
from mtl_jax.weighting import Needs, Weighting, WeightingResult

T, B, D, H = 3, 12, 5, 4


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {'w1': rng.normal(size=(D, H)).astype(np.float32),
            'heads': rng.normal(size=(T, H)).astype(np.float32)}
  x = rng.normal(size=(B, D)).astype(np.float32)
  y = rng.normal(size=(B, T)).astype(np.float32)
  return params, x, y


def losses_fn(params, x, y):
  z = jnp.tanh(x @ params['w1'])
  return jnp.mean((z @ params['heads'].T - y) ** 2, axis=0)


SHARED = {'w1': True, 'heads': False}


def _jac(params, x, y):
  """[T, D*H] rows of the shared weight's Jacobian, by jax.jacrev."""
  return np.asarray(jax.jacrev(losses_fn)(params, x, y)['w1'].reshape(T, -1), np.float64)


def _median() -> Weighting:
  """A direct method: the coordinate-wise median of the rows (not linear in J)."""
  def update(inputs, state, key):
    d = jax.tree.map(lambda leaf: jnp.median(leaf, axis=0), inputs.jacobian)
    return WeightingResult(jnp.full(inputs.losses.shape, jnp.nan), state, direction=d)
  return Weighting('median', Needs.JACOBIAN, lambda t: (), update, head_grads='unweighted',
                   direct=True)


def _running_sum() -> Weighting:
  """Parameter-sized state: the running sum of the flattened rows; d = its row sum."""
  def init(num, shared):
    return jnp.zeros((num, jac_lib.size(shared)), jnp.float32)

  def update(inputs, state, key):
    state = state + jac_lib.flatten(inputs.jacobian)
    d = jac_lib.unflatten(state.sum(0), inputs.jacobian)
    return WeightingResult(jnp.ones(inputs.losses.shape), state, direction=d)
  return Weighting('running_sum', Needs.JACOBIAN, init, update, head_grads='unweighted',
                   direct=True, state_like_params=True)


def _second_half(k=2) -> Weighting:
  """k sub-batches: weight 1 on the last sub-batch's rows only."""
  def update(inputs, state, key):
    num = inputs.losses.shape[0] // k
    return WeightingResult(jnp.zeros((k, num)).at[-1].set(1.0).reshape(-1), state)
  return Weighting('second_half', Needs.GRAM, lambda t: (), update, head_grads='unweighted',
                   sub_batches=k)


def test_a_direct_method_gives_its_own_direction():
  params, x, y = _problem()
  vg = jax.jit(mtl_value_and_grad(losses_fn, _median(), shared=SHARED))
  _, grads, weights, _ = vg(params, None, None, x, y)
  np.testing.assert_allclose(np.asarray(grads['w1']).reshape(-1),
                             np.median(_jac(params, x, y), 0), rtol=1e-5, atol=1e-6)
  assert np.all(np.isnan(weights))
  heads = jax.grad(lambda p: losses_fn(p, x, y).sum())(params)['heads']   # unweighted
  np.testing.assert_allclose(grads['heads'], heads, rtol=1e-5, atol=1e-6)
  out = weighting.combine(_median(), _jac(params, x, y), np.ones(T))
  np.testing.assert_allclose(out.direction, np.median(_jac(params, x, y), 0), rtol=1e-6)


def test_parameter_sized_state_everywhere():
  """init(T, shared) in the library path, combine, as_optax and the shapes it is checked by."""
  params, x, y = _problem()
  method = _running_sum()
  vg = jax.jit(mtl_value_and_grad(losses_fn, method, shared=SHARED))
  state = method.init(T, [params['w1']])
  assert state.shape == (T, D * H)
  _, grads, _, state = vg(params, state, None, x, y)
  params2 = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  _, grads2, _, state2 = vg(params2, state, None, x, y)
  expected = _jac(params, x, y) + _jac(params2, x, y)
  np.testing.assert_allclose(state2, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads2['w1']).reshape(-1), expected.sum(0), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"pass state=method.init\(3, shared\)"):
    vg(params, None, None, x, y)
  with pytest.raises(ValueError, match='does not match'):
    vg(params, jnp.zeros((T, 7)), None, x, y)
  j = _jac(params, x, y)
  out = weighting.combine(method, j, np.ones(T), state=method.init(T, j[0]))
  np.testing.assert_allclose(out.state, j, rtol=1e-6)
  tx = weighting.as_optax(method, T)
  opt_state = tx.init(jnp.zeros(D * H))
  d, _ = tx.update(jnp.asarray(j, jnp.float32), opt_state, losses=jnp.ones(T))
  np.testing.assert_allclose(d, j.sum(0), rtol=1e-5)


@pytest.mark.parametrize('mode', ['param', 'gram'])
def test_sub_batches_split_the_batch(mode):
  """The last of two sub-batches' task gradients, the batch's mean head gradients and G of the
  batch gradients, in both modes (the Gramian mode sees the vmapped sub-batches)."""
  params, x, y = _problem(1)
  vg = jax.jit(mtl_value_and_grad(losses_fn, _second_half(), shared=SHARED, mode=mode))
  losses, grads, weights, _ = vg(params, None, None, x, y)
  half = B // 2
  second = jax.grad(lambda p: losses_fn(p, x[half:], y[half:]).sum())(params)
  np.testing.assert_allclose(grads['w1'], second['w1'], rtol=1e-5, atol=1e-6)
  whole = jax.grad(lambda p: losses_fn(p, x, y).sum())(params)
  np.testing.assert_allclose(grads['heads'], whole['heads'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses, losses_fn(params, x, y), rtol=1e-5)
  np.testing.assert_allclose(weights, np.ones(T))
  with pytest.raises(ValueError, match=r'split into 2 equal sub-batches: batch\[0\]'):
    vg(params, None, None, x[:-1], y[:-1])


def test_sub_batch_rows_in_combine_and_the_options_they_exclude():
  j = np.random.default_rng(0).normal(size=(2 * T, 6)).astype(np.float32)
  out = weighting.combine(_second_half(), j, np.ones(2 * T))
  np.testing.assert_allclose(out.direction, j[T:].sum(0), rtol=1e-6)
  with pytest.raises(ValueError, match='pass k \\* T rows'):
    weighting.combine(_second_half(4), j, np.ones(2 * T))
  with pytest.raises(ValueError, match='as_optax sees one task-stacked update'):
    weighting.as_optax(_second_half(), T)
  params, x, y = _problem()
  with pytest.raises(weighting.OptionError, match="mode: .* 'rep' has one representation"):
    mtl_value_and_grad(None, _second_half(), shared=SHARED, mode='rep',
                       representation_fn=lambda p, x, y: jnp.tanh(x @ p['w1']),
                       heads_fn=lambda z, p, x, y: jnp.mean((z @ p['heads'].T - y) ** 2, 0))(
                           params, None, None, x, y)
  with pytest.raises(weighting.OptionError, match="head_grads: .* use 'unweighted'"):
    mtl_value_and_grad(losses_fn, _median(), shared=SHARED, head_grads='weighted')(
        params, None, None, x, y)


def test_head_scale_multiplies_the_unweighted_head_gradients():
  params, x, y = _problem(2)
  log_ew = weighting.Weighting('log_ew', Needs.LOSSES, lambda t: (),
                               lambda i, s, k: WeightingResult(1 / i.losses, s),
                               head_grads='unweighted', head_scale=lambda l: 1 / l)
  _, grads, _, _ = jax.jit(mtl_value_and_grad(losses_fn, log_ew, shared=SHARED))(
      params, None, None, x, y)
  expected = jax.grad(lambda p: jnp.log(losses_fn(p, x, y)).sum())(params)
  np.testing.assert_allclose(grads['heads'], expected['heads'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads['w1'], expected['w1'], rtol=1e-5, atol=1e-6)


def test_a_bilevel_method_sees_the_loss_function():
  """Its weights are the losses of a virtual SGD step, computed from inputs.loss_fn."""
  def update(inputs, state, key):
    step = jax.grad(lambda p: inputs.loss_fn(p).sum())(inputs.params)
    virtual = jax.tree.map(lambda p, g: p - 0.5 * g, inputs.params, step)
    return WeightingResult(inputs.loss_fn(virtual), state)
  method = Weighting('virtual', Needs.LOSSES, lambda t: (), update, bilevel=True)
  params, x, y = _problem(3)
  _, _, weights, _ = jax.jit(mtl_value_and_grad(losses_fn, method, shared=SHARED))(
      params, None, None, x, y)
  g = jax.grad(lambda p: losses_fn(p, x, y).sum())(params)
  virtual = jax.tree.map(lambda p, g: p - 0.5 * g, params, g)
  np.testing.assert_allclose(weights, losses_fn(virtual, x, y), rtol=1e-5)
  with pytest.raises(ValueError, match=r"'virtual' is bilevel: [^()]*\(not combine or as_optax\)"):
    weighting.combine(method, _jac(params, x, y), np.ones(T))
