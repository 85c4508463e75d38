"""Loss-based scalarisations (STCH, IMTL-L, hybrid IMTL, COSMOS, PBI, Random, GO4Align)
against NumPy re-implementations written from the papers' formulas (finite differences of the
objective where alpha = dS/dL), the authors' procedures (LibMTL's STCH warm-up and IMTL, the
GO4Align authors' code with a brute-force k-means) and TorchJD's fixed-value tables."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from mtl_jax import weighting
from mtl_jax.weighting import WeightingInputs
from mtl_jax._src.weighting.methods.go4align import group_means

KEY = jax.random.PRNGKey(0)


def run_update(method, losses, state, key=KEY, gram=None):
  inputs = WeightingInputs(losses=jnp.asarray(losses, jnp.float32),
                           step=jnp.asarray(0, jnp.int32),
                           gram=None if gram is None else jnp.asarray(gram, jnp.float32))
  return method.update(inputs, state, key if method.random else None)


def finite_diff(fun, x, h=1e-6):
  """Central differences of a float64 NumPy function at x."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for t in range(x.size):
    e = np.zeros_like(x)
    e[t] = h * max(1.0, abs(x[t]))
    grad[t] = (fun(x + e) - fun(x - e)) / (2 * e[t])
  return grad


class NumpyAdam:
  """torch.optim.Adam's update, float64."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
    self.m = self.v = 0.0
    self.t = 0

  def step(self, params, grad):
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad**2
    denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + self.eps
    return params - self.lr / (1 - self.b1**self.t) * self.m / denom


def random_problems(seed, count=6, low=0.05, high=5.0):
  """(T, losses, preference on the simplex, ideal point) for T = 2..8."""
  rng = np.random.default_rng(seed)
  out = []
  for k in range(count):
    t = 2 + (k * 5 + seed) % 7
    out.append((t, rng.uniform(low, high, t), rng.dirichlet(np.ones(t)),
                rng.uniform(-1.0, 0.5, t)))
  return out


# ---------------------------------------------------------------------------------------------
# STCH


def np_stch(losses, mu, lam, ideal):
  """mu log sum exp(lambda (L - z*) / mu), float64 (moderate values: no shift needed)."""
  return mu * np.log(np.sum(np.exp(lam * (losses - ideal) / mu)))


def test_stch_paper_form_is_the_gradient_of_the_smooth_max():
  worst = 0.0
  for t, losses, lam, ideal in random_problems(1, count=3):
    for mu in (0.1, 1.0):
      for given in (False, True):
        method = (weighting.stch(mu, tuple(lam), tuple(ideal)) if given
                  else weighting.stch(mu))
        lam_used = lam if given else np.full(t, 1 / t)
        ideal_used = ideal if given else np.zeros(t)
        out = run_update(method, losses, method.init(t))
        fun = lambda l: np_stch(l, mu, lam_used, ideal_used)
        expected = finite_diff(fun, losses)
        np.testing.assert_allclose(out.weights, expected, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(out.aux['objective'], fun(losses), rtol=1e-5)
        worst = max(worst, np.max(np.abs(np.asarray(out.weights) - expected)))
        assert out.state == ()
  assert worst < 1e-4


def test_stch_torchjd_values():
  objective = lambda m, l: float(run_update(m, l, m.init(len(l))).aux['objective'])
  assert objective(weighting.stch(1.0), [0.0, 0.0]) == pytest.approx(math.log(2), rel=1e-6)
  assert objective(weighting.stch(1.0, (1.0, 1.0)), [1.0, 1.0]) == pytest.approx(
      1 + math.log(2), rel=1e-6)
  assert objective(weighting.stch(1.0, (1.0, 1.0), (1.0, 1.0)), [1.0, 1.0]) == pytest.approx(
      math.log(2), rel=1e-6)
  # Large values and a small mu: no overflow; the value is the dominant (max) term.
  method = weighting.stch(1e-10)
  out = run_update(method, [1e30, 2e30, 3e30], ())
  assert float(out.aux['objective']) == pytest.approx(1e30, rel=1e-6)
  np.testing.assert_allclose(out.weights, [0.0, 0.0, 1 / 3], rtol=1e-6)
  # Permutation invariant with the default preference.
  losses = np.array([0.3, 2.0, 1.1, 4.0], np.float32)
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(run_update(weighting.stch(0.5), losses[perm], ()).weights,
                             np.asarray(run_update(weighting.stch(0.5), losses, ()).weights)[perm],
                             rtol=1e-6)


class LibMTLSTCH:
  """LibMTL's STCH.backward (epochs from 0, ``warmup_epoch`` w), float64: the objective it
  back-propagates at each step and the nadir vector."""

  def __init__(self, mu, warmup_epoch, steps_per_epoch, num):
    self.mu, self.w, self.spe, self.num = mu, warmup_epoch, steps_per_epoch, num
    self.step = 0
    self.average, self.count, self.nadir = np.zeros(num), 0, None

  def objective_and_advance(self, losses):
    epoch = self.step // self.spe
    self.step += 1
    if epoch < self.w:
      return lambda l: np.sum(np.log(l + 1e-20))
    if epoch == self.w:
      self.average = self.average + losses
      self.count += 1
      return lambda l: np.sum(np.log(l + 1e-20))
    if self.nadir is None:
      self.nadir = self.average / self.count
    nadir = self.nadir
    return lambda l: self.mu * np.log(np.sum(np.exp(np.log(l / nadir + 1e-20) / self.mu))) * \
        self.num


@pytest.mark.parametrize('t,warmup,steps_per_epoch,mu', [(3, 1, 3, 1.0), (4, 2, 2, 0.5),
                                                          (2, 5, 1, 2.0)])
def test_stch_warmup_matches_the_libmtl_procedure(t, warmup, steps_per_epoch, mu):
  rng = np.random.default_rng(t)
  method = weighting.stch(mu, warmup_epochs=warmup, steps_per_epoch=steps_per_epoch)
  ref = LibMTLSTCH(mu, warmup - 1, steps_per_epoch, t)
  update = jax.jit(method.update)
  state = method.init(t)
  total = (warmup + 3) * steps_per_epoch
  for step in range(total):
    losses = rng.uniform(0.2, 3.0, t).astype(np.float32)
    out = update(WeightingInputs(jnp.asarray(losses), jnp.asarray(step)), state, None)
    fun = ref.objective_and_advance(losses.astype(np.float64))
    np.testing.assert_allclose(out.weights, finite_diff(fun, losses), rtol=2e-4, atol=1e-6,
                               err_msg=f'step {step}')
    np.testing.assert_allclose(out.aux['objective'], fun(losses.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)
    state = out.state
  np.testing.assert_allclose(state.nadir_sum / steps_per_epoch, ref.nadir, rtol=1e-6)
  assert int(state.updates) == warmup * steps_per_epoch   # capped: no overflow


# ---------------------------------------------------------------------------------------------
# IMTL-L and hybrid IMTL


def test_imtl_l_matches_numpy_adam_over_steps():
  rng = np.random.default_rng(0)
  for t in (2, 5):
    method = weighting.imtl_l(init=0.2, lr=0.1)
    state = method.init(t)
    s = np.full(t, 0.2)
    adam = NumpyAdam(0.1)
    for step in range(6):
      losses = rng.uniform(0.1, 4.0, t)
      out = run_update(method, losses, state)
      np.testing.assert_allclose(out.weights, np.exp(s), rtol=1e-5)
      np.testing.assert_allclose(out.aux['objective'], np.sum(np.exp(s) * losses - s),
                                 rtol=1e-5)
      fun = lambda l: np.sum(np.exp(s) * l - s)            # alpha = dS/dL
      np.testing.assert_allclose(out.weights, finite_diff(fun, losses), rtol=1e-5)
      s = adam.step(s, np.exp(s) * losses - 1.0)
      state = out.state
      np.testing.assert_allclose(state.log_scale, s, rtol=1e-5, atol=1e-5, err_msg=str(step))


def test_imtl_l_torchjd_values_and_uw_relation():
  method = weighting.imtl_l()
  out = run_update(method, [1.0, 2.0, 4.0], method.init(3))
  assert float(out.aux['objective']) == pytest.approx(7.0)
  np.testing.assert_array_equal(out.weights, np.ones(3))
  # IMTL-L(s) = 2 UW(-s) (TorchJD's documented relation).
  s = jnp.array([0.3, -0.7, 1.2])
  losses = [0.5, 2.0, 4.0]
  state = method.init(3)._replace(log_scale=s)
  uw = weighting.uw()
  uw_state = uw.init(3)._replace(log_vars=-s)
  imtl_obj = run_update(method, losses, state).aux['objective']
  uw_obj = run_update(uw, losses, uw_state).aux['objective']
  np.testing.assert_allclose(imtl_obj, 2 * uw_obj, rtol=1e-6)
  # Constant losses: e^{s_t} L_t -> 1.
  state = method.init(3)
  losses = np.array([0.5, 2.0, 8.0])
  run = jax.jit(lambda st: run_update(weighting.imtl_l(lr=0.05), losses, st).state)
  for _ in range(400):
    state = run(state)
  np.testing.assert_allclose(np.exp(state.log_scale) * losses, 1.0, rtol=0.05)


def libmtl_imtl_alpha(grads):
  """LibMTL's IMTL-G closed form on the rows of ``grads`` (float64)."""
  unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  d = grads[0:1] - grads[1:]
  u = unit[0:1] - unit[1:]
  alpha = grads[0] @ u.T @ np.linalg.inv(d @ u.T)
  return np.concatenate([[1 - alpha.sum()], alpha])


