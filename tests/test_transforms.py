"""The transforms of weighting methods (normalize, log_losses, ema, grouped) and cr_mogm.

Each against an independent computation: the plain method run on explicitly rescaled rows
(NumPy), a NumPy moving-average recursion, a NumPy loop over parameter groups (each group's
Jacobian zero-padded to the full width, so that one compiled plain method serves every
group), closed forms, and probe methods whose exact outputs are known.  Every plain method
runs through one jitted function per method, vmapped over three cases (or groups).
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting as W
from mtl_jax._src import registry  # to register a direct test method, then remove it

KEY = jax.random.PRNGKey(7)
P = 20                                   # Jacobian width: leaves dec [5], enc.b [3], enc.w [4, 3]
EPS = 1e-8
BYS = ('l2', 'loss', 'loss+', 'none')


# ----------------------------------------------------------------------------- helpers

@functools.lru_cache(maxsize=None)
def _runner(method):
  """jit(combine) of one case; one compile per method and shape."""
  manual = 'manual' if method.after_step is not None else None

  def one(j, l, s, k, step):
    out = W.combine(method, j, l, state=s, key=k, step=step, after_step=manual)
    return out.direction, out.weights, out.state, out.finite
  return jax.jit(one)


def _run(method, j, l, states=None, key=KEY, step=0):
  """(d, w, states) of the cases j[c], l[c]: d and w stacked (float64 NumPy; d a pytree of
  them for a pytree j), states a list (``method.init`` where ``states`` is None)."""
  ds, ws, new = [], [], []
  for c, k in enumerate(jax.random.split(key, l.shape[0])):
    jc = jax.tree.map(lambda x: x[c], j)  # pylint: disable=cell-var-from-loop
    if states is None or states[c] is None:
      row = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), jc)
      state = method.init(l.shape[1], row) if method.state_like_params else method.init(
          l.shape[1])
    else:
      state = states[c]
    d, w, state, finite = _runner(method)(jc, l[c], state, k, step)
    assert bool(finite)
    ds.append(d)
    ws.append(np.asarray(w, np.float64))
    new.append(state)
  d = jax.tree.map(lambda *x: np.stack(x).astype(np.float64), *ds)
  return d, np.stack(ws), new


def _cases(t, seed):
  """Three [T, P] Jacobians and losses: random; a zero row (zero loss) and a colinear pair;
  a strongly conflicting pair."""
  rng = np.random.default_rng(seed)
  j = rng.normal(size=(3, t, P))
  l = rng.uniform(0.2, 3.0, size=(3, t))
  j[1, 0] = 0.0
  l[1, 0] = 0.0
  j[1, -1] = 2.0 * j[1, 1 if t > 2 else 0] + (t == 2) * rng.normal(size=P)
  j[2, 1] = -0.8 * j[2, 0] + 0.05 * rng.normal(size=P)
  return j.astype(np.float32), l.astype(np.float32)


def _norms(j, l, by):
  """n [C, T] in NumPy: the normalisations of Sener and Koltun, 1 where below 1e-8."""
  norms = np.linalg.norm(j.astype(np.float64), axis=-1)
  n = {'l2': norms, 'loss': l, 'loss+': l * norms, 'none': np.ones_like(norms)}[by]
  return np.where(n > 1e-8, n, 1.0)


def _close(actual, expected, rtol=2e-4):
  scale = max(np.max(np.abs(expected)), 1e-6)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _gram_probe():
  """A GRAM method with known, nonlinear weights: (1 + L^2) (1 + diag G) / (1 + sum|G|)."""
  def update(inputs, state, key):
    g, l = inputs.gram, inputs.losses.astype(inputs.gram.dtype)
    return W.WeightingResult((1 + l * l) * (1 + jnp.diag(g)) / (1 + jnp.abs(g).sum()), state)
  return W.Weighting('gram_probe', W.Needs.GRAM, lambda t: (), update, head_grads='unweighted')


def _probe_weights(g, l):
  return (1 + l * l) * (1 + np.diag(g)) / (1 + np.abs(g).sum())


def _direct_probe():
  """A direct method: d = the entrywise max over tasks of J (no coefficients); reported
  weights diag(G) + L."""
  def update(inputs, state, key):
    d = jax.tree.map(lambda x: jnp.max(x, 0), inputs.jacobian)
    return W.WeightingResult(jnp.diag(inputs.gram) + inputs.losses, state, None, d)
  return W.Weighting('direct_probe', W.Needs.JACOBIAN, lambda t: (), update,
                     head_grads='unweighted', direct=True)


def _loss_probe():
  """A loss-only method: alpha = exp(-L) + L^2; after_step stores (before, after)."""
  def update(inputs, state, key):
    l = inputs.losses
    return W.WeightingResult(jnp.exp(-l) + l * l, state)
  init = lambda t: (jnp.zeros(t), jnp.zeros(t))
  after = lambda state, before, after: (before, after)
  return W.Weighting('loss_probe', W.Needs.LOSSES, init, update, after_step=after,
                     head_scale=lambda l: 2.0 + l)


PLAIN = {name: W.get(name) for name in ('mgda', 'upgrad', 'cagrad', 'imtl_g', 'pcgrad',
                                        'gradvac') if name in W.names()}
STATEFUL = 'gradvac' if 'gradvac' in PLAIN else 'pcgrad'   # gradvac: being added meanwhile
GRAM_PROBE, DIRECT_PROBE, LOSS_PROBE = _gram_probe(), _direct_probe(), _loss_probe()


# ----------------------------------------------------------------- normalize, log_losses

@pytest.mark.parametrize('name,t,transform', [('mgda', 3, 'l2'), ('upgrad', 3, 'log'),
                                              ('cagrad', 2, 'loss+'), ('imtl_g', 6, 'log')])
def test_normalize_and_log_losses_equal_the_method_on_rescaled_rows(name, t, transform):
  """The wrapped method against the plain one on rows J / n computed in NumPy."""
  plain = PLAIN[name]
  j, l = _cases(t, seed=t)
  if transform == 'log':        # rows g_t / (L_t + eps), losses log(L_t + eps)
    n = l.astype(np.float64) + EPS
    method, seen = W.log_losses(plain), np.log(n).astype(np.float32)
  else:
    n = _norms(j, l, transform)
    method, seen = W.normalize(plain, transform), l
  d, w, _ = _run(method, j, l)
  d_ref, w_ref, _ = _run(plain, (j / n[..., None]).astype(np.float32), seen)
  _close(d, d_ref)
  _close(w, w_ref / n)


PROBES = {**{('normalize', by, kind): W.normalize(m, by) for by in BYS
             for kind, m in (('gram', GRAM_PROBE), ('direct', DIRECT_PROBE))},
          **{('log', None, kind): W.log_losses(m) for kind, m in (
              ('gram', GRAM_PROBE), ('direct', DIRECT_PROBE), ('loss', LOSS_PROBE))}}


@jax.jit
def _probe_outputs(cases):
  """{(transform, by, kind): (d, w)} per case set (T = 2..6), all in one compilation; the
  transforms' ``update`` called directly (``combine`` adds nothing to test here)."""
  outputs = []
  for j, l in cases:
    def run(method, j=j, l=l):
      def one(jj, ll):
        inputs = W.WeightingInputs(ll, jnp.int32(0), jj @ jj.T, jj)
        result = method.update(inputs, method.init(ll.shape[0]), None)
        d = result.weights @ jj if result.direction is None else result.direction
        return d, result.weights
      return jax.vmap(one)(j, l)
    outputs.append({key: run(method) for key, method in PROBES.items()})
  return outputs


