"""Bilevel task weighting (Auto-Lambda, MOML, FORUM): exact hypergradients against finite
differences of the virtual step written here, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import mtl_value_and_grad, weighting

T, B, D, H = 3, 8, 4, 3
ETA = 0.3


def _problem(dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w1': rng.normal(size=(D, H)).astype(dtype),
            'heads': rng.normal(size=(T, H)).astype(dtype)}
  x = rng.normal(size=(B, D)).astype(dtype)
  y = rng.normal(size=(B, T)).astype(dtype)
  return params, x, y


def losses_fn(params, x, y):
  z = jnp.tanh(x @ params['w1'])
  return jnp.mean((z @ params['heads'].T - y) ** 2, axis=0)


SHARED = {'w1': True, 'heads': False}


def _virtual(params, x, y, logits):
  """theta - eta grad sum_t softmax(w)_t L_t(theta) on the inner half (first B/2 rows)."""
  lam = jnp.exp(logits - logits.max()) / jnp.exp(logits - logits.max()).sum()
  grads = jax.grad(lambda p: jnp.dot(lam, losses_fn(p, x[:B // 2], y[:B // 2])))(params)
  return jax.tree.map(lambda p, g: p - ETA * g, params, grads)


def _outer_losses(params, x, y, logits):
  return np.asarray(losses_fn(_virtual(params, x, y, logits), x[B // 2:], y[B // 2:]))


def _finite_difference(fn, logits, eps=1e-6):
  """[outputs, T] central differences of ``fn`` at ``logits``."""
  cols = [(fn(logits + eps * e) - fn(logits - eps * e)) / (2 * eps) for e in np.eye(T)]
  return np.stack(cols, -1)


def _first_logits(name, params, x, y, **hparams):
  """The logits after one step from w = 0 with outer SGD at lr 1: minus the hypergradient."""
  method = weighting.get(name, inner_lr=ETA, outer_optimizer='sgd', outer_lr=1.0, **hparams)
  vg = jax.jit(mtl_value_and_grad(losses_fn, method, shared=SHARED))
  _, grads, weights, state = vg(params, method.init(T), None, x, y)
  return np.asarray(state.logits), grads, np.asarray(weights)


def test_auto_lambda_hypergradient_equals_finite_differences():
  with jax.enable_x64(True):
    params, x, y = _problem()
    logits, grads, weights = _first_logits('auto_lambda', params, x, y, match_sum=False)
    fd = _finite_difference(lambda w: _outer_losses(params, x, y, w).sum(), np.zeros(T))
    np.testing.assert_allclose(-logits, fd, rtol=1e-6, atol=1e-10)
    lam = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(weights, lam, rtol=1e-10)
    # the parameter step: sum_t lambda_t L_t over the whole batch, heads weighted
    expected = jax.grad(lambda p: jnp.dot(lam, losses_fn(p, x, y)))(params)
    np.testing.assert_allclose(grads['w1'], expected['w1'], rtol=1e-10)
    np.testing.assert_allclose(grads['heads'], expected['heads'], rtol=1e-10)
    primary, _, _ = _first_logits('auto_lambda', params, x, y, primary=(1,))
    fd1 = _finite_difference(lambda w: _outer_losses(params, x, y, w)[1], np.zeros(T))
    np.testing.assert_allclose(-primary, fd1, rtol=1e-6, atol=1e-10)


def test_moml_combines_the_task_hypergradients_by_min_norm():
  with jax.enable_x64(True):
    params, x, y = _problem(seed=1)
    logits, _, _ = _first_logits('moml', params, x, y)
    h = _finite_difference(lambda w: _outer_losses(params, x, y, w), np.zeros(T))
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    # the min-norm point of the unit rows' convex hull, by brute force over a fine simplex grid
    # refined with scipy
    from scipy import optimize  # pylint: disable=import-outside-toplevel
    cons = ({'type': 'eq', 'fun': lambda s: s.sum() - 1},)
    res = optimize.minimize(lambda s: np.sum((s @ unit) ** 2), np.full(T, 1 / T),
                            bounds=[(0, 1)] * T, constraints=cons, method='SLSQP',
                            options={'ftol': 1e-16, 'maxiter': 1000})
    np.testing.assert_allclose(-logits, res.x @ unit, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('name', ['auto_lambda', 'moml'])
def test_bilevel_methods_refuse_what_they_cannot_do(name):
  method = weighting.get(name)
  with pytest.raises(ValueError, match=f"'{name}' is bilevel"):
    weighting.combine(method, np.ones((2 * T, 4)), np.ones(2 * T), state=method.init(T))
  with pytest.raises(ValueError, match=f'{name}: inner_optimizer: unknown optimizer'):
    weighting.get(name, inner_optimizer='sgdd')
  with pytest.raises(ValueError, match=f'{name}: outer_lr must be > 0'):
    weighting.get(name, outer_lr=0.0)


def _forum_by_hand(params, x, y, phi=0.1, inner_lr=0.1, inner_step=3):
  """FORUM's first step written out: per-half Jacobians, the lower-level SGD, the QP by
  SLSQP, and the resulting shared gradient and logits (outer SGD at lr 1 from w = 0)."""
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  half = B // 2
  inner, outer = (x[:half], y[:half]), (x[half:], y[half:])
  jac = lambda part: np.asarray(jax.jacrev(losses_fn)(params, *part)['w1'].reshape(T, -1))
  g_in, g_out = jac(inner), jac(outer)
  lam = np.full(T, 1 / T)
  p = params
  for _ in range(inner_step):
    grads = jax.grad(lambda q: jnp.dot(lam, losses_fn(q, *inner)))(p)
    p = jax.tree.map(lambda a, g: a - inner_lr * g, p, grads)
  delta = (np.diag(lam) - np.outer(lam, lam)) @ (np.asarray(losses_fn(params, *inner))
                                                  - np.asarray(losses_fn(p, *inner)))
  unit = g_out / np.linalg.norm(g_out, axis=1, keepdims=True)
  grad_q = np.concatenate([delta, lam @ g_in])
  rows = np.concatenate([np.zeros((T, T)), unit], axis=1)
  a = np.concatenate([rows, grad_q[None]])
  q2 = grad_q @ grad_q + 1e-8
  pi = phi - rows @ grad_q / q2
  m = a @ a.T
  m[-1, -1] += 1e-8
  cons = [{'type': 'eq', 'fun': lambda w: w[:T].sum() - 1},
          {'type': 'ineq', 'fun': lambda w: w[T] - pi @ w[:T]}]
  res = optimize.minimize(lambda w: w @ m @ w - phi * q2 * w[T], np.full(T + 1, 1 / T),
                          bounds=[(0, None)] * (T + 1), constraints=cons, method='SLSQP',
                          options={'ftol': 1e-16, 'maxiter': 2000})
  w = res.x[:T]
  nu = max(w @ pi, 0)
  return w @ unit + nu * lam @ g_in, -nu * delta, w


def test_forum_step_equals_its_qp_solved_by_scipy():
  with jax.enable_x64(True):
    params, x, y = _problem(seed=2)
    method = weighting.get('forum', inner_step=3, outer_optimizer='sgd', outer_lr=1.0)
    vg = jax.jit(mtl_value_and_grad(losses_fn, method, shared=SHARED, mode='param'))
    _, grads, _, state = vg(params, method.init(T), None, x, y)
    d, logits, w = _forum_by_hand(params, x, y, inner_step=3)
    np.testing.assert_allclose(state.buffer, w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grads['w1']).reshape(-1), d, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.logits.logits, logits, rtol=1e-5, atol=1e-9)
