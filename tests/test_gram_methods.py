"""Gram methods (GradVac, FairGrad, ConFIG, Krum, PCD) against NumPy or scipy
re-implementations of their papers' formulas written here on the Jacobian rows (not the
Gramian), over several consecutive steps (state included), TorchJD's published values,
invariances, degenerate inputs and bad hyperparameters."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtl_jax import weighting
from mtl_jax._src.weighting.methods.gradvac import gradvac_orders  # orders drawn from a key

KEY = jax.random.PRNGKey(3)
STEPS = 4
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)   # TorchJD's test matrices
J_KRUM = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0], [1.0, 2.0, 3.0],
                   [2.0, 0.0, 1.0]], np.float32)


def _run(method, js, losses=None, key=KEY):
  """``combine`` on consecutive steps js [S, T, P] (a leading case axis is vmapped), one key
  for every step.  Returns (directions [S, P], weights [S, T], states, finite [S])."""
  def steps(js):
    def step(state, j):
      out = weighting.combine(method, j, jnp.ones(j.shape[0]), state=state, key=key)
      return out.state, (out.direction, out.weights, out.state, out.finite)
    return jax.lax.scan(step, method.init(js.shape[1]), js)[1]
  run = steps if js.ndim == 3 else jax.vmap(steps)
  return jax.tree.map(np.asarray, jax.jit(run)(jnp.asarray(js, jnp.float32)))


def _cases(t, p=10, steps=STEPS, seed=0):
  """[C, S, T, P]: conflicting (random, rows of different scales), rank 2 and one zero row,
  drifting over the steps."""
  rng = np.random.default_rng(seed + 10 * t)
  normal = lambda *shape: rng.normal(size=shape)
  scales = rng.uniform(0.3, 3.0, size=(1, t, 1))
  random = (normal(t, p) + 0.3 * normal(steps, t, p)) * scales
  rank2 = normal(steps, t, 2) @ (normal(2, p) + 0.3 * normal(steps, 2, p))
  zero_row = normal(t, p) + 0.3 * normal(steps, t, p)
  zero_row[:, -1] = 0
  return np.stack([random, rank2, zero_row]).astype(np.float32)


def _close(actual, expected, rtol=2e-4, atol=2e-5):
  scale = max(np.max(np.abs(expected)), 1.0)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------------------------- GradVac

def _gradvac_np(js, orders, beta=0.5, eps=1e-8):
  """The paper's Algorithm 1 on the gradient vectors, whole model, consecutive steps."""
  t = js.shape[1]
  phi_hat, out = np.zeros((t, t)), []
  for j in js.astype(np.float64):
    pc = []
    for i in range(t):
      g = j[i].copy()
      for k in orders[i]:
        if k == i:
          continue
        gk = j[k]
        nk, ni = np.linalg.norm(gk), np.linalg.norm(g)
        phi = g @ gk / (ni * nk + eps) if ni * nk > 0 else 0.0
        target = phi_hat[i, k]
        if phi < target:
          num = ni * (target * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - target ** 2))
          den = nk * np.sqrt(1 - target ** 2) + eps
          g = g + (num / den if den > 0 else 0.0) * gk
        phi_hat[i, k] = (1 - beta) * target + beta * phi
      pc.append(g)
    out.append(np.sum(pc, axis=0))
  return np.array(out)


@pytest.mark.parametrize('t,beta', [(2, 0.5), (4, 0.5), (4, 0.05), (5, 1.0)])
def test_gradvac_matches_numpy_over_steps(t, beta):
  js = _cases(t)
  d, _, state, finite = _run(weighting.get('gradvac', beta=beta), js)
  orders = np.asarray(gradvac_orders(KEY, t))
  assert finite.all()
  for c in range(len(js)):
    _close(d[c], _gradvac_np(js[c], orders, beta=beta), rtol=1e-3, atol=1e-4)
  assert np.all(np.abs(state['phi_hat']) <= 1 + 1e-5)


def test_gradvac_torchjd_values_and_pcgrad_on_the_first_step():
  method = weighting.get('gradvac')
  out = weighting.combine(method, J_BASE, np.ones(2), state=method.init(2), key=KEY)
  _close(out.direction, [0.5848, 3.8012, 3.8012], atol=1e-4)      # TorchJD's table
  _close(out.weights, [2.2222, 1.5789], atol=1e-4)
  pc = weighting.combine(weighting.get('pcgrad'), J_BASE, np.ones(2), key=KEY)
  _close(out.direction, pc.direction, atol=1e-6)                   # phi_hat = 0: PCGrad


