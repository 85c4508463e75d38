"""Jacobian methods (MoCo, DB-MTL, ExcessMTL, GradDrop, trimmed mean) against NumPy
re-implementations of their papers' formulas, over several consecutive steps (state
included), TorchJD's published values, degenerate inputs and bad hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting
from mtl_jax._src.weighting.methods.graddrop import graddrop_uniform  # U drawn from a key

KEY = jax.random.PRNGKey(7)
STEPS = 4
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)   # TorchJD's test matrix


def _init(method, t, p):
  return method.init(t, jnp.zeros(p)) if method.state_like_params else method.init(t)


def _run(method, js, losses, key=KEY):
  """``combine`` on consecutive steps: js [S, T, P], losses [S, T] (one jit and one scan per
  method and shape; a leading case axis is vmapped).  Returns (directions [S, P], weights
  [S, T], states stacked over S, finite [S])."""
  def steps(js, losses):
    def step(state, x):
      out = weighting.combine(method, x[0], x[1], state=state, key=key)
      return out.state, (out.direction, out.weights, out.state, out.finite)
    return jax.lax.scan(step, _init(method, *js.shape[1:]), (js, losses))[1]
  run = steps if js.ndim == 3 else jax.vmap(steps)
  return jax.tree.map(np.asarray, jax.jit(run)(jnp.asarray(js), jnp.asarray(losses)))


def _cases(t, p=12, steps=STEPS, seed=0):
  """[C, S, T, P] Jacobians drifting over the steps: conflicting (random), colinear with
  mixed signs, rank 2, and one zero row; [C, S, T] positive losses."""
  rng = np.random.default_rng(seed + 10 * t)
  normal = lambda *shape: rng.normal(size=shape)
  random = normal(t, p) + 0.3 * normal(steps, t, p)
  colinear = normal(steps, t, 1) * (normal(p) + 0.3 * normal(steps, 1, p))
  rank2 = normal(steps, t, 2) @ (normal(2, p) + 0.3 * normal(steps, 2, p))
  zero_row = normal(t, p) + 0.3 * normal(steps, t, p)
  zero_row[:, 0] = 0
  cases = np.stack([random, colinear, rank2, zero_row])
  losses = rng.uniform(0.2, 3.0, size=(len(cases), steps, t))
  return cases.astype(np.float32), losses.astype(np.float32)


def _close(actual, expected, rtol=2e-4, atol=1e-5, **kw):
  scale = np.max(np.abs(expected)) if np.size(expected) else 1.0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1.0), **kw)


# ------------------------------------------------------------------------------------ MoCo

def _simplex_projection(v):
  """Euclidean projection onto the simplex by sorting (Held et al. 1974; Duchi et al. 2008)."""
  u = np.sort(v)[::-1]
  css = np.cumsum(u) - 1
  rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
  return np.maximum(v - css[rho] / (rho + 1), 0)


def _softmax(v):
  e = np.exp(v - v.max())
  return e / e.sum()


def _moco_np(js, losses, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
             scale_by_loss=False, simplex='projection', match_sum=True):
  t, p = js.shape[1:]
  y, lam = np.zeros((t, p)), np.full(t, 1 / t)
  out = []
  for k, (j, l) in enumerate(zip(js.astype(np.float64), losses), start=1):
    g = j * (l / (np.linalg.norm(j, axis=1) + 1e-8))[:, None] if scale_by_loss else j
    y = y - beta / k ** beta_sigma * (y - g)
    v = lam - gamma / k ** gamma_sigma * (y @ y.T + rho * np.eye(t)) @ lam
    lam = _softmax(v) if simplex == 'softmax' else _simplex_projection(v)
    w = lam * (t if match_sum else 1)
    out.append((w @ y, w, y.copy(), lam.copy()))
  return [np.stack(x) for x in zip(*out)]


MOCO_CASES = [(2, {}), (3, {'rho': 0.1, 'gamma': 0.5}),
              (5, {'scale_by_loss': True, 'simplex': 'softmax', 'match_sum': False}),
              (8, {'beta': 0.9, 'beta_sigma': 0.0, 'gamma_sigma': 1.0, 'gamma': 0.02})]


@pytest.mark.parametrize('t,hp', MOCO_CASES)
def test_moco_matches_numpy_over_steps(t, hp):
  js, losses = _cases(t)
  d, w, state, finite = _run(weighting.get('moco', **hp), js, losses)
  assert finite.all()
  for c in range(len(js)):
    d_np, w_np, y_np, lam_np = _moco_np(js[c], losses[c], **hp)
    _close(w[c], w_np, err_msg=f'case {c}')
    _close(state['lambda'][c], lam_np, err_msg=f'case {c}')
    _close(state['y'][c], y_np, err_msg=f'case {c}')
    _close(d[c], d_np, err_msg=f'case {c}')
    np.testing.assert_array_equal(state['count'][c], np.arange(1, STEPS + 1))


def test_moco_direction_is_a_row_pytree_and_lambda_the_weights():
  """A task-stacked pytree Jacobian gives the same numbers as its flattened [T, P] matrix;
  d = Y^T lambda with the reported weights (lambda x T under match_sum)."""
  js, losses = _cases(3, p=7)
  js, losses = js[0], losses[0]
  tree = {'a': js[:, :, :3], 'b': js[:, :, 3:].reshape(STEPS, 3, 2, 2)}
  method = weighting.get('moco')

  def steps(tree, losses):
    row = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape[2:]), tree)
    def step(state, x):
      out = weighting.combine(method, x[0], x[1], state=state)
      return out.state, (out.direction, out.weights)
    return jax.lax.scan(step, method.init(3, row), (tree, losses))[1]

  d_tree, w_tree = jax.jit(steps)(tree, losses)
  d, w, state, _ = _run(method, js, losses)
  flat = np.concatenate([np.asarray(d_tree['a']), np.asarray(d_tree['b']).reshape(STEPS, 4)],
                        axis=1)
  _close(flat, d, rtol=1e-6)
  _close(w_tree, w, rtol=1e-6)
  _close(d, np.einsum('st,stp->sp', w, state['y']), rtol=1e-5)
  np.testing.assert_allclose(w.sum(1), 3.0, rtol=1e-5)


# ---------------------------------------------------------------------------------- DB-MTL

def _db_mtl_np(js, losses, beta=0.9, beta_sigma=0.0):
  t, p = js.shape[1:]
  buf = np.zeros((t, p))
  out = []
  for k, (j, l) in enumerate(zip(js.astype(np.float64), losses.astype(np.float64)), start=1):
    h = j / (np.maximum(l, 0) + 1e-8)[:, None]      # grad log(L + 1e-8)
    buf = h + beta / k ** beta_sigma * (buf - h)
    norms = np.linalg.norm(buf, axis=1)
    alpha = norms.max() / (norms + 1e-8)
    out.append((alpha @ buf, alpha, buf.copy()))
  return [np.stack(x) for x in zip(*out)]


@pytest.mark.parametrize('t,hp', [(2, {}), (4, {'beta': 0.5, 'beta_sigma': 0.5}),
                                  (7, {'beta': 0.0})])
def test_db_mtl_matches_numpy_over_steps(t, hp):
  js, losses = _cases(t)
  d, w, state, finite = _run(weighting.get('db_mtl', **hp), js, losses)
  assert finite.all()
  for c in range(len(js)):
    d_np, alpha_np, buf_np = _db_mtl_np(js[c], losses[c], **hp)
    _close(state['buffer'][c], buf_np, err_msg=f'case {c}')
    _close(w[c], alpha_np, rtol=1e-3, err_msg=f'case {c}')   # 1 / small norms: float32
    _close(d[c], d_np, rtol=1e-3, err_msg=f'case {c}')


def test_db_mtl_balances_the_buffer_norms():
  """Every alpha_t b_t has the largest buffer norm; the first step is (1 - beta) h."""
  js, losses = _cases(3)
  d, w, state, _ = _run(weighting.get('db_mtl'), js[0], losses[0])
  scaled = np.linalg.norm(w[..., None] * state['buffer'], axis=2)
  np.testing.assert_allclose(scaled, scaled.max(1, keepdims=True) * np.ones((1, 3)),
                             rtol=1e-5)
  _close(state['buffer'][0], 0.1 * js[0, 0] / (losses[0, 0][:, None] + 1e-8), rtol=1e-5)


# ------------------------------------------------------------------------------- ExcessMTL

def _excess_torchjd_np(js, eta=1.0, warmup=0):
  """ExcessMTL as TorchJD defines it: w on the simplex from 1/T, the first call (without
  warm-up) steps with the raw excess, later ones with e / (e0 + 1e-7)."""
  t, p = js.shape[1:]
  sq, w, e0, acc = np.zeros((t, p)), np.full(t, 1 / t), None, np.zeros(t)
  out = []
  for n, j in enumerate(js.astype(np.float64)):
    sq = sq + j ** 2
    e = (j ** 2 / np.sqrt(sq + 1e-7)).sum(1)
    if n < warmup:
      acc = acc + e
    else:
      if e0 is None and warmup:
        e0 = acc / warmup
        e = e / (e0 + 1e-7)
      elif e0 is None:
        e0 = e
      else:
        e = e / (e0 + 1e-7)
      w = w * np.exp(eta * e)
      w = w / w.sum()
    out.append((w.copy(), sq.copy()))
  return [np.stack(x) for x in zip(*out)]


def _excess_libmtl_np(js, eta=1e-2):
  """The authors' / LibMTL convention: w = 1, the first call only records e0, then
  w <- w exp(eta e / e0), renormalised to sum T."""
  t, p = js.shape[1:]
  sq, w, e0 = np.zeros((t, p)), np.ones(t), None
  out = []
  for j in js.astype(np.float64):
    sq = sq + j ** 2
    e = (j ** 2 / np.sqrt(sq + 1e-7)).sum(1)
    if e0 is None:
      e0 = e
    else:
      w = w * np.exp(eta * e / e0)
      w = w / w.sum() * t
    out.append(w.copy())
  return np.stack(out)


@pytest.mark.parametrize('t,hp,warmup', [
    (2, {'match_sum': False}, 0),
    (4, {'robust_step_size': 0.3}, 0),
    (6, {'n_warmup_steps': 2, 'match_sum': False}, 2),
    (8, {'n_warmup_steps': 1, 'robust_step_size': 0.1}, 1)])
def test_excess_mtl_matches_numpy_over_steps(t, hp, warmup):
  js, losses = _cases(t, steps=5)
  d, w, state, finite = _run(weighting.get('excess_mtl', **hp), js, losses)
  assert finite.all()
  factor = 1 if hp.get('match_sum') is False else t
  for c in range(len(js)):
    w_np, sq_np = _excess_torchjd_np(js[c], hp.get('robust_step_size', 1.0), warmup)
    _close(state['sq_sum'][c], sq_np, rtol=1e-5)
    # the zero-row case divides by e0 + 1e-7 = 1e-7: its weights saturate, compare loosely
    _close(w[c], factor * w_np, rtol=1e-3 if c < 3 else 1e-2, err_msg=f'case {c}')
    _close(d[c], np.einsum('st,stp->sp', w[c], js[c]), rtol=1e-5)
  if warmup:
    np.testing.assert_allclose(w[:, :warmup], factor / t, rtol=1e-6)  # uniform in warm-up


def test_excess_mtl_libmtl_convention():
  js, losses = _cases(5, steps=5)
  js, losses = js[:3], losses[:3]          # no zero row: LibMTL's e / e0 needs e0 > 0
  method = weighting.get('excess_mtl', robust_step_size=1e-2, update_on_first_call=False)
  _, w, _, _ = _run(method, js, losses)
  for c in range(3):
    _close(w[c], _excess_libmtl_np(js[c]), rtol=1e-5)
  np.testing.assert_allclose(w[:, 0], 1.0)                 # no update on the first call


def test_excess_mtl_torchjd_values():
  """TorchJD's unit tests: two consecutive steps, and the warm-up mean as the baseline."""
  j1 = np.array([[2.0, 0.0], [1.0, 0.0]], np.float32)
  j2 = np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)
  method = weighting.get('excess_mtl', match_sum=False)
  _, w, _, _ = _run(method, np.stack([j1, j2]), np.ones((2, 2), np.float32))
  w1 = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
  w2 = w1 * np.exp([1 / (2 * np.sqrt(5)), 4 / np.sqrt(5)])
  np.testing.assert_allclose(w, [w1, w2 / w2.sum()], rtol=1e-5)
  warm = weighting.get('excess_mtl', n_warmup_steps=2, match_sum=False)
  _, w, state, _ = _run(warm, np.stack([j1, j2, j1]), np.ones((3, 2), np.float32))
  base = (np.array([2.0, 1.0]) + np.array([1.0, 4.0]) / np.sqrt(5)) / 2
  expected = np.exp(np.array([4 / 3, 1 / np.sqrt(6)]) / (base + 1e-7))
  np.testing.assert_allclose(w[2], expected / expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(w[:2], 0.5)
  np.testing.assert_allclose(state['baseline'][2], base, rtol=1e-5)


# -------------------------------------------------------------------------------- GradDrop

def _uniforms(keys, shapes):
  """graddrop_uniform for each key (one jitted vmap), as NumPy."""
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: graddrop_uniform(k, shapes)))(
      keys))


