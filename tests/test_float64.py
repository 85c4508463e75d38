"""Float64: G and every Gram solver and method in float64 under ``jax_enable_x64``, against
tight scipy/NumPy references at 1e-9, and no promotion of float32 inputs.

x64 is switched on only inside the tests (``jax.enable_x64(True)`` as a context manager),
so it does not leak into other tests sharing the process. Every method runs on four T = 5
problems through one jitted, vmapped ``weighting.combine`` per method list (one compilation):
full rank; rank-deficient (two identical rows and a colinear one, rank 3); strongly conflicting
(two gradients at cosine -0.999); low rank (rank 3 < T, random). References: scipy's NNLS on
a factor of G (exact active set) for MGDA and the UPGrad/DualProj projections, SLSQP followed
by a Levenberg-Marquardt solve of the KKT equations for CAGrad, L-BFGS-B followed by
Levenberg-Marquardt on alpha (G alpha) = 1 for Nash-MTL, the paper's closed form (from J) for
IMTL-G, NumPy loops for PCGrad, NumPy's eigh for Aligned-MTL. Where the weights are not unique
(rank(G) < T) the directions d = J^T alpha are compared.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import lstsq
from scipy.optimize import least_squares, minimize, nnls

from mtl_jax import weighting
from mtl_jax._src.weighting.methods.pcgrad import pcgrad_orders  # the orders drawn from a key

# References shared with the float32 solver tests (tests/ is on sys.path under pytest).
from test_solvers import cagrad_objective, factor, nash_gram, ref_min_norm, regularised

T = 5
TOL = 1e-9
KEY = jax.random.PRNGKey(11)
NAMES = ('full_rank', 'rank_deficient', 'conflicting', 'low_rank')
METHODS = {                                   # label: (registry name, options)
    'mgda': ('mgda', dict(match_sum=False)),
    'upgrad': ('upgrad', dict(match_sum=False)),
    'upgrad_exact': ('upgrad', dict(match_sum=False, reg_eps=0.0)),
    'dualproj': ('dualproj', dict(match_sum=False)),
    'dualproj_exact': ('dualproj', dict(match_sum=False, reg_eps=0.0)),
    'cagrad': ('cagrad', dict(match_sum=False)),
    'nash_mtl': ('nash_mtl', dict(max_norm=0.0)),
    'imtl_g': ('imtl_g', dict(match_sum=False)),
    'pcgrad': ('pcgrad', {}),
    'aligned_mtl': ('aligned_mtl', {}),
    'gradnorm': ('gradnorm', {}),
}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def problems():
  """Four float64 Jacobians [T, P]."""
  rng = np.random.default_rng(64)
  a, b, c = rng.standard_normal((3, 8))
  v, w1, w2, w3, w4 = np.random.default_rng(0).standard_normal((5, 20))
  jacs = [
      rng.standard_normal((T, 12)) * np.exp(rng.uniform(-1, 1, (T, 1))),
      np.stack([a, a, 2 * a, b, c - b]),
      np.stack([v, -v + 0.05 * w1, w2, 0.5 * w2 + w3, w4]),
      rng.standard_normal((T, 3)) @ rng.standard_normal((3, 12)),
  ]
  width = max(j.shape[1] for j in jacs)         # one shape for vmap: zero-padded columns
  return np.stack([np.pad(j, ((0, 0), (0, width - j.shape[1]))) for j in jacs])


def run_all(jac, losses):
  """Every Gram method through ``combine`` on one problem, plus G and a non-negative QP."""
  out = {'gram': weighting.gram(jac)}
  for label, (name, options) in METHODS.items():
    method = weighting.get(name, **options)
    res = weighting.combine(method, jac, losses, state=method.init(T), key=KEY)
    out[label], out[label + '_direction'] = res.weights, res.direction
  q_mat = out['gram'] + 0.01 * jnp.trace(out['gram']) * jnp.eye(T)
  out['nonneg_qp'] = weighting.solvers.nonneg_qp(q_mat, jac[:, 0] - jac[:, 1])
  return out


@functools.lru_cache(maxsize=None)
def results():
  """(J [4, T, P], losses, {label: [4, ...] float64}) with every dtype checked."""
  jacs = problems()
  losses = np.linspace(0.5, 2.0, T)
  with jax.enable_x64(True):
    out = jax.jit(jax.vmap(run_all, in_axes=(0, None)))(jnp.asarray(jacs), jnp.asarray(losses))
    dtypes = {k: v.dtype for k, v in out.items()}
  assert all(d == jnp.float64 for d in dtypes.values()), dtypes
  return jacs, losses, {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- references

def ref_box_projection(g, lower):
  """argmin_{v >= lower} v^T G v for PSD G: lower + argmin_{x >= 0} ||R (x + lower)||
  (R^T R = G) by NNLS; J^T v is unique even when v is not."""
  r = factor(g)
  x, _ = nnls(r, -r @ lower, maxiter=100 * len(lower))
  return lower + x


def ref_upgrad(g, reg_eps):
  gt = regularised(g, reg_eps=reg_eps)
  return sum(ref_box_projection(gt, np.eye(T)[i] / T) for i in range(T))


def ref_dualproj(g, reg_eps):
  return ref_box_projection(regularised(g, reg_eps=reg_eps), np.full(T, 1 / T))


def ref_cagrad_w(g, c):
  """argmin_{w in simplex} b^T w + k ||J^T w||: SLSQP, then the KKT equations on its support
  (b + k G w / ||J^T w|| = lambda, sum w = 1) solved by Levenberg-Marquardt."""
  f, grad = cagrad_objective(g, c)
  cons = [{'type': 'eq', 'fun': lambda w: w.sum() - 1, 'jac': lambda w: np.ones(T)}]
  w = minimize(f, np.full(T, 1 / T), jac=grad, bounds=[(0, 1)] * T, constraints=cons,
               method='SLSQP', options=dict(ftol=1e-16, maxiter=1000)).x
  support = w > 1e-7

  def kkt(z):
    ws = np.zeros(T)
    ws[support] = z[:-1]
    return np.append(grad(ws)[support] - z[-1], ws.sum() - 1)

  z = least_squares(kkt, np.append(w[support], grad(w)[support].mean()), method='lm',
                    xtol=1e-15, ftol=1e-15, gtol=1e-15).x
  w = np.zeros(T)
  w[support] = z[:-1]
  return w


def ref_nash(g, eps=1e-5):
  """alpha > 0 with G_eps alpha = 1 / alpha: L-BFGS-B on the convex objective, then
  Levenberg-Marquardt on alpha (G_eps alpha) - 1."""
  ge = nash_gram(g, eps)
  a = minimize(lambda a: 0.5 * a @ ge @ a - np.log(a).sum(), 1 / np.sqrt(np.diag(ge)),
               jac=lambda a: ge @ a - 1 / a, method='L-BFGS-B', bounds=[(1e-12, None)] * T,
               options=dict(ftol=1e-16, gtol=1e-12, maxiter=20000)).x
  return least_squares(lambda a: a * (ge @ a) - 1, a, method='lm', xtol=1e-15, ftol=1e-15,
                       gtol=1e-15).x


def ref_imtl_g(j):
  """The paper's closed form (Liu et al. 2021): D = [g_1 - g_t], U = [u_1 - u_t] (t >= 2),
  alpha_{2:T} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum alpha_{2:T}."""
  u = j / np.linalg.norm(j, axis=1, keepdims=True)
  d_mat, u_mat = j[0] - j[1:], u[0] - u[1:]
  rest = np.linalg.solve((d_mat @ u_mat.T).T, u_mat @ j[0])
  return np.append(1 - rest.sum(), rest)


def ref_pcgrad(j):
  """sum_i g_i^PC by the NumPy projection loop, in the method's random orders."""
  orders = np.asarray(pcgrad_orders(KEY, T))
  total = np.zeros(j.shape[1])
  for i in range(T):
    gi = j[i].copy()
    for k in orders[i]:
      if k != i and gi @ j[k] < 0:
        gi -= gi @ j[k] / (j[k] @ j[k]) * j[k]
    total += gi
  return total