# --------------------------------------------------------------------------------- FairGrad

def _fairgrad_scipy(g, alpha):
  """The authors' solve: least squares of G w - w^(-1/alpha) from 1/T, w in (0, inf)."""
  t = g.shape[0]
  res = optimize.least_squares(lambda w: g @ w - w ** (-1 / alpha), np.full(t, 1 / t),
                               bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
  return res.x


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0])
@pytest.mark.parametrize('t', [2, 5])
def test_fairgrad_solves_the_alpha_fair_system(alpha, t):
  rng = np.random.default_rng(int(alpha * 10) + t)
  for trial in range(3):
    j = rng.normal(size=(t, 3 * t)) * rng.uniform(0.2, 5.0, size=(t, 1))
    g = j @ j.T
    method = weighting.get('fairgrad', alpha=alpha, match_sum=False)
    w = np.asarray(weighting.combine(method, j.astype(np.float32), np.ones(t)).weights)
    expected = _fairgrad_scipy(g, alpha)
    _close(w, expected, rtol=2e-3, atol=1e-5)
    _close(g @ w, w ** (-1 / alpha), rtol=5e-3, atol=1e-5)        # the system itself


@pytest.mark.parametrize('alpha', [0.5, 2.0])
def test_fairgrad_scale_covariance_and_match_sum(alpha):
  j = np.random.default_rng(1).normal(size=(3, 6))
  get = lambda s, ms: np.asarray(weighting.combine(
      weighting.get('fairgrad', alpha=alpha, match_sum=ms), (s * j).astype(np.float32),
      np.ones(3)).weights)
  w = get(1.0, False)
  for s in (0.01, 30.0):            # G -> s^2 G: w -> (s^2)^(-alpha / (alpha + 1)) w
    _close(get(s, False), w * (s * s) ** (-alpha / (alpha + 1)), rtol=2e-3)
  _close(get(1.0, True), 3 * w, rtol=1e-5)


def test_fairgrad_torchjd_values_and_alpha_zero():
  method = weighting.get('fairgrad', alpha=1.0, match_sum=False)
  out = weighting.combine(method, J_BASE, np.ones(2))
  _close(out.weights, [0.5915, 0.4071], atol=2e-4)
  _close(out.direction, [0.0766, 0.9985, 0.9985], atol=2e-4)
  zero = weighting.combine(weighting.get('fairgrad', alpha=0.0, match_sum=False), J_BASE,
                           np.ones(2))
  _close(zero.weights, [0.5, 0.5], atol=1e-7)


# ----------------------------------------------------------------------------------- ConFIG

def _con_fig_np(j, pref=None, rcond=1e-15):
  """Eq. 2 of the paper on the rows: b = pinv(unit rows) w, d = (sum_t g_t . b^) b^."""
  norms = np.linalg.norm(j, axis=1, keepdims=True)
  units = np.divide(j, norms, out=np.zeros_like(j), where=norms > 0)
  w = np.ones(len(j)) if pref is None else np.asarray(pref, float)
  b = np.linalg.pinv(units, rcond=rcond) @ w
  if np.linalg.norm(b) == 0:
    return np.zeros(j.shape[1])
  u = b / np.linalg.norm(b)
  return np.sum(j @ u) * u


@pytest.mark.parametrize('t,pref', [(2, None), (3, None), (5, None), (3, (1.0, 2.0, 0.5))])
def test_con_fig_matches_numpy(t, pref):
  js = _cases(t, steps=1)[:, 0]
  method = weighting.get('con_fig', pref_vector=pref)
  for c, j in enumerate(js):
    out = weighting.combine(method, j, np.ones(t))
    # rank 2 (c = 1) with T > 2: float32 rounding leaves singular values ~1e-8 that the
    # Gram form cannot resolve; it drops those below sqrt(10 T eps) of the largest
    rcond = 1e-3 if c == 1 and t > 2 else 1e-15
    _close(out.direction, _con_fig_np(j.astype(np.float64), pref, rcond), rtol=1e-3, atol=1e-4)