def _masks_np(stats, purity, u, f=lambda p: p):
  fp = f(purity)
  return (fp > u) & (stats > 0) | (fp < u) & (stats < 0)


def _graddrop_param_np(j, u, leak, f=lambda p: p):
  """TorchJD's parameter-level form: statistics = the rows, purity over them, no epsilon."""
  j = j.astype(np.float64)
  s, a = j.sum(0), np.abs(j).sum(0)
  purity = 0.5 * (1 + np.divide(s, a, out=np.zeros_like(s), where=a > 0))
  m = _masks_np(j, purity, u, f)
  leak = np.broadcast_to(leak, (j.shape[0],))[:, None]
  return ((leak + (1 - leak) * m) * j).sum(0)


@pytest.mark.parametrize('t,leak,power', [(2, 0.0, None), (4, [0.0, 0.5, 1.0, 0.2], None),
                                          (7, 0.3, 2.0)])
def test_graddrop_param_form_matches_numpy(t, leak, power):
  f = None if power is None else (lambda p: p ** power)
  method = weighting.get('graddrop', leak=leak, f=f)
  rng = np.random.default_rng(t)
  j = rng.normal(size=(t, 40)).astype(np.float32)
  j[:, :4] = np.abs(j[:, :4]) * np.array([1, -1, 1, -1])      # unanimous signs: P in {0, 1}
  j[:, 4] = 0                                                  # a zero coordinate
  j[0, 5:10] = 0
  keys = jax.random.split(KEY, 5)
  run = jax.jit(jax.vmap(lambda k: weighting.combine(method, j, np.ones(t, np.float32),
                                                     key=k)[:2]))
  d, w = run(keys)
  assert np.all(np.isnan(w))
  us = _uniforms(keys, jax.ShapeDtypeStruct((40,), jnp.float32))
  for k, u in enumerate(us):
    expected = _graddrop_param_np(j, u, np.asarray(leak), (lambda p: p) if f is None else f)
    np.testing.assert_allclose(d[k], expected, rtol=1e-5, atol=1e-6)
  # unanimous coordinates are kept whatever the draw; the zero one stays 0
  np.testing.assert_allclose(d[:, :4], np.broadcast_to(j[:, :4].sum(0), (5, 4)), rtol=1e-5)
  np.testing.assert_array_equal(d[:, 4], 0)


