"""MoDo and SDMGrad, the methods that read the gradients of independent sub-batches.

Against NumPy re-implementations of the papers' updates (float64, sort-based simplex
projection) over consecutive steps, state included; through ``mtl_value_and_grad`` against
per-part Jacobians from ``jax.jacrev``; and through the train step.
"""

import functools

import chex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import init_train_state, make_train_step, models, mtl_value_and_grad, weighting
from mtl_jax.data import make_synthetic, take

STEPS = 4
CASES = ('conflicting', 'colinear', 'rank_deficient', 'negative_diagonal', 'zero_row')


# ----------------------------------------------------------------------------- NumPy versions

def _np_project(v):
  """Euclidean projection onto the simplex (sort and cumulative sum; Duchi et al. 2008)."""
  u = np.sort(v)[::-1]
  css = np.cumsum(u)
  k = np.arange(1, v.size + 1)
  r = np.nonzero(u * k > css - 1)[0][-1]
  return np.maximum(v - (css[r] - 1) / (r + 1), 0)


def _np_modo(j, lam, t, gamma=0.1, rho=0.1, k=3, match_sum=True):
  """(d, weights [k T], lambda) of one MoDo step on the [k T, P] rows ``j``."""
  parts = j.reshape(k, t, -1)
  a = parts[0] @ parts[1].T
  lam = _np_project(lam - gamma * (a @ lam + rho * lam))
  alpha = lam * (t if match_sum else 1)
  if k == 3:
    weights = np.concatenate([np.zeros(2 * t), alpha])
    d = parts[2].T @ alpha
  else:
    weights = np.concatenate([alpha / 2, alpha / 2])
    d = (parts[0] + parts[1]).T @ alpha / 2
  return d, weights, lam


def _np_sdmgrad(j, w, t, lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3, pref=None,
                match_sum=True):
  """(d, weights [3 T], w) of one SDMGrad step on the [3 T, P] rows ``j``."""
  xi, xi2, zeta = j.reshape(3, t, -1)
  a = xi @ xi2.T
  scale = np.mean(np.sqrt(np.maximum(np.diag(a), 0)))
  a = a / (scale ** 2 + 1e-8)
  w_tilde = np.full(t, 1 / t) if pref is None else np.asarray(pref, np.float64)
  velocity = np.zeros(t)
  for _ in range(n_iter):
    velocity = momentum * velocity + a @ (w + lambda_ * w_tilde)
    w = _np_project(w - lr * velocity)
  alpha = (w + lambda_ * w_tilde) / (1 + lambda_) * (t if match_sum else 1)
  return zeta.T @ alpha, np.concatenate([np.zeros(2 * t), alpha]), w


# ------------------------------------------------------------------------------ the problems

def _jacobians(kind, t, k, steps, seed, p=6):
  """[steps, k T, P] float32 rows: one stochastic Jacobian per step."""
  rng = np.random.default_rng(seed)
  shape = (steps, k * t)
  if kind == 'conflicting':
    j = rng.normal(size=shape + (p,))
  elif kind == 'colinear':            # every row a (signed) multiple of one direction
    j = rng.normal(size=shape)[..., None] * rng.normal(size=(steps, 1, p))
  elif kind == 'rank_deficient':      # rank 2 < T rows (T > 2)
    j = rng.normal(size=shape + (2,)) @ rng.normal(size=(steps, 2, p))
  elif kind == 'negative_diagonal':   # xi' = -xi: every A_tt < 0, SDMGrad's scale is 0
    j = rng.normal(size=shape + (p,))
    j[:, t:2 * t] = -j[:, :t]
  else:                               # one task's gradient 0 on every sub-batch
    j = rng.normal(size=shape + (p,))
    j[:, ::t] = 0
  scales = 10.0 ** rng.uniform(-1, 1, size=(steps, 1, 1))
  return (j * scales).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _stepper(name, t, **hparams):
  """jit(vmap(one combine step)) of method ``name`` for T = ``t``."""
  method = weighting.get(name, **hparams)
  run = lambda j, s: weighting.combine(method, j, jnp.ones(j.shape[0]), state=s)
  return method, jax.jit(jax.vmap(run))