def test_con_fig_equal_angles_and_torchjd_value():
  j = np.random.default_rng(2).normal(size=(4, 9)).astype(np.float32)
  d = np.asarray(weighting.combine(weighting.get('con_fig'), j, np.ones(4)).direction)
  cos = j @ d / (np.linalg.norm(j, axis=1) * np.linalg.norm(d))
  _close(cos, np.full(4, cos.mean()), atol=1e-5)          # the conflict-free direction
  assert cos.min() > 0
  out = weighting.combine(weighting.get('con_fig'), J_BASE, np.ones(2))
  _close(out.direction, [0.1588, 2.0706, 2.0706], atol=1e-4)


def test_con_fig_on_nearly_opposite_gradients_is_their_bisector():
  """cos(g_1, g_2) = -1 + delta: d = ((n_1 + n_2)(1 + c) / |u_1 + u_2|) (u_1 + u_2) / |u_1 + u_2|
  (closed form for two gradients); 0 for exactly opposite ones."""
  for delta in (1e-2, 1e-4):
    theta = np.arccos(-1 + delta)
    u1, u2 = np.array([1.0, 0.0, 0.0]), np.array([np.cos(theta), np.sin(theta), 0.0])
    j = np.stack([2.0 * u1, 0.5 * u2])
    s = u1 + u2
    expected = 2.5 * (1 - 1 + delta) / np.linalg.norm(s) * s / np.linalg.norm(s)
    d = weighting.combine(weighting.get('con_fig'), j.astype(np.float32), np.ones(2)).direction
    np.testing.assert_allclose(d, expected, rtol=2e-2, atol=1e-7)
  opposite = np.array([[1.0, 2.0], [-1.0, -2.0]], np.float32)
  d = weighting.combine(weighting.get('con_fig'), opposite, np.ones(2)).direction
  np.testing.assert_array_equal(d, 0)


def test_con_fig_pref_vector_length_is_checked():
  with pytest.raises(ValueError, match='con_fig: pref_vector has 2 values for 3 tasks'):
    weighting.get('con_fig', pref_vector=(1.0, 2.0)).init(3)


# ------------------------------------------------------------------------------------- Krum

def _krum_np(j, f, m):
  """Blanchard et al.'s scores on the rows; ties to the lower index."""
  t = len(j)
  dist = np.linalg.norm(j[:, None] - j[None], axis=-1)
  scores = [np.sort(np.delete(dist[i], i))[:t - f - 2].sum() for i in range(t)]
  chosen = np.argsort(scores, kind='stable')[:m]
  return j[chosen].mean(0), np.sort(scores)


@pytest.mark.parametrize('t,f,m', [(3, 0, 1), (5, 1, 1), (5, 1, 4), (7, 2, 3), (7, 0, 7)])
def test_krum_matches_numpy(t, f, m):
  rng = np.random.default_rng(t + 10 * f + 100 * m)
  method = weighting.get('krum', n_byzantine=f, n_selected=m)
  for _ in range(5):
    j = rng.normal(size=(t, 6)).astype(np.float32)
    j[rng.integers(t)] *= 50                                 # one adversarial row
    expected, scores = _krum_np(j.astype(np.float64), f, m)
    if m < t and np.isclose(scores[m - 1], scores[m], rtol=1e-4):
      continue                                               # a tie at the cut: skip
    _close(weighting.combine(method, j, np.ones(t)).direction, expected, atol=1e-5)


def test_krum_torchjd_value_and_task_count_checks():
  out = weighting.combine(weighting.get('krum', n_byzantine=1, n_selected=4), J_KRUM,
                          np.ones(5))
  _close(out.weights, [0.25, 0.25, 0.0, 0.25, 0.25], atol=1e-7)
  _close(out.direction, [1.25, 0.75, 1.5], atol=1e-6)
  with pytest.raises(ValueError, match=r'krum: needs at least n_byzantine \+ 3 = 5 tasks, got 4'):
    weighting.get('krum', n_byzantine=2).init(4)
  with pytest.raises(ValueError, match='krum: n_selected = 6 exceeds the 5 tasks'):
    weighting.get('krum', n_selected=6).init(5)


# -------------------------------------------------------------------------------------- PCD