def _jacobians(rng, t, p=10):
  full = rng.normal(size=(t, p))
  colinear = full.copy()
  colinear[-1] = 2.5 * colinear[0]
  deficient = rng.normal(size=(t, 2)) @ rng.normal(size=(2, p))
  return {'full': full, 'colinear': colinear, 'deficient': deficient}


@pytest.mark.parametrize('t', [2, 3, 6])
def test_imtl_matches_libmtl_and_equal_projections_over_steps(t):
  rng = np.random.default_rng(10 + t)
  worst = 0.0
  method = weighting.imtl(init=0.1, lr=0.05, match_sum=False)
  update = jax.jit(method.update)
  summed_update = jax.jit(weighting.imtl(init=0.1, lr=0.05).update)
  for kind, jac in _jacobians(rng, t).items():
    if t == 2 and kind == 'colinear':
      continue                              # both rows colinear: G' singular, any alpha works
    state = method.init(t)
    s = np.full(t, 0.1)
    adam = NumpyAdam(0.05)
    for step in range(4):
      losses = rng.uniform(0.2, 3.0, t)
      gram = jac @ jac.T
      inputs = WeightingInputs(jnp.asarray(losses, jnp.float32), jnp.asarray(step),
                               gram=jnp.asarray(gram, jnp.float32))
      out = update(inputs, state, None)
      alpha = np.asarray(out.weights, np.float64)
      np.testing.assert_allclose(summed_update(inputs, state, None).weights, t * alpha,
                                 rtol=1e-5, atol=1e-6)
      scaled = np.exp(s)[:, None] * jac
      alpha_scaled = alpha / np.exp(s)
      assert alpha_scaled.sum() == pytest.approx(1.0, abs=1e-4)
      d = alpha @ jac
      if kind == 'full':
        expected = libmtl_imtl_alpha(scaled) * np.exp(s)
        np.testing.assert_allclose(alpha, expected, rtol=2e-3, atol=2e-4)
        worst = max(worst, np.max(np.abs(alpha - expected)))
      # Equal projections of d on every unit gradient (the IMTL-G property).
      proj = jac @ d / np.linalg.norm(jac, axis=1)
      if kind != 'deficient' or t <= 2:
        np.testing.assert_allclose(proj, proj.mean(), rtol=2e-3, atol=2e-4 * np.abs(d).max())
      else:  # rank 2 < T: G'^+ gives the least-squares solution; check against NumPy's
        g_scaled = scaled @ scaled.T
        raw = np.linalg.pinv(g_scaled, hermitian=True) @ np.sqrt(np.diag(g_scaled))
        np.testing.assert_allclose(alpha, raw / raw.sum() * np.exp(s), rtol=2e-3, atol=2e-3)
      s = adam.step(s, np.exp(s) * losses - 1.0)
      state = out.state
      np.testing.assert_allclose(state.log_scale, s, rtol=1e-5, atol=1e-6)
  assert worst < 2e-3