def test_normalize_and_log_losses_of_probe_methods_for_every_t():
  """Every normalisation and log_losses of a GRAM, a direct and a loss-only probe, T = 2..6,
  against the probes' formulas on rows and losses rescaled in NumPy."""
  cases = [_cases(t, seed=10 + t) for t in range(2, 7)]
  for (j, l), out in zip(cases, _probe_outputs(cases)):
    j64, l64 = j.astype(np.float64), l.astype(np.float64)
    for (transform, by, kind), (d, w) in out.items():
      if transform == 'log':
        n, seen = l64 + EPS, np.log(l64 + EPS)
      else:
        n, seen = _norms(j, l, by), l64
      jn = j64 / n[..., None]
      if kind == 'gram':
        w_ref = np.stack([_probe_weights(x @ x.T, y) for x, y in zip(jn, seen)])
        d_ref = np.einsum('ct,ctp->cp', w_ref, jn)
      elif kind == 'direct':
        w_ref, d_ref = np.einsum('ctp,ctp->ct', jn, jn) + seen, jn.max(1)
      else:
        w_ref = np.exp(-seen) + seen ** 2
        d_ref = np.einsum('ct,ctp->cp', w_ref, jn)
      _close(np.asarray(w, np.float64), w_ref / n, rtol=1e-5)
      _close(np.asarray(d, np.float64), d_ref, rtol=1e-5)