def ref_aligned(g):
  lam, vecs = np.linalg.eigh(g)
  keep = lam > lam.max() * T * np.finfo(np.float64).eps
  balance = np.sqrt(lam[keep].min()) * (vecs[:, keep] / np.sqrt(lam[keep])) @ vecs[:, keep].T
  return balance.sum(1)


def close(d, d_ref, j):
  """||d - d_ref|| <= TOL max(||d_ref||, rms ||g_t|| / T)."""
  floor = np.sqrt(np.mean(np.sum(j * j, axis=1))) / T
  return np.linalg.norm(d - d_ref) <= TOL * max(np.linalg.norm(d_ref), floor)


# ----------------------------------------------------------------------------- tests

def test_dtypes_follow_the_jacobian():
  """float32 J: float32 G, weights and directions, with or without x64 (no promotion);
  float64 J under x64: float64 throughout (checked on the traced shapes: no compilation)."""
  def dtypes(jac):
    def run(j):
      out = {'gram': weighting.gram(j)}
      for label, (name, options) in METHODS.items():
        method = weighting.get(name, **options)
        res = weighting.combine(method, j, jnp.ones(T, j.dtype), state=method.init(T), key=KEY)
        out[label], out[label + '_direction'] = res.weights, res.direction
      return out
    return {k: v.dtype for k, v in jax.eval_shape(run, jac).items()}

  jac = np.random.default_rng(0).standard_normal((T, 7))
  f32, f64 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)
  flag = jax.config.jax_enable_x64
  with jax.enable_x64(False):
    assert set(dtypes(jnp.asarray(jac, jnp.float32)).values()) == {f32}
  with jax.enable_x64(True):
    assert set(dtypes(jnp.asarray(jac, jnp.float32)).values()) == {f32}
    low = dtypes(jnp.asarray(jac, jnp.bfloat16))    # G, alpha in float32; d like J
    assert {v for k, v in low.items() if not k.endswith('_direction')} == {f32}, low
    assert {v for k, v in low.items() if k.endswith('_direction')} == {jnp.dtype(jnp.bfloat16)}
    assert set(dtypes(jnp.asarray(jac, jnp.float64)).values()) == {f64}
    tree = {'a': jnp.ones((T, 2), jnp.bfloat16), 'b': jnp.ones((T, 3), jnp.float64)}
    assert weighting.gram(tree).dtype == jnp.float64
    assert weighting.gram({'a': jnp.ones((T, 2), jnp.float16)}).dtype == jnp.float32
  assert jax.config.jax_enable_x64 == flag     # the context managers restored the flag


