"""The Gramian mode (``weighting.mode='gram'``): G from layer inputs and output cotangents.

Every Gram matrix here is checked against J J^T of ``jax.jacrev``'s Jacobian, multiplied in
float64 NumPy, to float32 rounding: |G - J J^T| <= 2e-5 max|J J^T| (observed <= 1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from mtl_jax import models, tasks as T, weighting
from mtl_jax import init_train_state, make_train_step
from mtl_jax._src.objective import Objective
from mtl_jax._src.weighting import engine, gramian

TASKS = T.TaskSet([T.regression('a'), T.multiclass('b', 3), T.binary('c')])
RTOL = 2e-5


def _reference_gram(fn, shared):
  """J J^T in float64 from ``jax.jacrev`` of ``fn: shared -> [k]``."""
  jac = jax.jit(jax.jacrev(fn))(shared)
  rows = np.concatenate([np.asarray(leaf, np.float64).reshape(leaf.shape[0], -1)
                         for leaf in jax.tree.leaves(jac)], axis=1)
  return rows @ rows.T


def _assert_gram(actual, expected, what):
  actual = np.asarray(actual, np.float64)
  scale = np.abs(expected).max()
  assert scale > 0, what
  err = np.abs(actual - expected).max() / scale
  assert err <= RTOL, f'{what}: relative error {err:.2e}'


def _batch(num=6, shape=(8,), seed=0, masked=False):
  rng = np.random.default_rng(seed)
  masks = {n: np.ones((num,), bool) for n in TASKS.names}
  if masked:
    masks['b'] = np.array([True, False] * (num // 2))
  return {'inputs': rng.standard_normal((num,) + shape).astype(np.float32),
          'labels': {'a': rng.standard_normal((num, 1)).astype(np.float32),
                     'b': rng.integers(0, 3, (num,)).astype(np.int32),
                     'c': rng.integers(0, 2, (num, 1)).astype(np.float32)},
          'masks': masks}


def _engine_case(model, batch, method='mgda', subset=None):
  """Under one jit: the engine's output in mode 'gram' and the Jacobian of the trained tasks'
  losses from ``jax.jacrev`` (rows [k, P], float64)."""
  variables = jax.jit(model.init, static_argnames='train')(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, batch['inputs'])
  params = variables['params']
  params.setdefault('shared', {})
  state = {k: v for k, v in variables.items() if k != 'params'}
  fns = Objective(model, TASKS).bind(params, state, batch, jax.random.PRNGKey(2))
  m = weighting.get(method)

  def both(p):
    out = engine.task_gradients(m, p, m.init(len(TASKS)), None, 0, fns,
                                engine.Options(mode='gram'), subset)
    rows = lambda s: fns.full({'shared': s, 'task': p['task']})[0]
    pick = (lambda s: rows(s)[subset]) if subset is not None else rows
    return out, (jax.jacrev(pick)(p['shared']) if jax.tree.leaves(p['shared']) else {})

  out, jac = jax.jit(both)(params)
  leaves = jax.tree.leaves(jac)
  rows = (np.concatenate([np.asarray(l, np.float64).reshape(l.shape[0], -1) for l in leaves], 1)
          if leaves else np.zeros((len(TASKS) if subset is None else len(subset), 0)))
  return out, rows


def _check(out, rows, what, subset=None):
  """G = J J^T, and the shared gradient d = J^T alpha (alpha: the engine's weights)."""
  expected = rows @ rows.T
  if not rows.size:                    # no shared parameters ('independent'): G = 0
    assert np.all(np.asarray(out.gram) == 0), what
    return
  _assert_gram(_gram_of(out, subset), expected, what)
  if out.aux_losses:                   # d also holds the auxiliary losses' gradient
    return
  alpha = np.asarray(out.weights, np.float64)
  alpha = alpha if subset is None else alpha[np.asarray(subset)]
  d = np.concatenate([np.asarray(l, np.float64).ravel()
                      for l in jax.tree.leaves(out.grads['shared'])])
  reference = alpha @ rows
  assert np.abs(d - reference).max() <= RTOL * 10 * np.abs(reference).max(), what


def _gram_of(out, subset):
  g = np.asarray(out.gram, np.float64)
  return g if subset is None else g[np.ix_(subset, subset)]


BACKBONES = {
    'mlp': (dict(hidden=(7, 6)), (8,)),
    'cnn1d': (dict(channels=(3, 4)), (8,)),
    'cnn2d': (dict(channels=(3, 4), output='flatten'), (6, 6, 2)),
    'cnn2d_batchnorm_dropout': (dict(channels=(3, 4), norm='batch', dropout=0.3), (6, 6, 1)),
    'transformer': (dict(), (8,)),
    'lenet': (dict(), (28, 28, 1)),
}


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_gram_mode_equals_jacrev_for_every_backbone(name):
  kwargs, shape = BACKBONES[name]
  backbone = models.get_backbone('cnn' if name.startswith('cnn') else name, **kwargs)
  model = models.get('shared_bottom', TASKS, backbone, tower_hidden=(4,), dropout=0.2)
  _check(*_engine_case(model, _batch(4, shape)), name)


ZOO = [n for n in models.names() if n != 'adversarial']


@pytest.mark.parametrize('name', ZOO)
def test_gram_mode_equals_jacrev_for_every_architecture(name):
  model = models.get(name, TASKS, models.get_backbone('mlp', hidden=(6, 5)), tower_hidden=(4,))
  _check(*_engine_case(model, _batch(masked=True), method='upgrad'), name)


def test_gram_mode_with_task_sampling_and_auxiliary_losses():
  model = models.get('adversarial', TASKS, models.get_backbone('mlp', hidden=(6,)),
                     tower_hidden=(4,), per_task_inputs=True)
  batch = _batch(shape=(3, 8))
  subset = jnp.array([0, 2])
  out, rows = _engine_case(model, batch, subset=subset)
  assert np.all(np.isnan(np.asarray(out.gram)[1])) and out.weights[1] == 0
  assert float(out.aux_losses['adversarial']) != 0
  # The shared gradient is alpha^T J plus the auxiliary losses' gradient: check G only.
  _assert_gram(_gram_of(out, [0, 2]), rows @ rows.T, 'adversarial, tasks 0 and 2')


# ------------------------------------------------------------------ the layer rules directly


def _conv(x, w, **kw):
  return lax.conv_general_dilated(x, w, **kw)


def _layers(p, x, ids):
  """A plain-JAX model touching every rule and fallback: dense with the weight on either side
  of the dot, a batched dot (stacked experts), 1-D and 2-D convolutions (NCHW/OIHW, strides,
  padding, dilation, and a grouped one that falls back), an embedding lookup (ids out of
  range dropped), a weight used twice and one inside a scan (both fall back)."""
  h = jnp.tanh(x @ p['dense'] + p['bias'])                        # [B, 6]
  left = jnp.tanh((p['left'] @ h.T).T)                            # weight as lhs: [B, 5]
  experts = jnp.tanh(jnp.einsum('bi,eio->ebo', h, p['experts']))  # [E, B, 4]
  img = h[:, :4].reshape(-1, 1, 2, 2) * jnp.ones((1, 2, 1, 1))    # [B, 2, 2, 2] NCHW
  c2 = _conv(jnp.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1))), p['conv2d'],
             window_strides=(1, 1), padding=((1, 0), (0, 1)), rhs_dilation=(1, 2),
             dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  c1 = _conv(h[:, None, :], p['conv1d'], window_strides=(2,), padding='SAME',
             dimension_numbers=('NCH', 'OIH', 'NCH'))
  grouped = _conv(jnp.concatenate([h[:, None, :]] * 2, 1), p['grouped'], window_strides=(1,),
                  padding='VALID', feature_group_count=2)
  emb = jnp.take(p['table'], ids, axis=0, mode='fill', fill_value=0.0)
  tied = jnp.tanh(h @ p['tied']) @ p['tied'].T
  scanned, _ = lax.scan(lambda c, _: (jnp.tanh(c @ p['scan']), None), h, None, length=2)
  feats = [left, experts.transpose(1, 0, 2), c2, c1, grouped, emb, tied, scanned]
  z = jnp.concatenate([f.reshape(x.shape[0], -1) for f in feats], axis=1)
  return jnp.stack([jnp.mean(z ** 2), jnp.mean(jnp.sin(z)), jnp.mean(z[:, ::3])])