def test_log_losses_after_step_sees_log_losses():
  method = W.log_losses(LOSS_PROBE)
  before, after = np.array([0.5, 2.0]), np.array([0.25, 1.0])
  seen = method.after_step(method.init(2), jnp.asarray(before), jnp.asarray(after))
  _close(np.asarray(seen[0]), np.log(before + EPS), rtol=1e-6)
  _close(np.asarray(seen[1]), np.log(after + EPS), rtol=1e-6)
  assert method.needs is W.Needs.LOSSES and method.name == 'log_losses(loss_probe)'
  assert W.log_losses(GRAM_PROBE).after_step is None


def test_log_losses_of_ew_is_the_sum_of_log_gradients_and_head_scale():
  t = 5
  j, l = _cases(t, seed=5)
  d, w, _ = _run(W.log_losses(W.get('ew')), j, l)   # a zero loss (with a zero row): finite
  n = l.astype(np.float64) + EPS
  _close(w, 1 / n, rtol=1e-6)
  _close(d, np.einsum('ctp,ct->cp', j, 1 / n), rtol=1e-5)
  losses = jnp.asarray([0.0, 0.5, 2.0, 10.0])
  method = W.log_losses(W.get('mgda'), eps=1e-3)
  _close(np.asarray(method.head_scale(losses)), 1 / (np.asarray(losses) + 1e-3), rtol=1e-6)
  assert W.get('mgda').head_scale is None and method.head_grads == 'unweighted'
  # Composed with the wrapped method's own head_scale (2 + L' at L' = log(L + eps)).
  scale = W.log_losses(LOSS_PROBE).head_scale(losses)
  expected = (2.0 + np.log(np.asarray(losses, np.float64) + EPS)) / (np.asarray(losses) + EPS)
  _close(np.asarray(scale, np.float64), expected, rtol=1e-5)
  with pytest.raises(ValueError, match='log_losses: eps must be > 0'):
    W.log_losses(W.get('ew'), eps=0.0)


def test_normalize_carries_the_fields_over_and_rejects_bad_input():
  pcgrad = W.normalize(W.get('pcgrad'), 'loss')
  assert (pcgrad.random, pcgrad.min_tasks, pcgrad.needs, pcgrad.head_grads) == (
      True, 2, W.Needs.GRAM, 'unweighted')
  assert pcgrad.name == 'normalize(pcgrad, by=loss)'
  direct = W.normalize(DIRECT_PROBE)
  assert direct.direct and direct.needs is W.Needs.JACOBIAN
  with pytest.raises(ValueError, match="normalize: by must be one of .*got 'l1'"):
    W.normalize(W.get('mgda'), 'l1')
  with pytest.raises(ValueError, match="normalize: weighting 'ew' reads loss values only"):
    W.normalize(W.get('ew'))
  with pytest.raises(ValueError, match='normalize: method must be a Weighting'):
    W.normalize('mgda')