def _compare(name, t, np_step, state_key, hparams, k=3, tol=2e-4):
  """Every case kind, STEPS consecutive steps from the initial state, both evolving their own
  state; returns the largest relative deviation of the direction."""
  method, step = _stepper(name, t, **hparams)
  js = np.stack([_jacobians(kind, t, k, STEPS, seed=10 * t + i) for i, kind in enumerate(CASES)])
  state = jax.tree.map(lambda x: jnp.stack([x] * len(CASES)), method.init(t))
  np_states = [np.full(t, 1 / t)] * len(CASES)
  worst = 0.0
  for s in range(STEPS):
    out = step(js[:, s], state)
    state = out.state
    assert np.all(np.asarray(out.finite))
    for c, kind in enumerate(CASES):
      j = js[c, s].astype(np.float64)
      d, weights, np_states[c] = np_step(j, np_states[c], t)
      msg = f'{name} {hparams} T={t} {kind} step {s}'
      np.testing.assert_allclose(out.weights[c], weights, atol=tol, err_msg=msg)
      np.testing.assert_allclose(state[state_key][c], np_states[c], atol=tol, err_msg=msg)
      np.testing.assert_allclose(np.sum(state[state_key][c]), 1.0, atol=1e-5, err_msg=msg)
      scale = max(np.linalg.norm(d), np.abs(j).max())
      np.testing.assert_allclose(out.direction[c], d, atol=tol * scale, err_msg=msg)
      worst = max(worst, np.abs(np.asarray(out.direction[c]) - d).max() / scale)
  return worst


@pytest.mark.parametrize('t', [2, 3, 4, 5, 6])
def test_modo_matches_numpy(t):
  _compare('modo', t, _np_modo, 'lambda', {})
  other = dict(gamma=0.5, rho=0.0, match_sum=False)
  _compare('modo', t, functools.partial(_np_modo, gamma=0.5, rho=0.0, match_sum=False),
           'lambda', other)
  _compare('modo', t, functools.partial(_np_modo, gamma=1e-3, k=2), 'lambda',
           dict(gamma=1e-3, num_batches=2), k=2)


@pytest.mark.parametrize('t', [2, 3, 4, 5, 6])
def test_sdmgrad_matches_numpy(t):
  _compare('sdmgrad', t, _np_sdmgrad, 'w', {})
  pref = tuple(np.linspace(1.0, 2.0, t) / np.linspace(1.0, 2.0, t).sum())
  hparams = dict(lr=5.0, momentum=0.0, n_iter=7, lambda_=1.5, match_sum=False)
  _compare('sdmgrad', t, functools.partial(_np_sdmgrad, **hparams, pref=pref), 'w',
           dict(hparams, pref_vector=pref))


def test_published_conventions():
  """TorchJD's defaults and the reference libraries' scale (match_sum=False: lambda on the
  simplex); the direction ignores xi, xi' in the 3-batch forms."""
  assert weighting.hyperparameters('modo') == {'gamma': 0.1, 'rho': 0.1, 'num_batches': 3,
                                               'match_sum': True}
  assert weighting.hyperparameters('sdmgrad') == {
      'lr': 10.0, 'momentum': 0.5, 'n_iter': 20, 'lambda_': 0.3, 'pref_vector': None,
      'match_sum': True}
  assert weighting.get('modo').sub_batches == 3 and weighting.get('sdmgrad').sub_batches == 3
  assert weighting.get('modo', num_batches=2).sub_batches == 2
  j = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
  for name in ('modo', 'sdmgrad'):
    m = weighting.get(name, match_sum=False)
    out = weighting.combine(m, j, np.ones(9), state=m.init(3))
    np.testing.assert_allclose(np.sum(out.weights), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out.weights[:6], 0)
    j2 = j.copy()
    j2[:6] *= -3                   # changes A, not J_3, with the state fixed: weights move
    out2 = weighting.combine(m, j2, np.ones(9), state=m.init(3))
    np.testing.assert_allclose(out2.direction, np.asarray(out2.weights[6:]) @ j[6:], rtol=1e-5)