def _layer_params(seed=0):
  shapes = {'dense': (5, 6), 'bias': (6,), 'left': (5, 6), 'experts': (3, 6, 4),
            'conv2d': (3, 2, 2, 2), 'conv1d': (2, 1, 3), 'grouped': (4, 1, 3),
            'table': (7, 3), 'tied': (6, 6), 'scan': (6, 6)}
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return {k: 0.5 * jax.random.normal(key, s) for (k, s), key in zip(shapes.items(), keys)}


@pytest.mark.parametrize('policy', gramian.POLICIES)
def test_every_rule_and_fallback_equals_jacrev(policy):
  p = _layer_params()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  ids = jnp.array([[1, 2], [2, 9], [1, 1], [-8, 6]])     # 9 and -8 are out of range
  fn = lambda q: _layers(q, x, ids)
  r = gramian.gram_vjp(fn, p, policy=policy)     # traced eagerly: the taps, then jitted
  tapped = {jax.tree_util.tree_leaves_with_path(p)[t.leaf][0][0].key: t.eqn.primitive.name
            for t in r.taps.values()}
  assert tapped == {'dense': 'dot_general', 'left': 'dot_general', 'experts': 'dot_general',
                    'conv2d': 'conv_general_dilated', 'conv1d': 'conv_general_dilated',
                    'grouped': 'conv_general_dilated', 'table': 'gather'}
  ct = jnp.array([0.3, -1.0, 2.0])
  g, grad = jax.jit(lambda q: (lambda s: (s.gram(jnp.eye(3)), s.vjp(ct)[0]))(
      gramian.gram_vjp(fn, q, policy=policy)))(p)
  _assert_gram(g, _reference_gram(fn, p), policy)
  # The VJP is jax.vjp's.
  expected = jax.jit(lambda q: jax.vjp(fn, q)[1](ct)[0])(p)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gram_of_arbitrary_cotangent_rows_and_float64():
  p = _layer_params(1)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
  ids = jnp.array([[0, 1], [2, 3], [4, 5], [6, 0]])
  rows = jax.random.normal(jax.random.PRNGKey(4), (5, 3))     # 5 cotangent rows
  fn = lambda q: rows @ _layers(q, x, ids)
  g = jax.jit(lambda q: gramian.gram_vjp(lambda q: _layers(q, x, ids), q).gram(rows))(p)
  _assert_gram(g, _reference_gram(fn, p), 'rows')
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    x64 = x.astype(jnp.float64)
    g = jax.jit(lambda q: gramian.gram_vjp(lambda q: _layers(q, x64, ids), q).gram(
        jnp.eye(3)))(p64)
    assert g.dtype == jnp.float64
    expected = _reference_gram(lambda q: _layers(q, x64, ids), p64)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize('policy', ['identity', 'explicit'])   # 'cheapest' picks one of them