# ---------------------------------------------------------------------------------------------
# COSMOS and PBI


def np_cosmos(losses, r, lam):
  """r . L - lambda r . L / (max(|r|, 1e-8) max(|L|, 1e-8)), float64."""
  dot = r @ losses
  return dot - lam * dot / (max(np.linalg.norm(r), 1e-8) * max(np.linalg.norm(losses), 1e-8))


def np_pbi(losses, w, theta, ideal):
  f = losses - ideal
  direction = w / np.linalg.norm(w)
  d1 = f @ direction
  return d1 + theta * np.sqrt(np.sum((f - d1 * direction) ** 2) + 1e-12)


def test_cosmos_and_pbi_are_gradients_of_their_objectives():
  worst = {'cosmos': 0.0, 'pbi': 0.0}
  for t, losses, pref, ideal in random_problems(2, count=4):
    for lam in (0.0, 0.5, 2.0):
      method = weighting.cosmos(lam, tuple(pref))
      assert not method.random
      out = run_update(method, losses, method.init(t))
      fun = lambda l: np_cosmos(l, pref, lam)
      expected = finite_diff(fun, losses)
      np.testing.assert_allclose(out.weights, expected, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(out.aux['objective'], fun(losses), rtol=1e-5, atol=1e-6)
      worst['cosmos'] = max(worst['cosmos'], np.max(np.abs(np.asarray(out.weights) - expected)))
    for theta in (0.0, 1.0, 5.0):
      for shift in (None, ideal):
        method = weighting.pbi(theta, tuple(pref), None if shift is None else tuple(shift))
        out = run_update(method, losses, method.init(t))
        fun = lambda l: np_pbi(l, pref, theta, np.zeros(t) if shift is None else shift)
        expected = finite_diff(fun, losses)
        np.testing.assert_allclose(out.weights, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.aux['objective'], fun(losses), rtol=1e-5, atol=1e-5)
        worst['pbi'] = max(worst['pbi'], np.max(np.abs(np.asarray(out.weights) - expected)))
  assert max(worst.values()) < 1e-4, worst


def test_cosmos_torchjd_values():
  objective = lambda m, l: float(run_update(m, l, m.init(len(l))).aux['objective'])
  assert objective(weighting.cosmos(1.0, (0.5, 0.5)), [1.0, 1.0]) == pytest.approx(0, abs=1e-6)
  assert objective(weighting.cosmos(0.0, (1 / 3, 1 / 3, 1 / 3)), [1.0, 2.0, 4.0]) == \
      pytest.approx(7 / 3, rel=1e-6)
  assert objective(weighting.cosmos(0.0, (2.0, 1.0)), [3.0, 4.0]) == pytest.approx(10.0)
  values, r = np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.3, 0.2])
  cos = r @ values / (np.linalg.norm(r) * np.linalg.norm(values))
  assert objective(weighting.cosmos(2.0, tuple(r)), values) == pytest.approx(
      r @ values - 2 * cos, rel=1e-6)
  out = run_update(weighting.cosmos(1.0, (0.5, 0.5)), [0.0, 0.0], ())
  assert float(out.aux['objective']) == 0.0
  chex.assert_tree_all_finite(out.weights)      # r - r / (|r| 1e-8): large, as torch's


