"""Gradient-based methods against scipy, NumPy re-implementations and their defining properties."""

import inspect
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtl_jax import weighting
from mtl_jax._src import registry  # to unregister a test method
from mtl_jax._src.weighting.methods.pcgrad import pcgrad_orders  # the orders drawn from a key

KEY = jax.random.PRNGKey(3)


def _jac(t, p=20, seed=0):
  return np.random.default_rng(seed).normal(size=(t, p)).astype(np.float32)


def _apply(name, j, losses=None, **hparams):
  method = weighting.get(name, **hparams)
  losses = np.ones(j.shape[0], np.float32) if losses is None else losses
  run = lambda j, l: weighting.combine(method, j, l, state=method.init(j.shape[0]), key=KEY)
  d, w = jax.jit(run)(j, losses)[:2]
  return np.asarray(d, np.float64), np.asarray(w, np.float64)


def _simplex_min(fun, t):
  cons = ({'type': 'eq', 'fun': lambda w: w.sum() - 1},)
  best = None
  for start in [np.full(t, 1 / t)] + [np.eye(t)[i] * 0.9 + 0.1 / t for i in range(t)]:
    res = optimize.minimize(fun, start, bounds=[(0, 1)] * t, constraints=cons, method='SLSQP',
                            options={'ftol': 1e-14, 'maxiter': 1000})
    if best is None or res.fun < best.fun:
      best = res
  return best.x


@pytest.mark.parametrize('t', [2, 3, 6])
@pytest.mark.parametrize('normalization', ['none', 'l2', 'loss', 'loss+'])
def test_mgda_matches_scipy_min_norm(t, normalization):
  j = _jac(t, seed=t)
  losses = np.linspace(0.5, 2.0, t).astype(np.float32)
  d, alpha = _apply('mgda', j, losses, normalization=normalization, match_sum=False)
  norms = np.linalg.norm(j.astype(np.float64), axis=1)
  n = {'none': np.ones(t), 'l2': norms, 'loss': losses, 'loss+': losses * norms}[normalization]
  jn = j / n[:, None]
  w = _simplex_min(lambda w: np.sum((w @ jn) ** 2), t)
  np.testing.assert_allclose(d, w @ jn, rtol=1e-3, atol=1e-4 * np.linalg.norm(w @ jn))
  if normalization == 'none':  # the min-norm point is a common descent direction
    assert np.all(j @ d >= (d @ d) * (1 - 1e-3))
  d_sum, _ = _apply('mgda', j, losses, normalization=normalization)
  np.testing.assert_allclose(d_sum, t * d, rtol=1e-5, atol=1e-6)


def test_pcgrad_matches_numpy_projection():
  t = 5
  j = _jac(t, p=6, seed=1)  # few dimensions: many conflicts
  d, _ = _apply('pcgrad', j)
  orders = np.asarray(pcgrad_orders(KEY, t))
  g = j.astype(np.float64)
  expected = np.zeros(6)
  for i in range(t):
    gi = g[i].copy()
    for jj in orders[i]:
      if jj != i and gi @ g[jj] < 0:
        gi -= gi @ g[jj] / (g[jj] @ g[jj]) * g[jj]
    expected += gi
  np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5)
  d_mean, _ = _apply('pcgrad', j, reduction='mean')
  np.testing.assert_allclose(d_mean, expected / t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('t,c,rescale', [(2, 0.5, 2), (4, 0.4, 1), (7, 0.8, 0)])
def test_cagrad_matches_scipy(t, c, rescale):
  j = _jac(t, seed=10 + t).astype(np.float64)
  g0 = j.mean(0)
  phi = c * np.linalg.norm(g0)
  w = _simplex_min(lambda w: (w @ j) @ g0 + phi * np.linalg.norm(w @ j), t)
  gw = w @ j
  expected = (g0 + phi / np.linalg.norm(gw) * gw) / {0: 1, 1: 1 + c ** 2, 2: 1 + c}[rescale]
  d, _ = _apply('cagrad', j.astype(np.float32), c=c, rescale=rescale, match_sum=False)
  np.testing.assert_allclose(d, expected, rtol=2e-3, atol=2e-4 * np.linalg.norm(expected))


def test_nash_mtl_solves_the_bargaining_equations():
  j = _jac(4, seed=2)
  g = j.astype(np.float64) @ j.T.astype(np.float64)
  _, alpha = _apply('nash_mtl', j, max_norm=0.0)
  np.testing.assert_allclose(alpha * (g @ alpha), 1.0, rtol=1e-3)
  f = lambda a: 0.5 * a @ g @ a - np.log(a).sum()
  ref = optimize.minimize(f, np.ones(4), bounds=[(1e-8, None)] * 4, method='L-BFGS-B',
                          options={'ftol': 1e-15, 'gtol': 1e-12}).x
  np.testing.assert_allclose(alpha, ref, rtol=1e-3)
  d, clipped = _apply('nash_mtl', j, max_norm=1.0)
  np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-4)  # ||d|| = sqrt(T) > 1: clipped
  np.testing.assert_allclose(clipped / alpha, clipped[0] / alpha[0], rtol=1e-5)