def test_gram_is_float64_and_exact():
  jacs, _, out = results()
  for j, g in zip(jacs, out['gram']):
    np.testing.assert_allclose(g, j @ j.T, rtol=1e-14, atol=1e-14 * np.trace(j @ j.T))


def test_problems_are_what_they_say():
  jacs, _, _ = results()
  assert [np.linalg.matrix_rank(j) for j in jacs] == [5, 3, 5, 3]
  g = jacs[2] @ jacs[2].T
  assert g[0, 1] / np.sqrt(g[0, 0] * g[1, 1]) < -0.999


def test_mgda_min_norm_matches_nnls():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    g = j @ j.T
    w, w_ref = out['mgda'][i], ref_min_norm(g)
    assert w.min() >= 0 and abs(w.sum() - 1) <= TOL
    assert close(w @ j, w_ref @ j, j), NAMES[i]
    assert close(out['mgda_direction'][i], w_ref @ j, j), NAMES[i]
    if NAMES[i] in ('full_rank', 'conflicting'):  # unique weights
      np.testing.assert_allclose(w, w_ref, atol=TOL)


@pytest.mark.parametrize('label', ['upgrad', 'upgrad_exact', 'dualproj', 'dualproj_exact'])
def test_upgrad_and_dualproj_match_nnls_projections(label):
  jacs, _, out = results()
  reg_eps = 0.0 if label.endswith('exact') else 1e-4
  ref = ref_upgrad if label.startswith('upgrad') else ref_dualproj
  for i, j in enumerate(jacs):
    alpha, alpha_ref = out[label][i], ref(j @ j.T, reg_eps)
    assert close(alpha @ j, alpha_ref @ j, j), (label, NAMES[i])
    assert close(out[label + '_direction'][i], alpha_ref @ j, j), (label, NAMES[i])
    if reg_eps:                                  # G~ is definite: unique weights
      np.testing.assert_allclose(alpha, alpha_ref, rtol=TOL, atol=TOL * alpha_ref.max())
    else:                                        # the exact projection is in the dual cone
      assert np.all(j @ (alpha @ j) >= -TOL * np.sum(j * j)), (label, NAMES[i])