# ------------------------------------------------------------------------------------- ema

def test_ema_of_a_stateful_random_method_against_a_numpy_recursion():
  """EMA of GradVac (its targets are state; its orders come from the key) on changing J."""
  t, alpha = 3, 0.7
  plain = PLAIN[STATEFUL]
  method = W.ema(plain, alpha)
  state, plain_state, previous = None, None, None
  for step in range(4):
    j, l = _cases(t, seed=20 + step)
    key = jax.random.fold_in(KEY, step)
    _, hat, plain_state = _run(plain, j, l, plain_state, key)
    d, w, state = _run(method, j, l, state, key)
    expected = hat if previous is None else alpha * previous + (1 - alpha) * hat
    _close(w, expected, rtol=1e-5)
    _close(d, np.einsum('ct,ctp->cp', expected, j.astype(np.float64)), rtol=1e-5)
    for c in range(3):
      assert isinstance(state[c], W.EMAState) and bool(state[c].started)
      _close(np.asarray(state[c].weights, np.float64), expected[c], rtol=1e-6)
      chex.assert_trees_all_close(state[c].inner, plain_state[c], rtol=1e-5, atol=1e-6)
    previous = expected
  assert np.ptp(previous) > 0.01 and method.random and method.name == f'ema({STATEFUL})'


def test_ema_initial_weights_and_the_limits_of_alpha():
  t = 3
  w0 = np.array([0.5, 1.0, 2.0])
  methods = {'plain': GRAM_PROBE, 'a0': W.ema(GRAM_PROBE, 0.0),
             'init': W.ema(GRAM_PROBE, 0.6, initial_weights=w0),
             'frozen': W.ema(GRAM_PROBE, 1.0, initial_weights=w0)}
  states = dict.fromkeys(methods)
  previous = np.tile(w0, (3, 1))
  for step in range(3):
    j, l = _cases(t, seed=30 + step)
    out = {}
    for name, method in methods.items():
      out[name], states[name] = _run(method, j, l, states[name])[1:]
    np.testing.assert_array_equal(out['a0'], out['plain'])   # alpha = 0: the method itself
    previous = 0.6 * previous + 0.4 * out['plain']
    _close(out['init'], previous, rtol=1e-5)
    np.testing.assert_allclose(out['frozen'], np.tile(w0, (3, 1)), rtol=1e-7)
  state = W.ema(GRAM_PROBE, 0.5, initial_weights=w0).init(3)
  assert bool(state.started) and state.weights.dtype == jnp.float32
  with pytest.raises(ValueError, match='ema: initial_weights has 3 entries for 4 weights'):
    W.ema(GRAM_PROBE, initial_weights=w0).init(4)


def test_ema_carries_the_fields_over_and_rejects_bad_input():
  famo = W.get('famo')
  method = W.ema(famo)
  state = method.init(3)
  before, after = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 1.8, 3.5])
  new = method.after_step(state, before, after)
  expected = famo.after_step(famo.init(3), before, after)
  np.testing.assert_allclose(new.inner.logits, expected.logits, rtol=1e-6)
  np.testing.assert_array_equal(new.weights, state.weights)
  assert W.ema(GRAM_PROBE).after_step is None
  # Parameter-sized state (init gets the shared parameters) and k sub-batches (k * T weights).
  sized = dataclasses.replace(GRAM_PROBE, state_like_params=True,
                              init=lambda t, shared: jnp.zeros((t, shared.shape[0])))
  wrapped = W.ema(sized)
  assert wrapped.state_like_params
  assert wrapped.init(3, jnp.zeros(7)).inner.shape == (3, 7)
  assert W.ema(dataclasses.replace(GRAM_PROBE, sub_batches=2)).init(3).weights.shape == (6,)
  with pytest.raises(ValueError, match=r"ema: weighting 'grouped\(mgda\)' returns the "
                                       r'direction itself'):
    W.ema(W.grouped(W.get('mgda')))
  for bad in (-0.1, 1.5, float('nan'), 'x'):
    with pytest.raises(ValueError, match='ema: alpha must be'):
      W.ema(GRAM_PROBE, bad)
  for bad in ([1.0, float('inf')], [[1.0]], [], 'ab'):
    with pytest.raises(ValueError, match='ema: initial_weights must be'):
      W.ema(GRAM_PROBE, initial_weights=bad)