def test_nash_mtl_recomputes_only_every_update_every_steps():
  method = weighting.get('nash_mtl', update_every=3, max_norm=0.0)
  state = method.init(3)
  alphas = []
  for step in range(4):
    j = _jac(3, seed=step)
    _, w, state, _ = weighting.combine(method, j, np.ones(3), state=state, step=step)
    alphas.append(np.asarray(w))
  np.testing.assert_array_equal(alphas[1], alphas[0])
  np.testing.assert_array_equal(alphas[2], alphas[0])
  assert not np.allclose(alphas[3], alphas[0])


def test_imtl_g_equalises_projections_on_unit_gradients():
  j = _jac(4, seed=5)
  d, alpha = _apply('imtl_g', j, match_sum=False)
  units = j / np.linalg.norm(j, axis=1, keepdims=True)
  projections = units @ d
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-3)
  np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)


def _box_qp(g, lower):
  res = optimize.minimize(lambda v: v @ g @ v, lower + 0.1, jac=lambda v: 2 * g @ v,
                          bounds=[(l, None) for l in lower], method='L-BFGS-B',
                          options={'ftol': 1e-15, 'gtol': 1e-12, 'maxiter': 10000})
  return res.x


@pytest.mark.parametrize('t', [3, 6])
def test_upgrad_and_dualproj_match_scipy_and_lie_in_the_dual_cone(t):
  j = _jac(t, p=8, seed=20 + t).astype(np.float64)
  g = j @ j.T
  gt = g / np.trace(g) + 1e-4 * np.eye(t)
  upgrad_ref = sum(_box_qp(gt, np.eye(t)[i] / t) for i in range(t))
  dualproj_ref = _box_qp(gt, np.full(t, 1 / t))
  for name, ref in (('upgrad', upgrad_ref), ('dualproj', dualproj_ref)):
    d, alpha = _apply(name, j.astype(np.float32), match_sum=False)
    np.testing.assert_allclose(alpha, ref, rtol=1e-3, atol=1e-5)
    # KKT of the regularised problem: g_i^T d >= -reg_eps tr(G) alpha_i (0 without reg_eps).
    assert np.all(j @ d >= -1e-4 * np.trace(g) * alpha - 1e-5), name


def test_aligned_mtl_balances_the_gradients():
  j = _jac(3, seed=7).astype(np.float64)
  _, alpha = _apply('aligned_mtl', j.astype(np.float32))
  lam, vecs = np.linalg.eigh(j @ j.T)
  balance = np.sqrt(lam.min()) * vecs @ np.diag(lam ** -0.5) @ vecs.T
  np.testing.assert_allclose(alpha, balance.sum(1), rtol=1e-3)
  # The aligned gradients J^T B are orthogonal with equal norms: B^T G B = lambda_min I.
  np.testing.assert_allclose(balance.T @ (j @ j.T) @ balance, lam.min() * np.eye(3), atol=1e-8)