def test_reg_eps_moves_upgrad_on_strongly_conflicting_gradients():
  """The documented effect of the default ridge: on the conflicting problem (cosine -0.999)
  the default reg_eps = 1e-4 moves d by 20-40% from the exact projection (reg_eps = 0), on the
  full-rank one by < 1e-3."""
  jacs, _, out = results()
  for label in ('upgrad', 'dualproj'):
    d, d_exact = out[label + '_direction'], out[label + '_exact_direction']
    moved = [np.linalg.norm(d[i] - d_exact[i]) / np.linalg.norm(d_exact[i]) for i in (0, 2)]
    assert moved[0] < 1e-3 and 0.2 < moved[1] < 0.4, (label, moved)


def test_cagrad_matches_scipy():
  """The default method (c = 0.4, rescale 1): alpha = (1/T + c ||g0|| / ||g_w|| w) / (1 + c^2),
  whence w (on the simplex) from alpha (1 + c^2) - 1/T."""
  jacs, _, out = results()
  c = 0.4
  for i, j in enumerate(jacs):
    g = j @ j.T
    w = out['cagrad'][i] * (1 + c**2) - 1 / T
    w, w_ref = w / w.sum(), ref_cagrad_w(g, c)
    f, _ = cagrad_objective(g, c)
    assert w.min() >= 0 and abs(w.sum() - 1) <= TOL
    assert f(w) <= f(w_ref) + TOL * abs(f(w_ref)), NAMES[i]
    assert close(w @ j, w_ref @ j, j), NAMES[i]
    g0, gw = j.mean(0), w_ref @ j                 # d = (g0 + c ||g0|| g_w / ||g_w||) / (1 + c^2)
    d_ref = (g0 + c * np.linalg.norm(g0) * gw / np.linalg.norm(gw)) / (1 + c**2)
    assert close(out['cagrad_direction'][i], d_ref, j), NAMES[i]


def test_nash_mtl_solves_the_bargaining_equations():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    alpha, alpha_ref = out['nash_mtl'][i], ref_nash(j @ j.T)
    np.testing.assert_allclose(alpha * (nash_gram(j @ j.T, 1e-5) @ alpha), 1, rtol=TOL)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=TOL, err_msg=NAMES[i])


def test_imtl_g_matches_the_closed_form():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    g = j @ j.T
    if np.linalg.matrix_rank(j) == T:            # the paper's form needs D U^T invertible
      alpha_ref = ref_imtl_g(j)
    else:                                        # min-norm solution of G a = sqrt(diag G)
      raw = lstsq(g, np.sqrt(np.diag(g)), cond=1e-10)[0]
      alpha_ref = raw / raw.sum()
    alpha = out['imtl_g'][i]
    np.testing.assert_allclose(alpha, alpha_ref, rtol=TOL, atol=TOL * np.abs(alpha_ref).max(),
                               err_msg=NAMES[i])
    if NAMES[i] != 'low_rank':                  # sqrt(diag G) in the range of G:
      projections = j @ (alpha @ j) / np.linalg.norm(j, axis=1)   # equal on every unit g_t
      np.testing.assert_allclose(projections, projections.mean(), rtol=TOL, err_msg=NAMES[i])