def test_degenerate_inputs_stay_finite():
  """All-zero rows, identical tasks, zero losses: finite, on the simplex."""
  for t in (2, 4):
    u = np.random.default_rng(t).normal(size=(1, 5)).astype(np.float32)
    for j in (np.zeros((3 * t, 5), np.float32), np.repeat(u, 3 * t, 0)):
      for name in ('modo', 'sdmgrad'):
        m = weighting.get(name)
        out = weighting.combine(m, j, np.zeros(3 * t), state=m.init(t))
        assert bool(out.finite), (name, t)
        key = 'lambda' if name == 'modo' else 'w'
        np.testing.assert_allclose(np.sum(out.state[key]), 1.0, rtol=1e-5)
        assert np.all(np.asarray(out.state[key]) >= 0)


# ----------------------------------------------------------- the estimator on a plain model

T, D, H, PART = 3, 4, 5, 4     # a batch of 3 * PART examples


def _mlp_params(seed):
  rng = np.random.default_rng(seed)
  return {'w1': rng.normal(size=(D, H)).astype(np.float32),
          'b1': rng.normal(size=(H,)).astype(np.float32) * 0.1,
          'heads': rng.normal(size=(T, H)).astype(np.float32)}


def losses_fn(params, x, y):
  z = jnp.tanh(x @ params['w1'] + params['b1'])
  return jnp.mean((z @ params['heads'].T - y) ** 2, axis=0)


SHARED = {'w1': True, 'b1': True, 'heads': False}


def _part_jacobian(params, x, y):
  """[T, P] Jacobian of one part's losses w.r.t. the shared leaves (w1, b1), by jacrev."""
  jac = jax.jacrev(losses_fn)(params, x, y)
  return np.concatenate([np.asarray(jac['b1']).reshape(T, -1),
                         np.asarray(jac['w1']).reshape(T, -1)], 1).astype(np.float64)


def _representation(params, x, y):
  del y
  return jnp.tanh(x @ params['w1'] + params['b1'])


def _heads(z, params, x, y):
  del x
  return jnp.mean((z @ params['heads'].T - y) ** 2, axis=0)


@pytest.mark.parametrize('name,hparams,mode,split', [
    ('modo', {}, 'param', False), ('modo', {'num_batches': 2, 'gamma': 0.5}, 'auto', False),
    ('sdmgrad', {}, 'gram', False), ('modo', {}, 'gram', True), ('sdmgrad', {}, 'param', True)])
def test_estimator_on_independent_sub_batches(name, hparams, mode, split):
  """Two steps of mtl_value_and_grad: the shared gradient is built from the parts' own
  Jacobians (A from parts 1, 2; d from part 3, or the mean of parts 1, 2); the unweighted
  head gradients are the whole batch's.  With ``split``, through representation_fn and
  heads_fn (one head backward pass, the trunk pulled back on copies)."""
  method = weighting.get(name, **hparams)
  k = method.sub_batches
  fns = (dict(representation_fn=_representation, heads_fn=_heads) if split
         else dict(losses_fn=losses_fn))
  vg = jax.jit(mtl_value_and_grad(fns.pop('losses_fn', None), method, shared=SHARED,
                                  mode=mode, **fns))
  params = _mlp_params(0)
  state = method.init(T)
  np_state = np.full(T, 1 / T)
  rng = np.random.default_rng(1)
  np_step = _np_modo if name == 'modo' else _np_sdmgrad
  np_hparams = {'gamma': hparams.get('gamma', 0.1), 'k': k} if name == 'modo' else {}
  for _ in range(2):
    x = rng.normal(size=(k * PART, D)).astype(np.float32)
    y = rng.normal(size=(k * PART, T)).astype(np.float32)
    losses, grads, weights, state = vg(params, state, None, x, y)
    j = np.concatenate([_part_jacobian(params, x[b * PART:(b + 1) * PART],
                                       y[b * PART:(b + 1) * PART]) for b in range(k)])
    d, np_weights, np_state = np_step(j, np_state, T, **np_hparams)
    shared = np.concatenate([np.asarray(grads['b1']).reshape(-1),
                             np.asarray(grads['w1']).reshape(-1)])
    np.testing.assert_allclose(shared, d, rtol=1e-4, atol=1e-4 * np.abs(d).max())
    np.testing.assert_allclose(weights, np_weights.reshape(k, T).sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.tree.leaves(state)[0], np_state, atol=1e-5)
    whole = jax.grad(lambda p: losses_fn(p, x, y).sum())(params)
    np.testing.assert_allclose(grads['heads'], whole['heads'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, losses_fn(params, x, y), rtol=1e-5)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)