def test_graddrop_torchjd_value():
  """TorchJD's table gives [6, 2, 2] for J_base, one of two draws: the first coordinate has
  purity 0.6 (kept positive iff U < 0.6), the others purity 1 (always kept)."""
  method = weighting.get('graddrop')
  keys = jax.random.split(KEY, 2000)
  d = np.asarray(jax.jit(jax.vmap(lambda k: weighting.combine(
      method, J_BASE, np.ones(2, np.float32), key=k).direction))(keys))
  u0 = _uniforms(keys, jax.ShapeDtypeStruct((3,), jnp.float32))[:, 0]
  np.testing.assert_array_equal(d[:, 1:], 2.0)
  np.testing.assert_array_equal(d[:, 0], np.where(u0 < 0.6, 6.0, -4.0))
  assert 0.55 < np.mean(d[:, 0] == 6.0) < 0.65
  j = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
  d_leak = weighting.combine(weighting.get('graddrop', leak=1.0), j, np.ones(2), key=KEY)
  np.testing.assert_allclose(d_leak.direction, j.sum(0))


def _graddrop_rep_np(rows, z, u, leak):
  """The paper's / LibMTL's form on one representation leaf: sign-corrected batch sums."""
  rows = rows.astype(np.float64)
  s = (np.sign(z)[None] * rows).sum(1)
  purity = 0.5 * (1 + s.sum(0) / (np.abs(s).sum(0) + 1e-7))
  m = _masks_np(s, purity, u)[:, None]
  leak = np.broadcast_to(leak, (rows.shape[0],)).reshape((-1,) + (1,) * (rows.ndim - 1))
  return ((leak + (1 - leak) * m) * rows).sum(0)