def test_pbi_torchjd_values():
  objective = lambda m, l: float(run_update(m, l, m.init(len(l))).aux['objective'])
  assert objective(weighting.pbi(1.0, (1.0, 1.0)), [2.0, 0.0]) == pytest.approx(
      2 * math.sqrt(2), rel=1e-6)
  assert objective(weighting.pbi(0.0, (1.0, 1.0)), [2.0, 0.0]) == pytest.approx(
      math.sqrt(2), rel=1e-6)
  assert objective(weighting.pbi(1.0, (1.0, 1.0), (1.0, 1.0)), [3.0, 1.0]) == pytest.approx(
      2 * math.sqrt(2), rel=1e-6)
  values, w, z = np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.3, 0.2]), np.full(3, 0.5)
  direction = w / np.linalg.norm(w)
  d1 = (values - z) @ direction
  expected = d1 + 5.0 * np.linalg.norm(values - z - d1 * direction)
  assert objective(weighting.pbi(5.0, tuple(w), tuple(z)), values) == pytest.approx(
      expected, rel=1e-5)
  # On the preference ray d2 = 0: finite value and weights.
  out = run_update(weighting.pbi(5.0, (1.0, 2.0)), [1.0, 2.0], ())
  chex.assert_tree_all_finite((out.weights, out.aux['objective']))