def test_pcgrad_matches_the_numpy_projections():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    assert close(out['pcgrad_direction'][i], ref_pcgrad(j), j), NAMES[i]


def test_aligned_mtl_matches_numpy_eigh():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    alpha_ref = ref_aligned(j @ j.T)
    assert close(out['aligned_mtl'][i] @ j, alpha_ref @ j, j), NAMES[i]


def test_nonneg_qp_matches_nnls():
  jacs, _, out = results()
  for i, j in enumerate(jacs):
    g = j @ j.T
    q_mat, q = g + 0.01 * np.trace(g) * np.eye(T), j[:, 0] - j[:, 1]
    r = np.linalg.cholesky(q_mat).T
    x_ref = nnls(r, -np.linalg.solve(r.T, q), maxiter=100 * T)[0]
    np.testing.assert_allclose(out['nonneg_qp'][i], x_ref, rtol=TOL, atol=TOL * x_ref.max())


def ill_conditioned(num=8, count=16):
  """Gram matrices with gradient norms over e^4 and, for half, g_1 = -0.98 g_0 + noise."""
  rng = np.random.default_rng(num)
  jacs = []
  for i in range(count):
    p = [num + 3, 4 * num, num - 2, num // 2][i % 4]
    j = rng.standard_normal((num, p)) * np.exp(rng.uniform(-2, 2, (num, 1)))
    if i >= count // 2:
      j[1] = -0.98 * j[0] + 0.02 * rng.standard_normal(p)
    jacs.append(j)
  return [j @ j.T for j in jacs]


def test_quadratic_programs_are_exact_on_ill_conditioned_problems(x64):
  """The active-set polish makes MGDA and UPGrad exact (1e-9) where FISTA stops short (T = 8,
  gradient norms spread over e^4, nearly opposite pairs, rank(G) < T for half)."""
  grams = ill_conditioned()
  solve = lambda g: (weighting.solvers.min_norm_simplex(g), weighting.solvers.upgrad_weights(g))
  out = jax.tree.map(np.asarray, jax.jit(jax.vmap(solve))(jnp.asarray(np.stack(grams))))
  for i, g in enumerate(grams):
    w, w_ref = out[0][i], ref_min_norm(g)
    scale = max(np.sqrt(max(w_ref @ g @ w_ref, 0)), np.sqrt(np.trace(g) / len(g)))
    assert np.sqrt(max((w - w_ref) @ g @ (w - w_ref), 0)) <= TOL * scale, i
    gt = regularised(g)
    alpha_ref = sum(ref_box_projection(gt, np.eye(len(g))[k] / len(g)) for k in range(len(g)))
    np.testing.assert_allclose(out[1][i], alpha_ref, rtol=TOL, atol=TOL * alpha_ref.max())


def test_gradnorm_state_and_weights_are_float64(x64):
  """Two updates in float64 against the hand computation (Adam's first step:
  -lr g / (|g| + 1e-8) on s, the gradient of L_grad)."""
  j = jnp.asarray(problems()[0])
  method = weighting.get('gradnorm', alpha=1.5, lr=0.1)
  state = method.init(T)
  assert state['s'].dtype == jnp.float64
  losses0, losses1 = np.linspace(1.0, 3.0, T), np.linspace(0.5, 2.0, T)
  step = jax.jit(lambda l, s: weighting.combine(method, j, l, state=s))
  w0, state = step(jnp.asarray(losses0), state)[1:3]
  w1 = step(jnp.asarray(losses1), state)[1]
  assert w1.dtype == jnp.float64 and state['s'].dtype == jnp.float64
  np.testing.assert_allclose(w0, 1.0, rtol=1e-15)
  norms = np.linalg.norm(np.asarray(j), axis=1)
  ds = norms * np.sign(norms - norms.mean())              # dL_grad/dw_t at w = 1, r = 1
  ds = ds - ds.mean()                                      # through w = T softmax(s), s = 0
  s1 = -0.1 * ds / (np.abs(ds) + 1e-8)
  np.testing.assert_allclose(w1, T * np.exp(s1) / np.exp(s1).sum(), rtol=1e-12)
