"""``mtl_value_and_grad`` on models that are not mtl_jax's (plain functions, flax.linen,
flax.nnx), against ``jax.jacrev`` + ``combine`` + gradients assembled by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl_jax import mtl_value_and_grad, weighting

T, B, D, H = 3, 8, 4, 5
KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.fold_in(KEY, 1), (B, D))
Y = jax.random.normal(jax.random.fold_in(KEY, 2), (B, T))


def _expected(method, jac_shared, jac_task, losses, state, key, step=0):
  """(direction on the shared leaves, task-specific gradients, weights, state), by hand: the
  method via ``combine`` on ``jacrev``'s rows, the task leaves' rows summed with weights
  alpha ('weighted') or 1 ('unweighted')."""
  out = weighting.combine(method, jac_shared, losses, state=state, key=key, step=step)
  cotangent = out.weights if method.head_grads == 'weighted' else jnp.ones(T)
  task = jax.tree.map(lambda j: jnp.tensordot(cotangent, j, 1), jac_task)
  return out.direction, task, out.weights, out.state


def _plain_params():
  return {'trunk': {'w': jax.random.normal(KEY, (D, H))},
          'heads': {'v': jax.random.normal(jax.random.fold_in(KEY, 3), (T, H))}}


def _plain_losses(params, x, y):
  z = jnp.tanh(x @ params['trunk']['w'])
  return jnp.mean((z @ params['heads']['v'].T - y) ** 2, axis=0)


SHARED = {'trunk': {'w': True}, 'heads': {'v': False}}


@pytest.mark.parametrize('name', ['ew', 'uw', 'dwa', 'upgrad', 'mgda', 'pcgrad', 'cagrad'])
def test_plain_function_model_equals_jacrev_and_combine(name):
  method = weighting.get(name, **({'steps_per_epoch': 2} if name == 'dwa' else {}))
  params, state = _plain_params(), method.init(T)
  key = jax.random.PRNGKey(7) if method.random else None
  vg = jax.jit(mtl_value_and_grad(_plain_losses, method, shared=SHARED))
  losses, grads, weights, new_state = vg(params, state, key, X, Y, step=3)
  jac = jax.jacrev(_plain_losses)(params, X, Y)
  direction, task, alpha, expected_state = _expected(
      method, jac['trunk'], jac['heads'], _plain_losses(params, X, Y), state, key, step=3)
  np.testing.assert_allclose(losses, _plain_losses(params, X, Y), rtol=1e-6)
  np.testing.assert_allclose(weights, alpha, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(grads['trunk']['w'], direction['w'], rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(grads['heads']['v'], task['v'], rtol=2e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(expected_state)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


class LinenModel(nn.Module):
  @nn.compact
  def __call__(self, x):
    z = nn.tanh(nn.Dense(H, name='trunk')(x))
    return nn.DenseGeneral((T,), name='heads')(z)


def test_flax_linen_model_with_aux_and_a_mask_function():
  model = LinenModel()
  params = model.init(KEY, X)['params']

  def losses_fn(p, x, y):
    pred = model.apply({'params': p}, x)
    return jnp.mean((pred - y) ** 2, axis=0), {'pred_mean': jnp.mean(pred)}

  shared = lambda p: {k: jax.tree.map(lambda _: k == 'trunk', v) for k, v in p.items()}
  method = weighting.get('upgrad')
  vg = jax.jit(mtl_value_and_grad(losses_fn, method, shared=shared, has_aux=True,
                                  chunk_size=2))
  (losses, aux), grads, weights, _ = vg(params, None, None, X, Y)
  jac = jax.jacrev(lambda p: losses_fn(p, X, Y)[0])(params)
  direction, task, alpha, _ = _expected(method, jac['trunk'], jac['heads'], losses, None, None)
  np.testing.assert_allclose(aux['pred_mean'], losses_fn(params, X, Y)[1]['pred_mean'],
                             rtol=1e-6)
  np.testing.assert_allclose(weights, alpha, rtol=2e-4, atol=1e-6)
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
  jax.tree.map(chex_close, grads['trunk'], direction)
  jax.tree.map(chex_close, grads['heads'], task)


class NnxModel(nnx.Module):
  def __init__(self, rngs):
    self.trunk = nnx.Linear(D, H, rngs=rngs)
    self.heads = nnx.Linear(H, T, rngs=rngs)

  def __call__(self, x):
    return self.heads(jnp.tanh(self.trunk(x)))


def test_flax_nnx_model_through_split_and_merge():
  graphdef, params = nnx.split(NnxModel(nnx.Rngs(0)), nnx.Param)

  def losses_fn(p, x, y):
    return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2, axis=0)

  shared = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path).startswith("['trunk']"), p)
  method = weighting.get('mgda')
  vg = jax.jit(mtl_value_and_grad(losses_fn, method, shared=shared))
  losses, grads, weights, _ = vg(params, None, None, X, Y)
  jac = jax.jacrev(losses_fn)(params, X, Y)
  direction, task, alpha, _ = _expected(method, jac['trunk'], jac['heads'], losses, None, None)
  np.testing.assert_allclose(weights, alpha, rtol=2e-4, atol=1e-6)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
  jax.tree.map(close, grads['trunk'], direction)
  jax.tree.map(close, grads['heads'], task)
  assert isinstance(grads, nnx.State)


def test_representation_mode_equals_the_hand_computation():
  """mode='rep' (MGDA-UB): alpha from the per-task gradients of z, the shared gradient one
  VJP of the representation with cotangent sum_t alpha_t dL_t/dz."""
  params = _plain_params()
  rep = lambda p, x, y: jnp.tanh(x @ p['trunk']['w'])
  heads = lambda z, p, x, y: jnp.mean((z @ p['heads']['v'].T - y) ** 2, axis=0)
  method = weighting.get('mgda')
  vg = jax.jit(mtl_value_and_grad(None, method, shared=SHARED, mode='rep',
                                  representation_fn=rep, heads_fn=heads))
  losses, grads, weights, _ = vg(params, None, None, X, Y)
  z, pull = jax.vjp(lambda p: rep(p, X, Y), params)
  jac_z = jax.jacrev(heads)(z, params, X, Y)                       # [T, B, H]
  alpha = weighting.combine(method, jac_z, losses).weights
  (shared_grad,) = pull(jnp.tensordot(alpha, jac_z, 1))
  task = jnp.sum(jax.jacrev(heads, argnums=1)(z, params, X, Y)['heads']['v'], axis=0)
  np.testing.assert_allclose(weights, alpha, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(grads['trunk']['w'], shared_grad['trunk']['w'], rtol=2e-4,
                             atol=1e-5)
  np.testing.assert_allclose(grads['heads']['v'], task, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize('mode', ['param', 'gram'])
def test_representation_split_with_stacked_heads_equals_jacrev_and_combine(mode):
  """With representation_fn and heads_fn (head t reading copy t of z, ``stacked_heads``),
  modes 'param' and 'gram' give the whole-network result: jacrev + combine."""
  params = _plain_params()
  rep = lambda p, x, y: jnp.tanh(x @ p['trunk']['w'])
  heads = lambda z_t, p, x, y: jnp.mean(
      (jnp.einsum('tbh,th->bt', z_t, p['heads']['v']) - y) ** 2, axis=0)
  method = weighting.get('upgrad')
  vg = jax.jit(mtl_value_and_grad(_plain_losses, method, shared=SHARED, mode=mode,
                                  representation_fn=rep, heads_fn=heads, stacked_heads=True))
  losses, grads, weights, _ = vg(params, None, None, X, Y)
  jac = jax.jacrev(_plain_losses)(params, X, Y)
  direction, task, alpha, _ = _expected(method, jac['trunk'], jac['heads'], losses, None, None)
  np.testing.assert_allclose(weights, alpha, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(grads['trunk']['w'], direction['w'], rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(grads['heads']['v'], task['v'], rtol=2e-4, atol=1e-5)
  with pytest.raises(ValueError, match='losses_fn is required with stacked_heads'):
    mtl_value_and_grad(None, method, shared=SHARED, representation_fn=rep, heads_fn=heads,
                       stacked_heads=True)


def test_a_nan_loss_keeps_the_state():
  method = weighting.get('uw')
  state = method.init(T)
  vg = jax.jit(mtl_value_and_grad(_plain_losses, method, shared=SHARED))
  y = Y.at[0, 1].set(jnp.nan)
  _, grads, _, new_state = vg(_plain_params(), state, None, X, y)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert not np.all(np.isfinite(grads['trunk']['w']))


def test_bad_input_names_what_is_wrong():
  params = _plain_params()
  ew, pcgrad, uw = (weighting.get(n) for n in ('ew', 'pcgrad', 'uw'))
  with pytest.raises(ValueError, match='shared must be a bool pytree with the structure'):
    mtl_value_and_grad(_plain_losses, ew, shared={'trunk': True})(params, None, None, X, Y)
  with pytest.raises(ValueError, match=r'must return the \[T\] per-task losses'):
    mtl_value_and_grad(lambda p, x, y: jnp.sum(_plain_losses(p, x, y)), ew,
                       shared=SHARED)(params, None, None, X, Y)
  with pytest.raises(ValueError, match='needs a PRNG key'):
    mtl_value_and_grad(_plain_losses, pcgrad, shared=SHARED)(params, None, None, X, Y)
  with pytest.raises(ValueError, match='made for 2 tasks but there are 3'):
    mtl_value_and_grad(_plain_losses, uw, shared=SHARED)(params, uw.init(2), None, X, Y)
  with pytest.raises(ValueError, match="after_step='manual'"):
    mtl_value_and_grad(_plain_losses, weighting.get('famo'), shared=SHARED)