def _pcd_qp_np(gt, taus):
  """min 1/2 ||d - g~_1||^2 s.t. g~_j . d >= tau_j ||g~_j||^2: over every set of active
  constraints with independent gradients, d = g~_1 + G~_A^T mu_A with the active
  constraints tight; the optimum is the one with mu_A >= 0 that satisfies all constraints.
  None when no set does (infeasible)."""
  g1, gs = gt[0], gt[1:]
  rhs = taus * np.sum(gs * gs, axis=1)
  best = None
  for size in range(len(gs) + 1):
    for active in itertools.combinations(range(len(gs)), size):
      a = gs[list(active)]
      if size and np.linalg.matrix_rank(a, tol=1e-8 * np.abs(gs).max()) < size:
        continue
      mu = np.linalg.solve(a @ a.T, rhs[list(active)] - a @ g1) if size else np.zeros(0)
      d = g1 + mu @ a
      if np.all(mu >= -1e-9) and np.all(gs @ d >= rhs - 1e-8 * max(1.0, np.abs(rhs).max())):
        if best is None or np.sum((d - g1) ** 2) < np.sum((best - g1) ** 2) - 1e-12:
          best = d
  return best


def _pcd_np(js, tau=0.02, beta=0.999, eps=1e-8):
  """The paper's update on the rows over consecutive steps (the EMA of squared norms)."""
  t = js.shape[1]
  ema, out = np.zeros(t), []
  taus = np.broadcast_to(np.asarray(tau, float), (t - 1,))
  for n, j in enumerate(js.astype(np.float64), start=1):
    sq = np.sum(j * j, axis=1)
    ema = beta * ema + (1 - beta) * sq
    den = np.sqrt(ema / (1 - beta ** n) + eps)
    gt = j * np.where(den > 0, 1 / den, 0)[:, None]
    d = _pcd_qp_np(gt, taus)
    d = gt[0] if d is None else d
    nd = np.linalg.norm(d)
    out.append(np.zeros(j.shape[1]) if sq[0] == 0 or nd < 1e-9 else d * np.sqrt(sq[0]) / nd)
  return np.array(out)


@pytest.mark.parametrize('t,tau,beta', [(2, 0.02, 0.999), (3, 0.3, 0.9), (4, 0.02, 0.5),
                                        (5, (0.5, 0.0, 1.0, 0.2), 0.999)])
def test_pcd_matches_numpy_over_steps(t, tau, beta):
  js = _cases(t, steps=5)
  js[1, :, 0] *= 0.05              # a primary gradient much shorter than the others
  d, _, state, finite = _run(weighting.get('pcd', tau=tau, beta=beta), js)
  assert finite.all()
  np.testing.assert_array_equal(state['count'], np.arange(1, 6)[None].repeat(len(js), 0))
  sq = np.sum(js.astype(np.float64) ** 2, axis=-1)                 # [C, S, T]
  ema = np.zeros_like(sq[:, 0])
  for s in range(sq.shape[1]):
    ema = beta * ema + (1 - beta) * sq[:, s]
    _close(state['sq_norm_ema'][:, s], ema, rtol=1e-5)
  for c in range(len(js)):
    _close(d[c], _pcd_np(js[c], tau, beta), rtol=2e-3, atol=2e-4)


def test_pcd_guarantees_the_secondary_progress():
  rng = np.random.default_rng(5)
  j = rng.normal(size=(4, 8)).astype(np.float32)
  j[1:] -= 1.5 * j[:1]                             # every secondary conflicts with the first
  tau = 0.3
  out = weighting.combine(weighting.get('pcd', tau=tau), j, np.ones(4),
                          state=weighting.get('pcd').init(4))
  d = np.asarray(out.direction, np.float64)
  units = j / np.linalg.norm(j, axis=1, keepdims=True)     # first step: s_t = 1 / ||g_t||
  d_tilde = d / (float(out.weights[0]) * np.linalg.norm(j[0]))   # alpha_1 = ||g_1|| s_1 / ||d~||
  progress = units[1:] @ d_tilde
  assert np.all(progress >= tau - 1e-4)
  assert np.isclose(progress.min(), tau, atol=1e-4)     # binding: d~ is as close to g~_1 as allowed
  _close(np.linalg.norm(d), np.linalg.norm(j[0]), rtol=1e-5)   # rescaled to ||g_1||