# ---------------------------------------------------------------------------- the train step

@pytest.mark.parametrize('name', ['modo', 'sdmgrad'])
def test_train_step(name):
  ds = make_synthetic(3, 0.5, input_dim=8, sizes=(64, 4, 4))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(8,)))
  method = weighting.get(name)
  optimizer = optax.adam(1e-2)
  batch = take(ds.split('train'), np.arange(12))
  state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  step = make_train_step(model, ds.tasks, optimizer, method, donate=False)
  first = None
  for i in range(4):
    state, metrics = step(state, take(ds.split('train'), np.arange(12 * i, 12 * i + 12)))
    assert np.all(np.isfinite(metrics['losses'])) and int(metrics['rejected']) == 0
    np.testing.assert_allclose(np.sum(metrics['weights']), 3.0, rtol=1e-5)   # lambda x T
    first = state if first is None else first
  weights = jax.tree.leaves(state.weighting_state)[0]
  assert not np.allclose(weights, jax.tree.leaves(first.weighting_state)[0])   # it adapts
  with pytest.raises(ValueError, match=r'split into 3 equal sub-batches: batch\S* has shape '
                                       r'\(16,'):
    step(state, take(ds.split('train'), np.arange(16)))


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize('name,hparams,field', [
    ('modo', {'gamma': 0.0}, 'gamma'), ('modo', {'gamma': float('nan')}, 'gamma'),
    ('modo', {'rho': -0.1}, 'rho'), ('modo', {'num_batches': 4}, 'num_batches'),
    ('modo', {'num_batches': 3.0}, 'num_batches'), ('modo', {'num_batches': True}, 'num_batches'),
    ('modo', {'match_sum': 1}, 'match_sum'),
    ('sdmgrad', {'lr': 0.0}, 'lr'), ('sdmgrad', {'lr': 'fast'}, 'lr'),
    ('sdmgrad', {'momentum': 1.0}, 'momentum'), ('sdmgrad', {'momentum': -0.1}, 'momentum'),
    ('sdmgrad', {'n_iter': 0}, 'n_iter'), ('sdmgrad', {'n_iter': 2.5}, 'n_iter'),
    ('sdmgrad', {'lambda_': -1.0}, 'lambda_'), ('sdmgrad', {'pref_vector': ()}, 'pref_vector'),
    ('sdmgrad', {'pref_vector': (1.0, float('inf'))}, 'pref_vector'),
    ('sdmgrad', {'pref_vector': 'ab'}, 'pref_vector'),
    ('sdmgrad', {'match_sum': None}, 'match_sum')])
def test_bad_hyperparameters(name, hparams, field):
  with pytest.raises(ValueError, match=f'^{name}: {field} '):
    weighting.get(name, **hparams)