def test_gram_over_copies_equals_jacrev(policy):
  """``gram_vjp(copies=k)``: the layers run on k sub-batches, each with its own copy of the
  parameters (``vmap``); G over (row, copy) pairs is that of each copy's gradient, row
  t k + b = copy b's gradient from row t, against jacrev.  Dense layers with the copy axis as
  a dot batch dimension take the rule over copies; convolutions (batched kernels become
  feature groups), the lookup and the tied and scanned weights their leaf gradients.  The
  VJP summed over the copies is jax.vjp's."""
  k = 3
  p = _layer_params(2)
  pk = jax.tree.map(lambda a: jnp.stack([a] * k), p)
  x = jax.random.normal(jax.random.PRNGKey(5), (k, 4, 5))
  ids = jnp.array([[[1, 2], [2, 9], [1, 1], [-8, 6]], [[0, 0], [3, 4], [5, 6], [6, 1]],
                   [[2, 2], [2, 2], [0, 6], [1, 5]]])
  fn = lambda q: jax.vmap(_layers)(q, x, ids)                   # [k, 3]: copy b on part b
  rows = jnp.tile(jnp.eye(3)[:, None, :], (1, k, 1))          # row t: task t on every part
  r = gramian.gram_vjp(fn, pk, policy=policy, copies=k)
  by_copy = {jax.tree_util.tree_leaves_with_path(p)[t.leaf][0][0].key
             for t in r.taps.values() if gramian._copy_dims(t) is not None}
  assert {'dense', 'left', 'experts'} <= by_copy
  np.testing.assert_allclose(r.out, fn(pk), rtol=1e-5, atol=1e-6)
  ct = jax.random.normal(jax.random.PRNGKey(6), (k, 3))
  g, grad = jax.jit(lambda q: (lambda s: (s.gram(rows), s.vjp(ct)[0]))(
      gramian.gram_vjp(fn, q, policy=policy, copies=k)))(pk)
  jac = jax.jit(jax.jacrev(fn))(pk)                           # leaves [k, 3, k, ...]
  ref = np.stack([np.concatenate([np.asarray(leaf[b, t, b], np.float64).reshape(-1)
                                  for leaf in jax.tree.leaves(jac)])
                  for t in range(3) for b in range(k)])
  _assert_gram(g, ref @ ref.T, policy)
  expected = jax.jit(lambda q: jax.vjp(fn, q)[1](ct)[0])(pk)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a.sum(0), b.sum(0), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='copies=2: every shared leaf needs a leading axis'):
    gramian.gram_vjp(fn, pk, copies=2)


