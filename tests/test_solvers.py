"""Weighting solvers against scipy references computed here in float64.

Every solver runs on a batch of B = 8 problems per size T through one jitted, vmapped
function (one compilation per T). References: ``scipy.optimize.nnls`` (exact active set) for
the quadratic programs, ``minimize`` (SLSQP) for CAGrad and (L-BFGS-B) for Nash-MTL, all on
the same float32 Gram matrix upcast to float64. Where rank(G) < T the minimiser need not be
unique, so those cases compare objective values and directions J^T w (in the G-norm).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from mtl_jax import weighting

solvers = weighting.solvers

SIZES = (2, 3, 5, 8, 16)
BATCH = 8
CS = np.array([0.2, 0.4, 0.5, 0.9, 0.4, 0.5, 0.9, 0.2])
TOL = 1e-4


def solve_all(g, c, eps, pref, q, extras=False):
  """Every solver on one problem (vmapped over the batch below)."""
  num = g.shape[0]
  q_mat = g + (0.1 * jnp.trace(g) / num + 1e-3) * jnp.eye(num)
  cagrad = solvers.cagrad_weights(g, c)
  out = {
      'mgda': solvers.min_norm_simplex(g),
      'cagrad': cagrad,
      'cagrad_alpha': solvers.cagrad_alpha(g, c, rescale=1, w=cagrad),
      'nash': solvers.nash_mtl_weights(g, eps=eps),
      'upgrad': solvers.upgrad_weights(g, pref),
      'dualproj': solvers.dualproj_weights(g, pref),
      'nnqp': solvers.nonneg_qp(q_mat, q),
      'q_mat': q_mat,
  }
  if num == 2:
    out['mgda_iterative'] = solvers.min_norm_simplex(g, two_task_closed_form=False)
  if extras:                                 # warm start, defaults, cagrad_alpha's own w
    out['nash_warm'] = solvers.nash_mtl_weights(
        g, out['nash'] * (1.5 + jnp.sin(jnp.arange(num))), eps=eps)
    out['upgrad_default'] = solvers.upgrad_weights(g)
    out['dualproj_default'] = solvers.dualproj_weights(g)
    for rescale in (0, 1, 2):
      out[f'cagrad_alpha_alone_{rescale}'] = solvers.cagrad_alpha(g, c, rescale=rescale)
  return out


batched = jax.jit(jax.vmap(solve_all))
single = jax.jit(functools.partial(solve_all, extras=True))


def random_problems(num, seed=0):
  """B Gram matrices: rows 0-3 full rank (P > T), rows 4-7 rank-deficient (P < T)."""
  rng = np.random.default_rng(100 * num + seed)
  dims = [num + 1, num + 4, 2 * num, 4 * num + 3,
          max(1, num - 1), max(1, num // 2), 1, max(1, num - 2)]
  jacs = [rng.standard_normal((num, p)) * rng.uniform(0.3, 3, (num, 1)) for p in dims]
  return [gram(j) for j in jacs], rng


def gram(jac):
  """float32 G = J J^T (the solvers' input) from a float32 J."""
  jac = np.asarray(jac, np.float32).astype(np.float64)
  return (jac @ jac.T).astype(np.float32)


def inputs(grams, rng, eps=None):
  num = grams[0].shape[0]
  if eps is None:
    eps = np.array([1e-5] * 4 + [1e-3] * 4)       # rank-deficient: float32-resolvable eps
  prefs = np.full((BATCH, num), 1 / num)
  prefs[3] = prefs[7] = rng.uniform(0.2, 1, num)
  qs = rng.standard_normal((BATCH, num))
  return (jnp.asarray(np.stack(grams)), jnp.asarray(CS, jnp.float32),
          jnp.asarray(eps, jnp.float32), jnp.asarray(prefs, jnp.float32),
          jnp.asarray(qs, jnp.float32))


@functools.lru_cache(maxsize=None)
def results(num, scale=1.0):
  grams, rng = random_problems(num)
  args = inputs([scale * g for g in grams], rng)
  out = jax.tree.map(lambda x: np.asarray(x, np.float64), batched(*args))
  return ([g.astype(np.float64) * scale for g in grams], [np.asarray(a, np.float64) for a in args],
          out)


# ----------------------------------------------------------------------------- references

def factor(g):
  """R with R^T R = G (G symmetric PSD)."""
  lam, vec = np.linalg.eigh(g)
  return (vec * np.sqrt(np.maximum(lam, 0))).T


def ref_min_norm(g):
  """argmin_{w in simplex} w^T G w: nnls of [R; 1] x ~ [0; 1], w = x / sum x."""
  num = g.shape[0]
  a = np.vstack([factor(g), np.ones((1, num))])
  b = np.zeros(a.shape[0])
  b[-1] = 1
  x, _ = nnls(a, b, maxiter=100 * num)
  return x / x.sum()


def ref_nonneg_qp(q_mat, q):
  """argmin_{x >= 0} 1/2 x^T Q x + q^T x = argmin ||R x + R^-T q||, Q = R^T R."""
  r = np.linalg.cholesky(q_mat).T
  x, _ = nnls(r, -np.linalg.solve(r.T, q), maxiter=100 * len(q))
  return x


def regularised(g, norm_eps=1e-4, reg_eps=1e-4):
  tr = np.trace(g)
  return (g / tr if tr >= norm_eps else 0 * g) + reg_eps * np.eye(len(g))


def ref_upgrad(g, pref):
  gt = regularised(g)
  rows = [np.eye(len(g))[i] * pref[i] for i in range(len(g))]
  return sum(l + ref_nonneg_qp(gt, gt @ l) for l in rows)


def ref_dualproj(g, pref):
  gt = regularised(g)
  return pref + ref_nonneg_qp(gt, gt @ pref)


def cagrad_objective(g, c):
  num = len(g)
  b = g.mean(axis=1)
  k = c * np.sqrt(max(g.sum(), 0)) / num
  f = lambda w: b @ w + k * np.sqrt(max(w @ g @ w, 0))
  grad = lambda w: b + k * g @ w / np.sqrt(max(w @ g @ w, 1e-300))
  return f, grad


def ref_cagrad(g, c):
  num = len(g)
  f, grad = cagrad_objective(g, c)
  cons = [{'type': 'eq', 'fun': lambda w: w.sum() - 1, 'jac': lambda w: np.ones(num)}]
  res = minimize(f, np.full(num, 1 / num), jac=grad, bounds=[(0, 1)] * num, constraints=cons,
                 method='SLSQP', options=dict(ftol=1e-16, maxiter=1000))
  return res.x


def nash_gram(g, eps):
  """G_eps = G + eps diag(G_tt + 1e-6 tr G / T), as documented by the solver."""
  return g + eps * np.diag(np.diag(g) + 1e-6 * np.trace(g) / len(g))


def ref_nash(g, eps):
  ge = nash_gram(g, eps)
  f = lambda a: 0.5 * a @ ge @ a - np.log(a).sum()
  res = minimize(f, 1 / np.sqrt(np.diag(ge)), jac=lambda a: ge @ a - 1 / a, method='L-BFGS-B',
                 bounds=[(1e-12, None)] * len(g),
                 options=dict(ftol=1e-16, gtol=1e-12, maxiter=20000, maxcor=30))
  return res.x


def g_norm(g, v):
  """||J^T v|| from G."""
  return np.sqrt(max(v @ g @ v, 0))


def direction_error(g, w, w_ref):
  """||J^T (w - w_ref)|| relative to max(||J^T w_ref||, the rms gradient norm sqrt(tr G / T));
  the floor matters when 0 is (nearly) in the hull, where float32 resolves ||d|| only to
  about 1e-4 of the gradient scale."""
  return g_norm(g, w - w_ref) / max(g_norm(g, w_ref), np.sqrt(np.trace(g) / len(g)))


# ----------------------------------------------------------------------------- tests

def test_project_to_simplex_matches_sort_reference():
  rng = np.random.default_rng(0)
  for num in (1, 2, 3, 7, 16):
    v = rng.standard_normal((50, num)) * rng.choice([1e-2, 1, 30], (50, 1))
    v[:10] = np.round(v[:10])                      # ties
    w = np.asarray(jax.jit(jax.vmap(solvers.project_to_simplex))(jnp.asarray(v, jnp.float32)))
    for vi, wi in zip(v.astype(np.float32).astype(np.float64), w):
      u = np.sort(vi)[::-1]
      k = np.arange(1, num + 1)
      rho = k[u - (np.cumsum(u) - 1) / k > 0].max()
      expected = np.maximum(vi - (u[:rho].sum() - 1) / rho, 0)
      np.testing.assert_allclose(wi, expected, atol=1e-6 * max(1, np.abs(vi).max()))
      assert wi.min() >= 0 and abs(wi.sum() - 1) < 1e-5


@pytest.mark.parametrize('num', SIZES)
def test_min_norm_simplex_matches_scipy(num):
  grams, _, out = results(num)
  for i, g in enumerate(grams):
    w, w_ref = out['mgda'][i], ref_min_norm(g)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-5
    scale = np.trace(g) / num
    assert abs(w @ g @ w - w_ref @ g @ w_ref) <= TOL * (w_ref @ g @ w_ref) + 1e-7 * scale
    assert direction_error(g, w, w_ref) <= TOL, (i, direction_error(g, w, w_ref))
    if i < 4:                                      # full rank: unique weights
      np.testing.assert_allclose(w, w_ref, atol=TOL)
  if num == 2:                                     # closed form = the iterative solver
    np.testing.assert_allclose(out['mgda'], out['mgda_iterative'], atol=1e-5)


@pytest.mark.parametrize('num', SIZES)
def test_nonneg_qp_matches_scipy(num):
  _, args, out = results(num)
  for i in range(BATCH):
    q_mat, q = out['q_mat'][i], args[4][i]
    x, x_ref = out['nnqp'][i], ref_nonneg_qp(q_mat, q)
    assert x.min() >= 0
    assert g_norm(q_mat, x - x_ref) <= TOL * max(g_norm(q_mat, x_ref), 1e-3 * np.abs(q).max())


@pytest.mark.parametrize('num', SIZES)
def test_cagrad_matches_scipy(num):
  grams, _, out = results(num)
  for i, g in enumerate(grams):
    w, w_ref = out['cagrad'][i], ref_cagrad(g, CS[i])
    f, grad = cagrad_objective(g, CS[i])
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-5
    assert f(w) <= f(w_ref) + TOL * abs(f(w_ref)) + 1e-7 * np.trace(g) / num
    assert direction_error(g, w, w_ref) <= TOL, (i, direction_error(g, w, w_ref))
    # KKT in float64: grad_i = lambda on the support, >= lambda off it
    gr = grad(w)
    support = w > 1e-6
    lam = gr[support].mean()
    spread = np.abs(gr).max()
    assert np.abs(gr[support] - lam).max() <= 1e-3 * spread
    assert np.all(gr[~support] - lam >= -1e-3 * spread)
    # the method's coefficients (rescale 1)
    alpha = 1 / num + CS[i] * np.sqrt(g.sum()) / num / g_norm(g, w) * w
    np.testing.assert_allclose(out['cagrad_alpha'][i], alpha / (1 + CS[i]**2), rtol=1e-4)


@pytest.mark.parametrize('num', SIZES)
def test_nash_mtl_matches_scipy(num):
  grams, args, out = results(num)
  for i, g in enumerate(grams):
    eps = args[2][i]
    alpha, alpha_ref = out['nash'][i], ref_nash(g, eps)
    ge = nash_gram(g, eps)
    tol = TOL if i < 4 else 2e-3                   # rank-deficient: eps = 1e-3, float32 limit
    assert alpha.min() > 0
    assert np.abs(alpha * (ge @ alpha) - 1).max() <= tol
    np.testing.assert_allclose(alpha, alpha_ref, rtol=tol)


@pytest.mark.parametrize('num', SIZES)
def test_upgrad_and_dualproj_match_scipy(num):
  grams, args, out = results(num)
  for i, g in enumerate(grams):
    pref = args[3][i]
    gt = regularised(g)
    for name, ref in (('upgrad', ref_upgrad), ('dualproj', ref_dualproj)):
      alpha, alpha_ref = out[name][i], ref(g, pref)
      assert g_norm(gt, alpha - alpha_ref) <= TOL * g_norm(gt, alpha_ref), (name, i)
      if i < 4:
        np.testing.assert_allclose(alpha, alpha_ref, rtol=TOL, atol=TOL * alpha_ref.max())
      assert np.all(alpha >= pref - 1e-6)
      # dual cone: g_j . d >= 0 up to the reg_eps term (KKT: G~ alpha >= 0) and rounding
      slack = 1e-4 * np.trace(g) * alpha + 1e-6 * np.trace(g) * alpha.max()
      assert np.all(g @ alpha >= -slack), (name, i)


def test_scale_invariance_and_covariance():
  num = 5
  grams, _, base = results(num)
  for scale in (1e-3, 1e3):
    _, _, out = results(num, scale)
    for name in ('upgrad', 'dualproj'):
      np.testing.assert_allclose(out[name][:4], base[name][:4], rtol=1e-4, err_msg=name)
      # Rows 4-7 are rank-deficient: G~ has cond ~ 1e4, so float32 resolves the weights to
      # about 1e4 x 1.2e-7 ~ 1e-3 relative (1.2e-4 seen at XLA optimisation level 0).
      for i, g in enumerate(grams):
        gt = regularised(g)
        tol = TOL if i < 4 else 1e-3
        assert g_norm(gt, out[name][i] - base[name][i]) <= tol * g_norm(gt, base[name][i]), (
            name, i)
    for name in ('mgda', 'cagrad'):                # weights unique for full rank only
      np.testing.assert_allclose(out[name][:4], base[name][:4], atol=1e-5, err_msg=name)
      for i, g in enumerate(grams):
        assert direction_error(g, out[name][i], base[name][i]) <= TOL, (name, i)
    # Float32 Newton iterations: on the ill-conditioned problems (weights ~30) rounding alone
    # moves the weights by up to 1.5e-4 relative, depending on XLA's optimisation level.
    np.testing.assert_allclose(out['nash'] * np.sqrt(scale), base['nash'], rtol=3e-4)


def test_per_task_rescaling_covariance_of_nash():
  grams, rng = random_problems(5, seed=1)
  scales = rng.uniform(0.1, 10, (BATCH, 5))
  rescaled = [s[:, None] * g * s[None, :] for s, g in zip(scales, grams)]
  base = batched(*inputs(grams, rng))['nash']
  out = batched(*inputs(rescaled, rng))['nash']
  np.testing.assert_allclose(np.asarray(out)[:4] * scales[:4], np.asarray(base)[:4], rtol=1e-4)


def ref_cagrad_alpha(g, c, w, rescale):
  """CAGrad's alpha = (1/T + c ||g0|| / ||g_w|| w) / (1, 1 + c^2, 1 + c)[rescale] in float64,
  ||g0|| = sqrt(1^T G 1) / T, ||g_w|| = sqrt(w^T G w); no correction if ||g_w||^2 is below
  1e-8 tr G / T."""
  num = len(g)
  gw_sq = max(w @ g @ w, 0)
  big = gw_sq > 1e-8 * np.trace(g) / num
  coef = c * np.sqrt(max(g.sum(), 0)) / num / np.sqrt(gw_sq) if big else 0
  return (1 / num + coef * w) / (1, 1 + c**2, 1 + c)[rescale]


def test_jit_of_one_problem_equals_vmapped_batch():
  grams, args, out = results(5)
  for i in range(4):
    one = jax.tree.map(lambda x: np.asarray(x, np.float64),
                       single(*(jnp.asarray(a[i], jnp.float32) for a in args)))
    assert set(out) <= set(one)
    for name, value in out.items():                # jit of one problem = vmapped batch entry
      np.testing.assert_allclose(one[name], value[i], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(one['nash_warm'], one['nash'], rtol=1e-4)
    g, c, w = grams[i], args[1][i], one['cagrad']
    for rescale in (0, 1, 2):                      # w from cagrad_weights, alpha by the formula
      np.testing.assert_allclose(one[f'cagrad_alpha_alone_{rescale}'],
                                 ref_cagrad_alpha(g, c, w, rescale), rtol=1e-5,
                                 err_msg=f'rescale {rescale}')
    np.testing.assert_allclose(one['cagrad_alpha'], ref_cagrad_alpha(g, c, w, 1), rtol=1e-5)
    if i < 3:                                      # rows 0-2 have the default preference 1/T
      np.testing.assert_allclose(one['upgrad_default'], one['upgrad'], rtol=1e-6)
      np.testing.assert_allclose(one['dualproj_default'], one['dualproj'], rtol=1e-6)


def test_cagrad_alpha_rejects_unknown_rescale():
  with pytest.raises(ValueError, match='rescale'):
    solvers.cagrad_alpha(jnp.eye(3), 0.4, rescale=3)


# ----------------------------------------------------------------------------- degenerate G

def degenerate(num):
  """B degenerate Gram matrices of size T (named), each G = J J^T in float32."""
  rng = np.random.default_rng(7)
  g = rng.standard_normal((4, 6))
  filler = lambda k: [rng.standard_normal(6) for _ in range(k)]
  jacs = {
      'opposite': [g[0], -g[0]] + filler(num - 2),
      'opposite_unequal': [g[0], -2 * g[0]] + filler(num - 2),
      'colinear': [g[1], 3 * g[1]] + filler(num - 2),
      'zero_row': [g[2], 0 * g[2]] + filler(num - 2),
      'all_zero': [0 * g[0]] * num,
      'rank_one': [(t + 1) * (-1) ** t * g[3] for t in range(num)],
      'huge': [1e12 * v for v in [g[0], g[1]] + filler(num - 2)],
      'identical': [g[1]] * num,
  }
  return list(jacs), [gram(np.stack(j)) for j in jacs.values()]


@pytest.mark.parametrize('num', (2, 3, 5))
def test_degenerate_gram_matrices_give_finite_sensible_weights(num):
  names, grams = degenerate(num)
  args = inputs(grams, np.random.default_rng(0), eps=np.full(BATCH, 1e-5))
  out = batched(*args)
  chex.assert_tree_all_finite(out)
  out = jax.tree.map(lambda x: np.asarray(x, np.float64), out)
  for i, (name, g) in enumerate(zip(names, grams)):
    g = g.astype(np.float64)
    scale = np.trace(g) / num
    w = out['mgda'][i]
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-5, name
    assert out['nash'][i].min() > 0, name
    for key in ('upgrad', 'dualproj'):
      assert np.all(out[key][i] >= np.asarray(args[3][i]) - 1e-6), (key, name)
    assert out['cagrad'][i].min() >= 0 and abs(out['cagrad'][i].sum() - 1) < 1e-5, name
    # min norm: the (possibly zero) min-norm point of the hull
    if name in ('opposite', 'opposite_unequal', 'zero_row', 'rank_one'):
      assert g_norm(g, w) <= 1e-4 * np.sqrt(scale), name        # 0 is in the hull
    if name == 'all_zero':
      for key in ('mgda', 'cagrad', 'upgrad', 'dualproj'):
        np.testing.assert_allclose(out[key][i], np.full(num, 1 / num), atol=1e-6)
      np.testing.assert_allclose(out['nash'][i], np.ones(num))
  if num == 2:
    np.testing.assert_allclose(out['mgda'][names.index('opposite')], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(out['mgda'][names.index('opposite_unequal')], [2 / 3, 1 / 3],
                               atol=1e-6)
    np.testing.assert_allclose(out['mgda'][names.index('colinear')], [1, 0], atol=1e-6)
    np.testing.assert_allclose(out['mgda'][names.index('zero_row')], [0, 1], atol=1e-6)
    np.testing.assert_allclose(out['cagrad'][names.index('opposite')], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(out['cagrad_alpha'][names.index('opposite')],
                               np.full(2, 0.5 / (1 + CS[0]**2)), rtol=1e-6)
    unique = [names.index(n) for n in ('opposite', 'opposite_unequal', 'colinear', 'zero_row')]
    np.testing.assert_allclose(out['mgda_iterative'][unique], out['mgda'][unique], atol=1e-5)