# --------------------------------------------------------------------------------- grouped

# Columns of the flat [T, 20] Jacobian per leaf, in pytree order: dec, enc.b, enc.w.
COLUMNS = {'dec': slice(0, 5), 'b': slice(5, 8), 'w': slice(8, 20)}
GROUPINGS = {'leaf': [['dec'], ['b'], ['w']], 'all': [['dec', 'b', 'w']],
             ('enc',): [['b', 'w'], ['dec']],
             (r"\['w'\]", 'dec'): [['w'], ['dec'], ['b']]}


def _tree(j):
  """The flat [..., T, 20] Jacobian as the pytree {'dec', 'enc': {'b', 'w'}}."""
  return {'dec': j[..., 0:5], 'enc': {'b': j[..., 5:8],
                                      'w': j[..., 8:20].reshape(j.shape[:-1] + (4, 3))}}


def _flat(tree):
  lead = tree['dec'].shape[:-1]
  return np.concatenate([np.asarray(tree['dec']), np.asarray(tree['enc']['b']),
                         np.asarray(tree['enc']['w']).reshape(lead + (12,))], -1)


def _masked(j, groups):
  """[K, T, 20]: each group's columns of j, zeros elsewhere."""
  out = np.zeros((len(groups),) + j.shape, np.float32)
  for k, group in enumerate(groups):
    for leaf in group:
      out[k][:, COLUMNS[leaf]] = j[:, COLUMNS[leaf]]
  return out


def _group_loop(plain, j, l, groups, states=None, key=KEY):
  """The loop over cases c and groups k: the plain method on group k's columns (its own
  state and key split(key_c, K)[k]); d = the sum of the groups' directions, weights = their
  mean.  States: per case, the list of the groups' states."""
  ds, ws, new_states = [], [], []
  for c, key_c in enumerate(jax.random.split(key, j.shape[0])):
    d, w, state = _run(plain, _masked(j[c], groups), np.tile(l[c], (len(groups), 1)),
                       None if states is None else states[c], key=key_c)
    ds.append(d.sum(0))
    ws.append(w.mean(0))
    new_states.append(state)
  return np.stack(ds), np.stack(ws), new_states


@pytest.mark.parametrize('name,groups', [('mgda', ('enc',)), ('upgrad', 'leaf')])
def test_grouped_equals_a_loop_over_groups(name, groups):
  plain = PLAIN[name]
  j, l = _cases(3, seed=40)
  d, w, _ = _run(W.grouped(plain, groups), _tree(j), l)
  d_ref, w_ref, _ = _group_loop(plain, j, l, GROUPINGS[groups])
  _close(_flat(d), d_ref)
  _close(w, w_ref)


@pytest.mark.parametrize('groups', list(GROUPINGS))
def test_grouped_probe_every_grouping(groups):
  """Against the probe's formula per group; 'all' is the plain method."""
  j, l = _cases(4, seed=41)
  d, w, _ = _run(W.grouped(GRAM_PROBE, groups), _tree(j), l)
  d_ref, w_ref = 0, 0
  for group in GROUPINGS[groups]:
    cols = np.concatenate([np.arange(20)[COLUMNS[leaf]] for leaf in group])
    jk = np.zeros_like(j, np.float64)
    jk[..., cols] = j[..., cols]
    alpha = np.stack([_probe_weights(x @ x.T, y) for x, y in zip(jk, l)])
    d_ref = d_ref + np.einsum('ct,ctp->cp', alpha, jk)
    w_ref = w_ref + alpha / len(GROUPINGS[groups])
  _close(_flat(d), d_ref, rtol=1e-5)
  _close(w, w_ref, rtol=1e-5)
  if groups == 'all':
    d_plain, w_plain, _ = _run(GRAM_PROBE, j, l)
    _close(_flat(d), d_plain, rtol=1e-6)
    _close(w, w_plain, rtol=1e-6)