# ------------------------------------------------------------------ selection and training


def test_auto_mode_picks_the_exact_mode_of_each_method():
  resolve = lambda name, **kw: engine.resolve_mode(weighting.get(name, **kw),
                                                   engine.Options(**kw.pop('opts', {})))
  assert engine.Options().mode == 'auto'
  assert resolve('upgrad') == 'gram' and resolve('mgda') == 'gram'
  assert resolve('gradnorm', layer='last') == 'param'          # reads the Jacobian
  assert resolve('ew') == 'gram'                                # loss-only: G for diagnostics
  assert engine.resolve_mode(weighting.get('mgda'), engine.Options(chunk_size=2)) == 'param'
  assert engine.resolve_mode(weighting.get('mgda'), engine.Options(mode='rep')) == 'rep'
  with pytest.raises(engine.OptionError, match='mode'):
    engine.check(weighting.get('gradnorm', layer='last'), 3, engine.Options(mode='gram'), True)
  with pytest.raises(engine.OptionError, match='chunk_size'):
    engine.check(weighting.get('mgda'), 3, engine.Options(mode='gram', chunk_size=2), True)


GRAM_METHODS = ['aligned_mtl', 'cagrad', 'dualproj', 'gradnorm', 'imtl_g', 'mgda', 'nash_mtl',
                'pcgrad', 'upgrad']


def test_every_gram_method_trains_the_same_50_steps_in_gram_and_param_mode():
  model = models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=(4,))
  batch = jax.tree.map(jnp.asarray, _batch(8))
  for name in GRAM_METHODS:
    method = weighting.get(name)
    state = init_train_state(model, TASKS, optax.sgd(0.05), method, batch['inputs'],
                             jax.random.PRNGKey(0))

    def train(mode):
      step = make_train_step(model, TASKS, optax.sgd(0.05), method, mode=mode, jit=False)
      return lax.scan(lambda c, _: (step(c, batch)[0], None), state, None, length=50)[0]

    gram, param = jax.jit(lambda: (train('gram').params, train('param').params))()
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(gram),
                                                         jax.tree.leaves(state.params))]
    assert max(moved) > 1e-2, name
    for a, b in zip(jax.tree.leaves(gram), jax.tree.leaves(param)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)


def test_auto_takes_the_gramian_mode_only_where_its_rules_pay_off():
  """Dense layers on a batch smaller than their inputs: K = x x^T is cheaper than the
  per-task gradients; a convolution over many positions: it is not (``pays_off`` then sends
  mode 'auto' to the Jacobian)."""
  x = jnp.ones((4, 50))
  dense = gramian.gram_vjp(lambda w: jnp.stack([jnp.sum(x @ w), jnp.sum(jnp.sin(x @ w))]),
                           jnp.ones((50, 40)))
  assert not dense.taps                            # w used twice: its explicit gradient
  dense = gramian.gram_vjp(lambda w: (lambda y: jnp.stack([jnp.sum(y), jnp.sum(jnp.sin(y))]))(
      x @ w), jnp.ones((50, 40)))
  assert len(dense.taps) == 1 and gramian.pays_off(dense.taps, 8)
  img = jnp.ones((4, 16, 16, 3))
  conv = lambda w: lax.conv_general_dilated(img, w, (1, 1), 'SAME',
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  two = lambda y: jnp.stack([jnp.sum(y), jnp.sum(y ** 2)])
  convolution = gramian.gram_vjp(lambda w: two(conv(w)), jnp.ones((3, 3, 3, 8)))
  assert len(convolution.taps) == 1 and not gramian.pays_off(convolution.taps, 8)