@pytest.mark.parametrize('leak', [0.0, [0.2, 0.0, 0.7]])
def test_graddrop_representation_form_matches_numpy(leak):
  t, b = 3, 6
  rng = np.random.default_rng(5)
  z = {'h': np.maximum(rng.normal(size=(b, 8)), 0).astype(np.float32),      # zeros: sign 0
       'm': rng.normal(size=(b, 2, 3)).astype(np.float32)}
  rows = jax.tree.map(lambda a: rng.normal(size=(t,) + a.shape).astype(np.float32), z)
  method = weighting.get('graddrop', leak=leak)
  losses = np.ones(t, np.float32)

  def update(rows, z, key):
    inputs = weighting.WeightingInputs(losses=losses, step=jnp.int32(0), gram=None,
                                       jacobian=rows, representation=z)
    return method.update(inputs, method.init(t), key)

  keys = jax.random.split(KEY, 3)
  out = jax.jit(jax.vmap(update, in_axes=(None, None, 0)))(rows, z, keys)
  assert np.all(np.isnan(out.weights))
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], jnp.float32), z)
  us = _uniforms(keys, shapes)
  for k in range(len(keys)):
    for name in z:
      expected = _graddrop_rep_np(rows[name], z[name], us[name][k], np.asarray(leak))
      assert out.direction[name].shape == (3,) + z[name].shape
      np.testing.assert_allclose(out.direction[name][k], expected, rtol=1e-5, atol=1e-6)
  # the masks differ from the parameter form's: sign correction and the batch sum matter
  param_inputs = weighting.WeightingInputs(losses=losses, step=jnp.int32(0), jacobian=rows)
  param = jax.jit(lambda i, k: method.update(i, (), k).direction)(param_inputs, keys[0])
  assert not np.allclose(param['h'], out.direction['h'][0])