def test_gradnorm_first_update_matches_a_hand_computation():
  j = _jac(3, seed=9).astype(np.float64)
  method = weighting.get('gradnorm', alpha=1.5, lr=0.1)
  state = method.init(3)
  losses0 = np.array([1.0, 2.0, 4.0], np.float32)
  _, w0, state, _ = weighting.combine(method, j.astype(np.float32), losses0, state=state)
  np.testing.assert_allclose(w0, 1.0)
  losses1 = np.array([0.5, 1.8, 2.0], np.float32)
  _, w1, state, _ = weighting.combine(method, j.astype(np.float32), losses1, state=state)
  # By hand: at step 0, L(0) = losses0 and r = 1, so every G_t's target is mean(G).
  norms = np.linalg.norm(j, axis=1)
  gw = norms  # w = 1
  sign = np.sign(gw - gw.mean())
  dw = norms * sign                        # d L_grad / d w_t
  softmax = np.full(3, 1 / 3)
  ds = 3 * softmax * (dw - softmax @ dw)   # through w = T softmax(s)
  s1 = -0.1 * np.sign(ds)                  # Adam's first step is lr * sign(grad)
  np.testing.assert_allclose(w1, 3 * np.exp(s1) / np.exp(s1).sum(), rtol=1e-4)


GRADIENT_METHODS = ['mgda', 'pcgrad', 'cagrad', 'nash_mtl', 'imtl_g', 'upgrad', 'dualproj',
                    'aligned_mtl', 'gradnorm']


def _method(name):
  """The method with the hyperparameters a test needs to build it (an epoch length)."""
  return weighting.get(name, **({'steps_per_epoch': 1} if name in ('dwa', 'forum') else {}))


# Bilevel methods step the parameters on the batch's loss function: tests/test_bilevel.py.
COMBINABLE = [n for n in weighting.names() if not _method(n).bilevel]


@pytest.mark.parametrize('name', COMBINABLE)
def test_degenerate_gradients_give_no_nan_and_methods_vmap(name):
  """A zero gradient, a colinear pair, an opposite pair, all zeros; vmapped over the cases.
  A method reading k sub-batches gets the same rows from each; a direct one's direction is
  its own (not alpha^T J) and its weights may be NaN (none exist)."""
  g = _jac(1, p=5, seed=4)[0]
  cases = np.stack([np.stack([g, np.zeros(5), 2 * g]), np.stack([g, 3 * g, g]),
                    np.stack([g, -g, g]), np.zeros((3, 5))]).astype(np.float32)
  method = _method(name)
  k = method.sub_batches
  cases = np.concatenate([cases] * k, axis=1)
  losses = np.tile(np.array([1.0, 0.5, 2.0], np.float32), k)
  state = (method.init(3, np.zeros(5, np.float32)) if method.state_like_params
           else method.init(3))
  run = lambda j: weighting.combine(method, j, losses, state=state, key=KEY,
                                    after_step='manual')[:2]
  d, w = jax.jit(jax.vmap(run))(cases)
  chex.assert_tree_all_finite(d if method.direct else (d, w))
  for k in range(len(cases)):  # vmapped results equal one-by-one results
    d_k, w_k = jax.jit(run)(cases[k])
    # CAGrad's w* is not unique for the colinear case (every w with the same g_w = J^T w
    # is optimal): there only the direction is compared.
    if (name, k) != ('cagrad', 1):
      np.testing.assert_allclose(w[k], w_k, rtol=1e-4, atol=1e-4, err_msg=f'weights, case {k}')
    np.testing.assert_allclose(d[k], d_k, rtol=1e-4, atol=1e-4)  # |g| ~ 2
    if not method.direct:  # float32 sums: the error scales with the weights (FairGrad's
      # are large where no solution exists, e.g. for an opposite pair)
      scale = max(1.0, float(np.abs(w_k).max()))
      np.testing.assert_allclose(d_k, np.asarray(w_k) @ cases[k], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize('name', GRADIENT_METHODS)
def test_gradient_methods_need_two_tasks(name):
  with pytest.raises(ValueError, match=f"'{name}' needs at least 2 tasks"):
    weighting.combine(weighting.get(name), _jac(1), np.ones(1), key=KEY)


METHODS_DIR = pathlib.Path(weighting.__file__).parent / '_src' / 'weighting' / 'methods'


def _documented_args(doc):
  """The parameter names of a Google-style docstring's ``Args:`` section."""
  match = re.search(r'^Args:\n(.*?)(?:^\S|\Z)', doc, re.M | re.S)
  assert match, 'no Args: section'
  return re.findall(r'^  (\w+):', match.group(1), re.M)


def test_every_method_module_registers_one_documented_builder():
  """One module per method, named after its registry key; builders documented, defaulted."""
  modules = {p.stem for p in METHODS_DIR.glob('*.py') if p.stem != '__init__'}
  assert len(modules) >= 16
  assert set(weighting.names()) == modules
  for name in weighting.names():
    builder = getattr(weighting, name)
    assert builder.__name__ == name and builder.__module__.endswith(f'.methods.{name}'), name
    assert name in weighting.__all__
    doc = inspect.getdoc(builder)
    assert re.search(r'\((19|20)\d\d\)', doc), f'{name}: no paper (year) in the docstring'
    hparams = weighting.hyperparameters(name)
    assert _documented_args(doc) == list(hparams), name
    for param in inspect.signature(builder).parameters.values():
      assert param.default is not inspect.Parameter.empty, (name, param.name)
      assert param.annotation is not inspect.Parameter.empty, (name, param.name)
      assert not isinstance(param.annotation, str), (name, param.name)
    method = _method(name)
    assert isinstance(method, weighting.Weighting) and method.name == name


def test_weighting_sources_are_self_contained():
  """No pointers to notes outside the repository (the docstrings carry the formulas)."""
  for path in METHODS_DIR.parent.rglob('*.py'):
    assert not re.search(r'\breference|shared/', path.read_text(), re.I), path


def test_registry_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"unknown weighting method 'mgdaa'; available: \["):
    weighting.get('mgdaa')
  with pytest.raises(ValueError, match=r"weighting 'ew': unknown hyperparameter\(s\) "
                                       r"\['reduce'\]; allowed: \['reduction'\]"):
    weighting.get('ew', reduce='mean')
  with pytest.raises(ValueError, match="unknown weighting method 'x'"):
    weighting.hyperparameters('x')