def test_grouped_stateful_random_method_over_steps():
  """Per-leaf GradVac (the paper's per-matrix variant): a state per group, K split keys."""
  if 'gradvac' not in PLAIN:
    pytest.skip('gradvac is not registered')
  t = 3
  plain = PLAIN['gradvac']
  method = W.grouped(plain)
  assert method.random and method.direct and method.state_like_params
  states, ref_states = None, None
  for step in range(3):
    j, l = _cases(t, seed=50 + step)
    key = jax.random.fold_in(KEY, step)
    d, w, states = _run(method, _tree(j), l, states, key)
    d_ref, w_ref, ref_states = _group_loop(plain, j, l, GROUPINGS['leaf'], ref_states, key)
    _close(_flat(d), d_ref, rtol=1e-4)
    _close(w, w_ref, rtol=1e-4)
    for c in range(3):
      assert states[c]['phi_hat'].shape == (3, t, t)     # [groups, T, T]
      for k in range(3):
        _close(np.asarray(states[c]['phi_hat'][k]), np.asarray(ref_states[c][k]['phi_hat']),
               rtol=1e-4)


def test_grouped_fields_groups_errors_and_refusals():
  mgda = W.get('mgda')
  method = W.grouped(mgda, ['enc'])
  assert (method.needs, method.direct, method.state_like_params, method.head_grads,
          method.min_tasks, method.name) == (W.Needs.JACOBIAN, True, True, 'unweighted', 2,
                                             'grouped(mgda)')
  row = _tree(np.zeros(P, np.float32))
  stateful = W.grouped(W.ema(GRAM_PROBE), ['enc'])      # groups enc and (the rest) dec
  state = stateful.init(4, row)
  assert state.weights.shape == (2, 4) and state.started.shape == (2,)
  assert W.grouped(W.ema(GRAM_PROBE), ['dec', 'enc']).init(3, row).weights.shape == (2, 3)
  assert W.grouped(W.ema(GRAM_PROBE)).init(3, row).weights.shape == (3, 3)
  for groups, message in [(['nope'], "pattern 'nope' matches no leaf"),
                          (['enc', 'w'], "pattern 'w' matches no leaf")]:  # 'enc' took w
    bad = W.grouped(mgda, groups)
    with pytest.raises(ValueError, match=f'grouped: groups {message}'):
      bad.init(3, row)
    with pytest.raises(ValueError, match=f'grouped: groups {message}'):
      W.combine(bad, _tree(np.ones((3, P), np.float32)), np.ones(3), state=())
  for groups in ('layer', [], ['('], [3]):
    with pytest.raises(ValueError, match='grouped: groups'):
      W.grouped(mgda, groups)
  with pytest.raises(ValueError, match='grouped: the shared parameters have no leaves'):
    W.grouped(mgda).init(3, {})
  refused = {
      r"'grouped\(mgda\)' returns the direction itself": W.grouped(mgda),
      "'mgda' keeps parameter-sized state": dataclasses.replace(mgda, state_like_params=True),
      "'mgda' reads 2 sub-batches": dataclasses.replace(mgda, sub_batches=2),
      "'famo' updates its state after the step": W.get('famo'),
      "'mgda' reads the Jacobian itself": dataclasses.replace(mgda, needs=W.Needs.JACOBIAN),
      "'ew' reads loss values only": W.get('ew'),
  }
  for message, wrapped in refused.items():
    with pytest.raises(ValueError, match=f'grouped: weighting {message}'):
      W.grouped(wrapped)