def test_cosmos_and_pbi_default_to_the_uniform_preference():
  losses = np.array([0.5, 1.0, 2.5, 0.1], np.float32)
  uniform = (0.25,) * 4
  for default, given in [(weighting.cosmos(), weighting.cosmos(weights=uniform)),
                         (weighting.pbi(), weighting.pbi(weights=uniform))]:
    np.testing.assert_allclose(run_update(default, losses, ()).weights,
                               run_update(given, losses, ()).weights, rtol=1e-6)


def _dirichlet_check(samples, t, concentration):
  """Mean, variance and E[log r] of Dirichlet(c 1_T) samples [n, T]."""
  n = samples.shape[0]
  np.testing.assert_allclose(samples.sum(1), 1.0, rtol=1e-5)
  mean_var = (1 / t) * (1 - 1 / t) / (t * concentration + 1)
  np.testing.assert_allclose(samples.mean(0), 1 / t, atol=5 * np.sqrt(mean_var / n))
  np.testing.assert_allclose(samples.var(0), mean_var, rtol=0.1)
  expected_log = special.digamma(concentration) - special.digamma(t * concentration)
  np.testing.assert_allclose(np.log(samples).mean(0), expected_log, rtol=0.05)


def test_cosmos_and_pbi_draw_dirichlet_preferences_from_the_key():
  t, n = 3, 4000
  keys = jax.random.split(jax.random.PRNGKey(5), n)
  losses = jnp.array([0.5, 1.0, 2.0])
  cosmos = weighting.cosmos(0.0, concentration=1.2)      # lambda = 0: alpha = r
  pbi = weighting.pbi(0.0, concentration=1.0)             # theta = 0: alpha = w / |w|
  full = weighting.cosmos(2.0, concentration=1.2)
  assert cosmos.random and pbi.random and full.random
  assert not weighting.cosmos().random and not weighting.pbi().random

  def draw(k):
    return tuple(run_update(m, losses, (), key=k).weights for m in (cosmos, pbi, full))

  r, w, alpha = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(draw))(keys))
  _dirichlet_check(r, t, 1.2)
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
  _dirichlet_check(w / w.sum(1, keepdims=True), t, 1.0)
  # The preference drawn for a key is the one used with lambda > 0.
  for i in range(4):
    np.testing.assert_allclose(alpha[i], finite_diff(lambda l: np_cosmos(l, r[i], 2.0), losses),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Random


def test_random_is_rlw_with_torchjd_normalisation():
  method = weighting.random()
  assert method.random and method.name == 'random' and method.init(4) == ()
  losses = jnp.ones(4)
  for k in range(3):
    key = jax.random.PRNGKey(k)
    w = run_update(method, losses, (), key=key).weights
    assert float(jnp.sum(w)) == pytest.approx(1.0, rel=1e-6) and bool(jnp.all(w > 0))
    np.testing.assert_array_equal(w, run_update(weighting.rlw(match_sum=False), losses, (),
                                                key=key).weights)
    np.testing.assert_array_equal(run_update(weighting.random(match_sum=True), losses, (),
                                             key=key).weights,
                                  run_update(weighting.rlw(), losses, (), key=key).weights)


def test_random_weights_are_a_softmax_of_standard_normals():
  """Over many keys: log w_i - log w_j = xi_i - xi_j ~ N(0, 2) (a Dirichlet(1) draw would give
  variance 2 pi^2 / 6 = 3.29; a softmax of N(0, s^2) 2 s^2), centred log-weights have
  variance 1 - 1/T, the mean weight is 1/T and the weights sum to 1."""
  t, n = 4, 20000
  method = weighting.random()
  keys = jax.random.split(jax.random.PRNGKey(42), n)
  w = np.asarray(jax.jit(jax.vmap(lambda k: run_update(method, jnp.ones(t), (), key=k).weights))(
      keys), np.float64)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  assert np.all(w > 0)
  np.testing.assert_allclose(w.mean(0), 1 / t, atol=0.005)
  diff = np.log(w[:, 0]) - np.log(w[:, 1])
  assert abs(diff.mean()) < 0.05
  assert diff.var() == pytest.approx(2.0, rel=0.05)
  assert stats.kstest(diff / np.sqrt(2), 'norm').pvalue > 1e-3
  centred = np.log(w) - np.log(w).mean(1, keepdims=True)
  np.testing.assert_allclose(centred.var(0), 1 - 1 / t, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# GO4Align


def brute_force_group_means(values, k):
  """Every labelling into k groups; the one of least within-group sum of squares."""
  n, k = len(values), min(k, len(values))
  labels = np.array(list(itertools.product(range(k), repeat=n)))          # [M, n]
  member = labels[:, :, None] == np.arange(k)                              # [M, n, k]
  means = (member * values[None, :, None]).sum(1) / np.maximum(member.sum(1), 1)
  per_point = np.take_along_axis(means, labels, axis=1)                   # [M, n]
  sse = np.sum((values[None] - per_point) ** 2, axis=1)
  return per_point[np.argmin(sse)]


def test_group_means_is_the_optimal_1d_kmeans():
  rng = np.random.default_rng(3)
  worst = 0.0
  for n, k in [(3, 2), (5, 2), (6, 4), (7, 3), (4, 1), (3, 5)]:
    values = rng.lognormal(size=(4, n))
    got = np.asarray(jax.jit(jax.vmap(lambda v: group_means(v, k)))(jnp.asarray(values,
                                                                                  jnp.float32)))
    for v, g in zip(values, got):
      expected = brute_force_group_means(v, k)
      np.testing.assert_allclose(g, expected, rtol=1e-5, err_msg=f'n={n}, k={k}')
      worst = max(worst, np.max(np.abs(g - expected)))
  assert worst < 1e-5


class AuthorsGO4Align:
  """The GO4Align authors' ``get_weighted_loss`` (float64; brute-force k-means)."""

  def __init__(self, num, num_groups, step_size):
    self.probs = np.full(num, 1 / num)
    self.k, self.step_size = num_groups, step_size

  def weights(self, losses):
    scale = losses.sum() / losses
    self.probs = self.probs * np.exp(-self.step_size * losses)
    self.probs = self.probs / self.probs.sum()
    indicator = scale * self.probs
    if self.k == 1:
      return np.full(len(losses), indicator.mean())
    return brute_force_group_means(indicator, self.k)


@pytest.mark.parametrize('t,k', [(2, 1), (3, 2), (5, 2), (6, 3), (4, 4)])
def test_go4align_matches_the_authors_procedure_over_steps(t, k):
  rng = np.random.default_rng(t * 10 + k)
  method = weighting.go4align(num_groups=k, robust_step_size=0.3)
  ref = AuthorsGO4Align(t, k, 0.3)
  update = jax.jit(method.update)
  state = method.init(t)
  for step in range(6):
    losses = rng.uniform(0.1, 3.0, t)
    out = update(WeightingInputs(jnp.asarray(losses, jnp.float32), jnp.asarray(step)),
                 state, None)
    np.testing.assert_allclose(out.weights, ref.weights(losses), rtol=1e-4, err_msg=str(step))
    state = out.state
    np.testing.assert_allclose(np.exp(state.log_probs), ref.probs, rtol=1e-5)


def test_go4align_equal_and_zero_losses():
  method = weighting.go4align(num_groups=2, robust_step_size=0.5)
  run = jax.jit(lambda l: run_update(method, l, method.init(l.shape[0])))
  np.testing.assert_allclose(run(jnp.full(3, 0.7)).weights, np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(run(jnp.zeros(3)).weights, np.ones(3), rtol=1e-6)  # T p_t = 1
  chex.assert_tree_all_finite(run(jnp.array([0.0, 1.0, 2.0])))


# ---------------------------------------------------------------------------------------------
# All: degenerate inputs, combine, bad hyperparameters


CONFIGS = [('stch', {}), ('stch', dict(warmup_epochs=1, steps_per_epoch=1)),
           ('imtl_l', {}), ('imtl', {}), ('cosmos', {}), ('cosmos', dict(weights=(1.0, 2.0, 0.5))),
           ('cosmos', dict(concentration=0.3)), ('pbi', {}), ('pbi', dict(concentration=1.0)),
           ('pbi', dict(weights=(1.0, 1.0, 1.0), ideal_point=(0.5, 0.0, 0.0))),
           ('random', {}), ('go4align', {})]


@pytest.mark.parametrize('name,hparams', CONFIGS)
def test_zero_and_identical_losses_give_finite_weights_through_combine(name, hparams):
  method = weighting.get(name, **hparams)
  jac = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  jacs = np.stack([jac, np.zeros_like(jac), np.stack([jac[0]] * 3)])
  losses = np.array([[0.0, 0.0, 0.0], [1.3, 1.3, 1.3], [0.0, 2.0, 1.0]], np.float32)

  def run(j, l):
    state = method.init(3)
    for _ in range(3):                               # a few steps: the state stays finite
      out = weighting.combine(method, j, l, state=state, key=KEY)
      state = out.state
    return out.direction, out.weights, state

  cases = [(j, l) for j in jacs for l in losses]
  d, w, state = jax.jit(jax.vmap(run))(np.stack([c[0] for c in cases]),
                                       np.stack([c[1] for c in cases]))
  chex.assert_tree_all_finite((d, w, state))


@pytest.mark.parametrize('name,hparams,field', [
    ('stch', dict(mu=0.0), 'mu'), ('stch', dict(mu=float('nan')), 'mu'),
    ('stch', dict(weights=(1.0, -1.0)), 'weights'), ('stch', dict(weights=()), 'weights'),
    ('stch', dict(ideal_point=(1.0, float('inf'))), 'ideal_point'),
    ('stch', dict(warmup_epochs=-1), 'warmup_epochs'),
    ('stch', dict(warmup_epochs=1.5), 'warmup_epochs'),
    ('stch', dict(warmup_epochs=2), 'steps_per_epoch'),
    ('stch', dict(warmup_epochs=2, steps_per_epoch=True), 'steps_per_epoch'),
    ('stch', dict(warmup_epochs=2, steps_per_epoch=5, weights=(1.0, 1.0)), 'weights'),
    ('imtl_l', dict(lr=-0.1), 'lr'), ('imtl_l', dict(init=float('inf')), 'init'),
    ('imtl', dict(lr=-1.0), 'lr'), ('imtl', dict(init='a'), 'init'),
    ('imtl', dict(match_sum=1), 'match_sum'),
    ('cosmos', dict(lambda_=-0.5), 'lambda_'), ('cosmos', dict(weights=(0.0, 0.0)), 'weights'),
    ('cosmos', dict(concentration=0.0), 'concentration'),
    ('cosmos', dict(weights=(1.0, 1.0), concentration=1.0), 'concentration'),
    ('pbi', dict(theta=-1.0), 'theta'), ('pbi', dict(weights=(1.0, -0.5)), 'weights'),
    ('pbi', dict(ideal_point='ab'), 'ideal_point'),
    ('pbi', dict(concentration=-1.0), 'concentration'),
    ('random', dict(match_sum='yes'), 'match_sum'),
    ('go4align', dict(num_groups=0), 'num_groups'),
    ('go4align', dict(num_groups=2.0), 'num_groups'),
    ('go4align', dict(robust_step_size=-1e-4), 'robust_step_size'),
    ('go4align', dict(eps=0.0), 'eps'),
])
def test_bad_hyperparameters_name_the_method_and_field(name, hparams, field):
  with pytest.raises(ValueError, match=rf'^{name}: .*{field}'):
    weighting.get(name, **hparams)


@pytest.mark.parametrize('name,hparams,field', [
    ('stch', dict(weights=(1.0, 1.0)), 'weights'), ('stch', dict(ideal_point=(0.0,)), 'ideal_point'),
    ('cosmos', dict(weights=(1.0, 1.0)), 'weights'), ('pbi', dict(ideal_point=(0.0,)), 'ideal_point'),
])
def test_vectors_of_the_wrong_length_are_rejected_at_init(name, hparams, field):
  with pytest.raises(ValueError, match=rf'^{name}: \d+ {field} given for 3 tasks'):
    weighting.get(name, **hparams).init(3)