def test_register_adds_a_method_to_the_registry():
  @weighting.register('_test_half')
  def _test_half(scale: float = 0.5) -> weighting.Weighting:
    update = lambda inputs, state, key: weighting.WeightingResult(
        jnp.full(inputs.losses.shape, scale), state)
    return weighting.Weighting('_test_half', weighting.Needs.LOSSES, lambda t: (), update)

  try:
    assert '_test_half' in weighting.names()
    assert weighting.hyperparameters('_test_half') == {'scale': 0.5}
    d, w = weighting.combine(weighting.get('_test_half', scale=2.0), _jac(3), np.ones(3))[:2]
    np.testing.assert_allclose(w, 2.0)
    np.testing.assert_allclose(d, 2.0 * _jac(3).sum(0), rtol=1e-6)
  finally:  # unregister (the registry has no public removal)
    del registry.WEIGHTINGS._builders['_test_half']  # pylint: disable=protected-access


@pytest.mark.parametrize('name', ['pcgrad', 'rlw'])
def test_random_methods_need_a_key(name):
  method = weighting.get(name)
  assert method.random
  with pytest.raises(ValueError, match=f"weighting '{name}' is random: combine needs a PRNG key"):
    weighting.combine(method, _jac(3), np.ones(3))
  with pytest.raises(ValueError, match=f"'{name}' is random: as_optax needs a PRNG key"):
    weighting.as_optax(method, num_tasks=3)
  d, w = weighting.combine(method, _jac(3), np.ones(3), key=KEY)[:2]
  chex.assert_tree_all_finite((d, w))


def test_deterministic_methods_need_no_key():
  randoms = {name for name in weighting.names() if _method(name).random}
  assert randoms == {'pcgrad', 'rlw', 'gradvac', 'graddrop', 'random'}
  j = _jac(3)
  method = weighting.get('mgda')
  d, w = weighting.combine(method, j, np.ones(3))[:2]
  d_key, w_key = weighting.combine(method, j, np.ones(3), key=KEY)[:2]
  np.testing.assert_array_equal(w, w_key)
  np.testing.assert_allclose(d, np.asarray(w) @ j, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(d, d_key)
  tx = weighting.as_optax(method, num_tasks=3)
  update, _ = tx.update(jnp.asarray(j), tx.init(None), losses=jnp.ones(3))
  np.testing.assert_allclose(update, d, rtol=1e-6)