# ------------------------------------------------------------------------ through the engine

def _toy(t=3):
  """A two-leaf shared model with per-task scalars: L_t = mean_b (h_t . f(x_b) - y_bt)^2."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 4)).astype(np.float32)
  y = rng.normal(size=(16, t)).astype(np.float32)
  params = {'shared': {'a': rng.normal(size=(4, 2)).astype(np.float32),
                       'b': rng.normal(size=(4,)).astype(np.float32)},
            'task': rng.normal(size=(t, 3)).astype(np.float32)}

  def losses(p):
    feats = jnp.concatenate([jnp.tanh(x @ p['shared']['a']), (x @ p['shared']['b'])[:, None]],
                            axis=1)                                  # [B, 3]
    return jnp.mean((feats @ p['task'].T - y) ** 2, axis=0)         # [T]
  return params, losses


def test_transforms_through_the_engine():
  """log_losses: unweighted heads get grad log(L_t + eps) (head_scale); grouped: per-leaf
  directions, with its parameter-sized state from the shared parameters."""
  params, losses = _toy()
  fns = W.LossFns(lambda p: (losses(p), {}, {}))
  jac = jax.jacrev(losses)(params)
  flat = lambda tree: np.concatenate([np.reshape(x, (3, -1)) for x in jax.tree.leaves(tree)],
                                     axis=1).astype(np.float64)
  l = np.asarray(losses(params), np.float64)
  n = l + EPS

  method = W.log_losses(GRAM_PROBE)
  out = jax.jit(lambda p: W.task_gradients(method, p, (), None, 0, fns,
                                           W.Options(mode='param')))(params)
  log_task = jax.grad(lambda h: jnp.sum(jnp.log(losses(dict(params, task=h)) + EPS)))(
      params['task'])
  _close(np.asarray(out.grads['task']), np.asarray(log_task), rtol=1e-5)
  js = flat(jac['shared']) / n[:, None]
  alpha = _probe_weights(js @ js.T, np.log(n))
  shared = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out.grads['shared'])])
  _close(shared, alpha @ js, rtol=1e-5)
  _close(np.asarray(out.weights), alpha / n, rtol=1e-5)

  method = W.grouped(GRAM_PROBE)
  state = method.init(3, params['shared'])
  out = jax.jit(lambda p, s: W.task_gradients(method, p, s, None, 0, fns))(params, state)
  for leaf in ('a', 'b'):
    jl = np.reshape(np.asarray(jac['shared'][leaf], np.float64), (3, -1))
    expected = _probe_weights(jl @ jl.T, l) @ jl
    _close(np.ravel(out.grads['shared'][leaf]), expected, rtol=1e-5)
  _close(np.asarray(out.grads['task']), np.asarray(jax.grad(
      lambda h: jnp.sum(losses(dict(params, task=h))))(params['task'])), rtol=1e-5)


# -------------------------------------------------------------------------------- cr_mogm

@pytest.fixture
def registered_probes():
  """'_test_probe' (the GRAM probe times ``scale``) and '_test_direct' in the registry."""
  @registry.WEIGHTINGS.register('_test_probe')
  def _test_probe(scale: float = 1.0) -> W.Weighting:
    probe = _gram_probe()
    update = lambda inputs, state, key: probe.update(inputs, state, key)._replace(
        weights=scale * probe.update(inputs, state, key).weights)
    return dataclasses.replace(probe, name='_test_probe', update=update)

  @registry.WEIGHTINGS.register('_test_direct')
  def _test_direct() -> W.Weighting:
    return _direct_probe()

  yield
  for name in ('_test_probe', '_test_direct'):  # the registry has no public removal
    del registry.WEIGHTINGS._builders[name]  # pylint: disable=protected-access


def test_cr_mogm_is_ema_of_its_base(registered_probes):  # pylint: disable=redefined-outer-name
  del registered_probes
  method = W.get('cr_mogm')                   # ema(mgda, 0.9)
  assert (method.name, method.needs, method.min_tasks, method.head_grads, method.random) == (
      'cr_mogm', W.Needs.GRAM, 2, 'unweighted', False)
  assert W.hyperparameters('cr_mogm') == {'base': 'mgda', 'alpha': 0.9, 'base_hparams': None}
  state = method.init(3)
  assert isinstance(state, W.EMAState) and state.inner == () and not bool(state.started)
  assert W.get('cr_mogm', base='pcgrad').random
  # Against the NumPy recursion, base_hparams reaching the base.
  method = W.get('cr_mogm', base='_test_probe', alpha=0.6, base_hparams={'scale': 2.0})
  states, previous = None, None
  for step in range(3):
    j, l = _cases(4, seed=60 + step)
    d, w, states = _run(method, j, l, states)
    hat = 2.0 * np.stack([_probe_weights(x @ x.T, y) for x, y in
                          zip(j.astype(np.float64), l.astype(np.float64))])
    previous = hat if previous is None else 0.6 * previous + 0.4 * hat
    _close(w, previous, rtol=1e-5)
    _close(d, np.einsum('ct,ctp->cp', previous, j.astype(np.float64)), rtol=1e-5)
  # A loss-only base with an after_step: the same as ema of it.
  cr = W.get('cr_mogm', base='famo', alpha=0.5, base_hparams={'match_sum': False})
  ema = W.ema(W.get('famo', match_sum=False), 0.5)
  states = {'cr': cr.init(3), 'ema': ema.init(3)}
  for step in range(3):
    j, l = _cases(3, seed=70 + step)
    before, after = l[0] + 0.1, 0.9 * l[0] + 0.05
    weights = {}
    for name, m in (('cr', cr), ('ema', ema)):
      out = W.combine(m, j[0], before, state=states[name], after_step='manual')
      states[name] = W.after_step(m, out.state, before, after)
      weights[name] = np.asarray(out.weights)
    np.testing.assert_allclose(weights['cr'], weights['ema'], rtol=1e-6)
  np.testing.assert_allclose(states['cr'].inner.logits, states['ema'].inner.logits, rtol=1e-6)
  assert np.ptp(np.asarray(states['cr'].inner.logits)) > 0      # famo's after_step ran
  assert abs(float(np.sum(weights['cr'])) - 1) < 1e-5           # match_sum=False reached it


def test_cr_mogm_rejects_bad_input(registered_probes):  # pylint: disable=redefined-outer-name
  del registered_probes
  for base in ('nope', 3):
    with pytest.raises(ValueError, match=r'cr_mogm: base must be the registry key'):
      W.get('cr_mogm', base=base)
  with pytest.raises(ValueError, match=r"cr_mogm: base 'cr_mogm' is this wrapper itself"):
    W.get('cr_mogm', base='cr_mogm')
  with pytest.raises(ValueError, match=r"cr_mogm: base '_test_direct' returns the "
                                       r'direction itself'):
    W.get('cr_mogm', base='_test_direct')
  with pytest.raises(ValueError, match=r"cr_mogm: base_hparams has unknown hyperparameter\(s\) "
                                       r"\['normalisation'\] of base 'mgda'"):
    W.get('cr_mogm', base_hparams={'normalisation': 'l2'})
  with pytest.raises(ValueError, match=r"cr_mogm: base_hparams .* of base 'mgda': mgda: "
                                       r'normalization must be one of'):
    W.get('cr_mogm', base_hparams={'normalization': 'l1'})
  with pytest.raises(ValueError, match='cr_mogm: base_hparams must be None or a dict'):
    W.get('cr_mogm', base_hparams='l2')
  for alpha in (-0.5, 1.01, float('nan')):
    with pytest.raises(ValueError, match='cr_mogm: alpha must be'):
      W.get('cr_mogm', alpha=alpha)