@pytest.mark.parametrize('name', ['modo', 'sdmgrad'])
def test_rows_tasks_and_the_library_paths_it_refuses(name):
  method = weighting.get(name)
  j = np.ones((10, 4), np.float32)
  with pytest.raises(ValueError, match=r'reads 3 sub-batches: pass k \* T rows .* got 10 rows'):
    weighting.combine(method, j, np.ones(10), state=method.init(3))
  with pytest.raises(ValueError, match='needs at least 2 tasks, got 1'):
    weighting.combine(method, j[:3], np.ones(3), state=method.init(1))
  with pytest.raises(ValueError, match='made for 2 tasks but there are 3'):
    weighting.combine(method, j[:9], np.ones(9), state=method.init(2))
  with pytest.raises(ValueError, match='as_optax sees one task-stacked update'):
    weighting.as_optax(method, 3)
  vg = mtl_value_and_grad(None, method, shared=SHARED, mode='rep',
                          representation_fn=lambda p, x, y: jnp.tanh(x @ p['w1']),
                          heads_fn=lambda z, p, x, y: jnp.mean((z @ p['heads'].T - y) ** 2, 0))
  x = np.ones((12, D), np.float32)
  with pytest.raises(weighting.OptionError, match="mode: .*'rep' has one representation"):
    vg(_mlp_params(0), method.init(T), None, x, np.ones((12, T), np.float32))
  if name == 'sdmgrad':
    with pytest.raises(ValueError, match='sdmgrad: pref_vector has 2 entries for 3 tasks'):
      weighting.get('sdmgrad', pref_vector=(0.5, 0.5)).init(3)


def test_per_sub_batch_rows_equal_the_gramian_of_all_rows(tmp_path):
  """Modes 'param' (the k T rows of J from T pullbacks on k copies of the shared parameters)
  and 'gram' (their Gramian from the layer rules over (task, copy) pairs, d from one VJP)
  train a DSelect-k model (experts shared, gates with auxiliary losses task-specific) to the
  same parameters through the trainer."""
  from mtl_jax import train, transfer
  from tests.conftest import tiny_config
  params = {}
  for mode in ('param', 'gram'):
    config = tiny_config(**{'weighting.name': 'modo', 'weighting.mode': mode,
                            'train.batch_size': 30, 'train.steps': 2,
                            'model.name': 'dselect_k'})
    train.train_and_evaluate(config, str(tmp_path / mode))
    params[mode] = transfer.load_params(str(tmp_path / mode))
  for a, b in zip(jax.tree.leaves(params['param']), jax.tree.leaves(params['gram'])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_per_sub_batch_rows_with_auxiliary_losses_on_the_shared_parameters():
  """The engine directly, on a model whose auxiliary loss reads the shared parameters: the
  Jacobian rows (mode 'param') and the Gramian over copies (mode 'gram', where the auxiliary
  gradient rides in the VJP for d) give the same shared and head gradients."""
  from mtl_jax.weighting import Options, task_gradients
  from mtl_jax._src.weighting import engine
  rng = np.random.default_rng(3)
  params = {'shared': {'w': jnp.asarray(rng.normal(size=(D, 4)), jnp.float32)},
            'task': {'v': jnp.asarray(rng.normal(size=(4, T)), jnp.float32)}}
  batch = {'x': jnp.asarray(rng.normal(size=(3 * PART, D)), jnp.float32),
           'y': jnp.asarray(rng.normal(size=(3 * PART, T)), jnp.float32)}

  def bind(part, r):
    def full(p):
      pred = jnp.tanh(part['x'] @ p['shared']['w']) @ p['task']['v']
      losses = jnp.mean((pred - part['y']) ** 2, axis=0)
      reg = 0.1 * jnp.sum(p['shared']['w'] ** 2) * jnp.mean(part['x'] ** 2)
      return losses, {'reg': reg}, {}
    return engine.LossFns(full)

  method = weighting.get('modo')
  out = {}
  for mode in ('param', 'gram'):
    fns = engine.sub_batch_fns(bind, batch, 3)
    out[mode] = jax.jit(lambda p, s: task_gradients(method, p, s, None, jnp.int32(0), fns,
                                                    Options(mode=mode)))(params, method.init(T))
  chex.assert_trees_all_close(out['param'].grads, out['gram'].grads, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['param'].weights, out['gram'].weights, rtol=1e-5, atol=1e-6)
  reg_only = jax.grad(lambda w: 0.1 * jnp.sum(w ** 2) * jnp.mean(batch['x'] ** 2))(
      params['shared']['w'])
  assert float(jnp.max(jnp.abs(reg_only))) > 1e-2     # the auxiliary gradient is not negligible