def test_pcd_special_cases():
  method = weighting.get('pcd', tau=0.1)
  g = np.random.default_rng(6).normal(size=(2, 5))
  opposite = np.stack([g[0], g[1], -g[1]]).astype(np.float32)  # infeasible: d = g_1
  out = weighting.combine(method, opposite, np.ones(3), state=method.init(3))
  _close(out.direction, opposite[0], atol=1e-6)
  zero = np.stack([np.zeros(5), g[0], g[1]]).astype(np.float32)  # g_1 = 0: d = 0
  out = weighting.combine(method, zero, np.ones(3), state=method.init(3))
  np.testing.assert_array_equal(out.direction, 0)
  state = method.init(3)
  bad = weighting.WeightingInputs(losses=jnp.ones(3), step=jnp.int32(0),
                                  gram=jnp.full((3, 3), jnp.nan))
  res = method.update(bad, state, None)                        # NaN: state unchanged
  assert np.all(np.isnan(res.weights))
  jax.tree.map(np.testing.assert_array_equal, res.state, state)


def test_pcd_is_invariant_to_a_constant_rescaling_of_a_secondary_task():
  js = _cases(3, steps=4)[0]
  scaled = js.copy()
  scaled[:, 2] *= 40.0
  d, *_ = _run(weighting.get('pcd', tau=0.2, eps=0.0), js)
  d_scaled, *_ = _run(weighting.get('pcd', tau=0.2, eps=0.0), scaled)
  _close(d_scaled, d, rtol=1e-4, atol=1e-5)


def test_pcd_tau_length_is_checked():
  with pytest.raises(ValueError, match=r'pcd: 3 tau values given for 1 secondary tasks'):
    weighting.get('pcd', tau=(0.1, 0.2, 0.3)).init(2)


# ------------------------------------------------------------------------ all five methods

NAMES = ('gradvac', 'fairgrad', 'con_fig', 'krum', 'pcd')


@pytest.mark.parametrize('name', NAMES)
def test_degenerate_inputs_give_finite_directions(name):
  """A zero row, all zeros, identical rows and opposite rows, over steps."""
  g = np.random.default_rng(4).normal(size=5)
  mats = [np.stack([g, np.zeros(5), 2 * g]), np.zeros((3, 5)), np.stack([g, g, g]),
          np.stack([g, -g, g])]
  js = np.stack([np.stack([m] * 3) for m in mats]).astype(np.float32)
  d, w, state, finite = _run(weighting.get(name), js)
  assert finite.all() and np.all(np.isfinite(d)) and np.all(np.isfinite(w))
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(leaf))
  np.testing.assert_allclose(d[1], 0, atol=1e-30)   # all-zero Jacobian: zero direction


@pytest.mark.parametrize('name', NAMES)
def test_method_kinds(name):
  method = weighting.get(name)
  assert method.needs is weighting.Needs.GRAM
  assert method.head_grads == 'unweighted' and not method.direct
  assert method.random == (name == 'gradvac')
  assert method.min_tasks == (3 if name == 'krum' else 2)


@pytest.mark.parametrize('name,hp,field', [
    ('gradvac', {'beta': 1.5}, 'beta'), ('gradvac', {'eps': -1.0}, 'eps'),
    ('fairgrad', {'alpha': -1.0}, 'alpha'), ('fairgrad', {'match_sum': 1}, 'match_sum'),
    ('fairgrad', {'max_iters': 0}, 'max_iters'),
    ('con_fig', {'pref_vector': 'x'}, 'pref_vector'),
    ('con_fig', {'pref_vector': (1.0, float('inf'))}, 'pref_vector'),
    ('krum', {'n_byzantine': -1}, 'n_byzantine'), ('krum', {'n_selected': 0}, 'n_selected'),
    ('krum', {'n_selected': 1.0}, 'n_selected'),
    ('pcd', {'tau': 1.5}, 'tau'), ('pcd', {'tau': (0.1, -0.1)}, 'tau'),
    ('pcd', {'beta': 1.0}, 'beta'), ('pcd', {'eps': -1e-8}, 'eps')])
def test_bad_hyperparameters(name, hp, field):
  with pytest.raises(ValueError, match=f'^{name}: {field}'):
    weighting.get(name, **hp)