# ---------------------------------------------------------------------------- trimmed mean

@pytest.mark.parametrize('t,k', [(1, 0), (3, 1), (5, 2), (8, 1), (8, 3), (16, 3)])  # sort and masks
def test_trimmed_mean_matches_numpy(t, k):
  rng = np.random.default_rng(t + k)
  j = rng.normal(size=(t, 30)).astype(np.float32)
  j[:, :3] = 1.0                                   # ties
  method = weighting.get('trimmed_mean', trim_number=k)
  d, w = jax.jit(lambda j: weighting.combine(method, j, jnp.ones(t))[:2])(j)
  expected = np.sort(j.astype(np.float64), axis=0)[k:t - k].mean(0)
  np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.isnan(w))


def test_trimmed_mean_torchjd_value_and_pytrees():
  j = np.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]], np.float32)
  method = weighting.get('trimmed_mean')
  run = jax.jit(lambda j: weighting.combine(method, j, jnp.ones(4)))
  out = run(j)
  np.testing.assert_allclose(out.direction, [1.5, 2.5])
  assert bool(out.finite)
  out = run({'a': j[:, :1], 'b': j[:, 1:]})
  np.testing.assert_allclose(out.direction['a'], [1.5])
  np.testing.assert_allclose(out.direction['b'], [2.5])


def test_trimmed_mean_needs_enough_tasks():
  method = weighting.get('trimmed_mean', trim_number=2)
  with pytest.raises(ValueError, match=r'trimmed_mean: trim_number=2 needs at least 5 tasks'):
    method.init(4)
  with pytest.raises(ValueError, match='trim_number'):
    weighting.combine(method, np.ones((4, 3), np.float32), np.ones(4))
  inputs = weighting.WeightingInputs(losses=jnp.ones(4), step=jnp.int32(0),
                                     jacobian=jnp.ones((4, 3)))
  with pytest.raises(ValueError, match='trim_number'):
    jax.jit(lambda i: method.update(i, (), None))(inputs)


# ----------------------------------------------------------------------- all five methods

DEFAULTS = {'moco': {}, 'db_mtl': {}, 'excess_mtl': {}, 'graddrop': {}, 'trimmed_mean': {}}


@pytest.mark.parametrize('name', sorted(DEFAULTS))
def test_degenerate_inputs_give_no_nan(name):
  """A zero row, all zeros, identical rows, opposite rows and zero losses, over steps."""
  g = np.random.default_rng(4).normal(size=5)
  mats = [np.stack([g, np.zeros(5), 2 * g]), np.zeros((3, 5)), np.stack([g, g, g]),
          np.stack([g, -g, g])]
  js = np.stack([np.stack([m] * 3) for m in mats] + [np.stack([mats[0]] * 3)])
  losses = np.ones((5, 3, 3))
  losses[1] = 0
  losses[4] = 0
  d, w, state, finite = _run(weighting.get(name), js.astype(np.float32),
                             losses.astype(np.float32))
  assert finite.all()
  assert np.all(np.isfinite(d))
  if name not in ('graddrop', 'trimmed_mean'):
    assert np.all(np.isfinite(w))
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(leaf))
  np.testing.assert_array_equal(d[1], 0)          # all-zero Jacobian: zero direction


@pytest.mark.parametrize('name', sorted(DEFAULTS))
def test_method_kinds(name):
  method = weighting.get(name)
  assert method.needs is weighting.Needs.JACOBIAN
  assert method.direct == (name != 'excess_mtl')
  assert method.state_like_params == (name in ('moco', 'db_mtl', 'excess_mtl'))
  assert method.random == (name == 'graddrop')
  assert method.head_grads == ('weighted' if name == 'excess_mtl' else 'unweighted')


@pytest.mark.parametrize('name,hp,field', [
    ('moco', {'beta': 1.5}, 'beta'), ('moco', {'beta_sigma': -1}, 'beta_sigma'),
    ('moco', {'gamma': float('nan')}, 'gamma'), ('moco', {'gamma_sigma': -0.1}, 'gamma_sigma'),
    ('moco', {'rho': -1}, 'rho'), ('moco', {'scale_by_loss': 1}, 'scale_by_loss'),
    ('moco', {'simplex': 'sparsemax'}, 'simplex'), ('moco', {'match_sum': 'yes'}, 'match_sum'),
    ('db_mtl', {'beta': 2.0}, 'beta'), ('db_mtl', {'beta_sigma': -1}, 'beta_sigma'),
    ('excess_mtl', {'robust_step_size': 0.0}, 'robust_step_size'),
    ('excess_mtl', {'n_warmup_steps': -1}, 'n_warmup_steps'),
    ('excess_mtl', {'n_warmup_steps': 1.5}, 'n_warmup_steps'),
    ('excess_mtl', {'update_on_first_call': None}, 'update_on_first_call'),
    ('excess_mtl', {'match_sum': 0}, 'match_sum'),
    ('graddrop', {'leak': -0.1}, 'leak'), ('graddrop', {'leak': [0.5, 1.5]}, 'leak'),
    ('graddrop', {'leak': 'x'}, 'leak'), ('graddrop', {'f': 3}, 'f'),
    ('trimmed_mean', {'trim_number': -1}, 'trim_number'),
    ('trimmed_mean', {'trim_number': 1.0}, 'trim_number')])
def test_bad_hyperparameters(name, hp, field):
  with pytest.raises(ValueError, match=f'^{name}: {field}'):
    weighting.get(name, **hp)


def test_graddrop_leak_per_task_must_match_the_tasks():
  method = weighting.get('graddrop', leak=[0.1, 0.2])
  with pytest.raises(ValueError, match='graddrop: 2 leak values given for 3 tasks'):
    weighting.combine(method, np.ones((3, 4), np.float32), np.ones(3), key=KEY)


def test_parameter_sized_states_are_flat_float32():
  shared = {'w': jax.ShapeDtypeStruct((3, 4), jnp.float32), 'b': jnp.zeros(5)}
  for name, key in (('moco', 'y'), ('db_mtl', 'buffer'), ('excess_mtl', 'sq_sum')):
    state = weighting.get(name).init(3, shared)
    assert state[key].shape == (3, 17) and state[key].dtype == jnp.float32, name
