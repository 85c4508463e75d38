"""Mixture-of-experts models (omoe, mmoe, dselect_k, cgc, ple) against hand computations."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, train
from mtl_jax import tasks as T
from mtl_jax._src.models import dselect_k as dsk  # its selector math, tested on purpose
from mtl_jax.train import ConfigError
from tests.conftest import tiny_config

NAMES = ('omoe', 'mmoe', 'dselect_k', 'cgc', 'ple')
REP_MODELS = [('omoe', {}), ('mmoe', {}), ('cgc', {'num_task_experts': 2}), ('ple', {}),
              ('ple', {'num_levels': 3, 'num_shared_experts': 2, 'expert_hidden': (4,)})]
GRAD_MODELS = ([m for m in REP_MODELS if m != ('ple', {})]
               + [('dselect_k', {'num_experts': 4})])


def regressions(num):
  return T.TaskSet([T.regression(f'y{t}') for t in range(num)])


def mlp(width=6):
  return models.get_backbone('mlp', hidden=(width,))


def init(model, x, seed=0, scale=0.5):
  """Variables of ``model``'s shapes filled with N(0, scale^2) (batch statistics with ones):
  any values do for these tests, and this avoids compiling the random initialisers."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)
  fill = lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype)
  return {c: jax.tree.map(fill if c == 'params' else (lambda s: jnp.ones(s.shape, s.dtype)),
                          tree) for c, tree in shapes.items()}


def data(batch=6, dim=5, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, dim))


def gates(intermediates):
  """Every sown gate-weight array (names starting with 'gates')."""
  flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
  found = [(jax.tree_util.keystr(path), leaf) for path, leaf in flat
           if any(getattr(k, 'key', '').startswith('gates') for k in path)]
  assert found
  return found


def assert_gates_are_distributions(intermediates):
  for path, g in gates(intermediates):
    assert np.all(g >= 0), path
    np.testing.assert_allclose(np.sum(g, axis=-1), 1.0, rtol=1e-5, err_msg=path)


# ------------------------------------------------------------------------------------------
# Shapes and gates over several backbones and task counts.

@pytest.mark.parametrize('name', NAMES)
def test_shapes_param_split_and_gate_weights(name):
  options = {'num_experts': 4} if name == 'dselect_k' else {}
  x = data()
  every = [T.regression('a'), T.binary('b'), T.multiclass('c', 3), T.regression('d', 2),
           T.regression('e')]
  for num in (1, 2, 5):
    tasks = T.TaskSet(every[:num])
    model = models.get(name, tasks, mlp(), tower_hidden=(3,), **options)
    # Shapes abstractly (no compilation); values for the largest task count.
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert set(variables['params']) == {'shared', 'task'}
    apply = lambda v, x: model.apply(v, x, mutable=['intermediates'])
    preds, _ = jax.eval_shape(apply, variables, x)
    assert {k: v.shape for k, v in preds.items()} == {t.name: (6, t.out_dim) for t in tasks}
  preds, state = apply(init(model, x), x)
  assert all(np.all(np.isfinite(v)) for v in preds.values())
  assert_gates_are_distributions(state['intermediates'])


def _feature_map_backbone():
  if 'cnn' not in models.backbone_names():
    pytest.skip('no cnn backbone registered')
  return models.get_backbone('cnn', channels=(3,), norm='batch')


@pytest.mark.parametrize('name', NAMES)
def test_feature_map_backbone(name):
  """Experts are copies of a conv backbone ([B, H, W, C] outputs, batch norm); gates read the
  flattened image."""
  backbone = _feature_map_backbone()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 2))
  tasks = regressions(2)
  options = {'num_experts': 4} if name == 'dselect_k' else {}
  model = models.get(name, tasks, backbone, tower_hidden=(3,), **options)
  apply = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates',
                                                              'aux_loss'])
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert 'batch_stats' in shapes
  preds, state = jax.eval_shape(apply, shapes, x)
  assert {k: v.shape for k, v in preds.items()} == {'y0': (4, 1), 'y1': (4, 1)}
  # Batch statistics are stacked per expert and updated in training.
  assert jax.tree.structure(state['batch_stats']) == jax.tree.structure(shapes['batch_stats'])
  if name in ('mmoe', 'ple'):   # values for two of them (omoe, cgc: the same expert stacks)
    preds, state = apply(init(model, x), x)
    assert all(np.all(np.isfinite(v)) for v in preds.values())
    assert_gates_are_distributions(state['intermediates'])


# ------------------------------------------------------------------------------------------
# Exact equivalences and hand-written forward passes.

@pytest.mark.parametrize('name', ['omoe', 'mmoe'])
def test_one_expert_equals_shared_bottom(name):
  tasks = regressions(3)
  x = data()
  model = models.get(name, tasks, mlp(), tower_hidden=(3,), num_experts=1, gate_bias=True)
  params = init(model, x)['params']
  bottom = models.get('shared_bottom', tasks, mlp(), tower_hidden=(3,))
  expert = params['shared']['experts']['module']
  heads = params['task'] if name == 'omoe' else params['task']['heads']
  sb_params = {'shared': jax.tree.map(lambda a: a[0], expert), 'task': heads}
  expected = bottom.apply({'params': sb_params}, x)
  got = model.apply({'params': params}, x)
  for k in tasks.names:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


def _mlp_ref(p, x):
  x = x.reshape(x.shape[0], -1)
  for i in range(len(p)):
    x = jax.nn.relu(x @ p[f'Dense_{i}']['kernel'] + p[f'Dense_{i}']['bias'])
  return x


def _tower_ref(p, x):
  return _mlp_ref(p['mlp'], x) @ p['out']['kernel'] + p['out']['bias']


def _take(tree, *index):
  return jax.tree.map(lambda a: a[index], tree)


def _mixture(w, outputs):
  return sum(w[:, i:i + 1] * e for i, e in enumerate(outputs))


def _towers(params, hidden, num):
  return [_tower_ref(_take(params['task']['heads']['group0']['towers'], k), hidden[k])
          for k in range(num)]


def test_mmoe_and_omoe_match_a_hand_computation():
  tasks, x, n = regressions(3), data(), 3
  mmoe = models.get('mmoe', tasks, mlp(), tower_hidden=(3,), num_experts=n)
  p = init(mmoe, x)['params']
  experts = [_mlp_ref(_take(p['shared']['experts']['module'], i), x) for i in range(n)]
  kernel = p['task']['gate']['module']['logits']['kernel']                   # [T, d, n]
  hidden = [_mixture(jax.nn.softmax(x @ kernel[k]), experts) for k in range(3)]
  for k, y in enumerate(_towers(p, hidden, 3)):
    np.testing.assert_allclose(mmoe.apply({'params': p}, x)[f'y{k}'], y, rtol=1e-5, atol=1e-6)

  omoe = models.get('omoe', tasks, mlp(), tower_hidden=(3,), num_experts=n)
  p = init(omoe, x)['params']
  experts = [_mlp_ref(_take(p['shared']['experts']['module'], i), x) for i in range(n)]
  mixed = _mixture(jax.nn.softmax(x @ p['shared']['gate']['logits']['kernel']), experts)
  preds = omoe.apply({'params': p}, x)
  for k in range(3):
    y = _tower_ref(_take(p['task']['group0']['towers'], k), mixed)
    np.testing.assert_allclose(preds[f'y{k}'], y, rtol=1e-5, atol=1e-6)


def _ple_expected_split(levels):
  """PLE's shared/task split (a module is shared if more than one task's loss reads it), as
  module names."""
  shared = {f'level{j}_shared_experts' for j in range(1, levels + 1)}
  shared |= {f'level{j}_shared_gate' for j in range(1, levels)}
  shared |= {f'level{j}_task_experts' for j in range(1, levels)}
  shared |= {f'level{j}_task_gates' for j in range(1, levels - 1)}
  task = {'heads', f'level{levels}_task_experts', f'level{levels}_task_gates'}
  task |= {f'level{levels - 1}_task_gates'} if levels >= 2 else set()
  return shared, task


def _ple_ref(p, x, num, levels, mk, ms):
  """PLE (DeepCTR semantics) written out task by task, level by level."""
  both = {**p['shared'], **p['task']}
  tasks_in, shared_in = [x] * num, x
  for j in range(1, levels + 1):
    te_p = both[f'level{j}_task_experts']['module']['module']
    se_p = both[f'level{j}_shared_experts']['module']
    te = [[_mlp_ref(_take(te_p, k, i), tasks_in[k]) for i in range(mk)] for k in range(num)]
    se = [_mlp_ref(_take(se_p, i), shared_in) for i in range(ms)]
    kernel = both[f'level{j}_task_gates']['module']['logits']['kernel']
    new = [_mixture(jax.nn.softmax(tasks_in[k].reshape(len(x), -1) @ kernel[k]), te[k] + se)
           for k in range(num)]
    if j < levels:
      w = jax.nn.softmax(shared_in @ both[f'level{j}_shared_gate']['logits']['kernel'])
      shared_in = _mixture(w, sum(te, []) + se)
    tasks_in = new
  return _towers(p, tasks_in, num)


@pytest.mark.parametrize('levels', [1, 2, 3])
def test_cgc_and_ple_match_a_hand_computation_and_split_by_the_reference_rule(levels):
  num, mk, ms, x = 3, 2, 2, data()
  name = 'cgc' if levels == 1 else 'ple'
  options = {} if levels == 1 else {'num_levels': levels, 'expert_hidden': (5,)}
  model = models.get(name, regressions(num), mlp(), tower_hidden=(3,), num_task_experts=mk,
                     num_shared_experts=ms, **options)
  p = init(model, x)['params']
  shared, task = _ple_expected_split(levels)
  assert (set(p['shared']), set(p['task'])) == (shared, task)
  preds = model.apply({'params': p}, x)
  for k, y in enumerate(_ple_ref(p, x, num, levels, mk, ms)):
    np.testing.assert_allclose(preds[f'y{k}'], y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# DSelect-k.

def test_smooth_step_closed_form():
  for gamma in (1.0, 2.0):
    t = jnp.array([-gamma, -gamma / 2, -gamma / 4, 0.0, gamma / 4, gamma / 2, gamma])
    np.testing.assert_allclose(dsk.smooth_step(t, gamma),
                               [0, 0, 5 / 32, 0.5, 27 / 32, 1, 1], atol=1e-7)


def _r_ref(z, n, gamma):
  """r(z) from binary strings (MSB first) and the closed-form smooth-step."""
  m = max(1, math.ceil(math.log2(n))) if n > 1 else 0
  z = np.asarray(z, np.float64)
  s = np.where(z <= -gamma / 2, 0, np.where(z >= gamma / 2, 1,
                                            -2 / gamma ** 3 * z ** 3 + 1.5 / gamma * z + .5))
  out = np.ones(z.shape[:-1] + (n,))
  for l in range(n):
    for b, bit in enumerate(format(l, f'0{m}b') if m else ''):
      out[..., l] *= s[..., b] if bit == '1' else 1 - s[..., b]
  return out


def test_selector_outputs_by_hand():
  # S(-1/4) = 5/32, S(1/4) = 27/32, S(0.6) = 1 (gamma = 1).
  np.testing.assert_allclose(dsk.selector_outputs(jnp.array([-0.25, 0.25]), 4, 1.0),
                             np.array([135, 729, 25, 135]) / 1024, rtol=1e-6)
  # n = 5: codes 000, 001, 010, 011, 100; the unreachable codes 101..111 hold the rest.
  r5 = dsk.selector_outputs(jnp.array([-0.25, 0.25, 0.6]), 5, 1.0)
  np.testing.assert_allclose(r5, np.array([0, 135, 0, 729, 0]) / 1024, atol=1e-7)
  z = np.random.default_rng(0).uniform(-1, 1, (3, 2, 3))
  np.testing.assert_allclose(dsk.selector_outputs(jnp.asarray(z), 6, 1.5), _r_ref(z, 6, 1.5),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(dsk.binary_codes(5),
                                [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize('per_example', [True, False])
def test_dselect_k_matches_a_hand_computation_and_its_aux_losses(per_example):
  n, k, gamma, reg, num, x = 5, 2, 1.0, 1e-2, 2, data()
  model = models.get('dselect_k', regressions(num), mlp(), tower_hidden=(3,), num_experts=n,
                     k=k, gamma=gamma, entropy_reg=reg, per_example=per_example)
  p = init(model, x)['params']
  # Small gate logits: mostly inside the smooth-step's cubic part, some saturated.
  gp = p['task']['gate']['module'] = jax.tree.map(lambda a: a * 0.3,
                                                  p['task']['gate']['module'])
  m = 3
  if per_example:
    z = [np.asarray(x @ gp['z']['kernel'][t] + gp['z']['bias'][t]).reshape(-1, k, m)
         for t in range(num)]
    w = [np.asarray(x @ gp['w']['kernel'][t] + gp['w']['bias'][t]) for t in range(num)]
  else:
    z = [np.asarray(gp['z'][t])[None] for t in range(num)]
    w = [np.asarray(gp['w'][t])[None] for t in range(num)]
  r = [_r_ref(z[t], n, gamma) for t in range(num)]                            # [., k, n]
  q = [np.einsum('bk,bkn->bn', np.asarray(jax.nn.softmax(w[t])), r[t]) for t in range(num)]
  experts = [_mlp_ref(_take(p['shared']['experts']['module'], i), x) for i in range(n)]
  hidden = [_mixture(np.broadcast_to(q[t], (len(x), n)), experts) for t in range(num)]
  preds, state = model.apply({'params': p}, x, train=True, mutable=['aux_loss', 'intermediates'])
  for t, y in enumerate(_towers(p, hidden, num)):
    np.testing.assert_allclose(preds[f'y{t}'], y, rtol=1e-4, atol=1e-6)
  (sown,) = state['intermediates']['task']['gates']
  np.testing.assert_allclose(sown, np.broadcast_to(np.stack(q), sown.shape), rtol=1e-5,
                             atol=1e-7)
  rs = np.stack(r)
  assert np.all(rs.sum(-1) > 0)
  aux = {key: float(v[0]) for key, v in state['aux_loss'].items()}
  assert set(aux) == {'entropy', 'reachability'}
  np.testing.assert_allclose(aux['entropy'], reg * np.sum(-rs * np.log(rs + 1e-6)), rtol=1e-4)
  np.testing.assert_allclose(aux['reachability'], np.sum(1 / rs.sum(-1)), rtol=1e-5)
  # No aux losses in evaluation; no reachability term when n is a power of 2.
  assert 'aux_loss' not in model.apply({'params': p}, x, mutable=['aux_loss'])[1]
  model4 = models.get('dselect_k', regressions(num), mlp(), num_experts=4, entropy_reg=0.0)
  v4 = init(model4, x)
  assert 'aux_loss' not in model4.apply(v4, x, train=True, mutable=['aux_loss'])[1]


@pytest.mark.parametrize('per_example', [True, False])
def test_dselect_k_gate_init_ranges(per_example):
  # As the reference: z ~ U(-gamma/100, gamma/100) (kernel and bias), w ~ U(-0.05, 0.05).
  gate = dsk.DSelectKGate(num_experts=8, k=4, gamma=3.0, per_example=per_example)
  params = jax.jit(gate.init)(jax.random.PRNGKey(0), jnp.ones((2, 50)))['params']
  for name, bound in (('z', 3.0 / 100), ('w', 0.05)):
    for leaf in jax.tree.leaves(params[name]):
      assert np.abs(leaf).max() <= bound
      assert leaf.size < 50 or np.abs(leaf).max() > 0.8 * bound   # fills the range
      assert leaf.shape[-1] == (4 * 3 if name == 'z' and per_example else
                                3 if name == 'z' else 4)


@pytest.mark.parametrize('per_example', [True, False])
def test_dselect_k_saturated_selectors_pick_at_most_k_experts(per_example):
  n, k, gamma, x = 8, 3, 2.0, data(batch=16)
  model = models.get('dselect_k', regressions(2), mlp(), num_experts=n, k=k, gamma=gamma,
                     per_example=per_example)
  p = init(model, x)['params']
  gp = p['task']['gate']['module']
  rng = np.random.default_rng(0)
  if per_example:
    # Logits far outside [-gamma/2, gamma/2] for every example.
    gp['z']['kernel'] = 0.1 * gp['z']['kernel']
    gp['z']['bias'] = jnp.asarray(gamma * rng.choice([-1.0, 1.0], gp['z']['bias'].shape))
  else:
    gp['z'] = jnp.asarray(gamma * rng.choice([-1.0, 1.0], gp['z'].shape))
  _, state = model.apply({'params': p}, x, mutable=['intermediates'])
  (q,) = state['intermediates']['task']['gates']                               # [T, B, n]
  assert q.shape == (2, 16, n)
  assert np.all(np.sum(q > 0, axis=-1) <= k) and np.all(np.sum(q > 0, axis=-1) >= 1)
  np.testing.assert_allclose(np.sum(q, -1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# The shared / task-specific split, by gradients.

def _per_task_losses(model, x, targets):
  def losses(params):
    preds = model.apply({'params': params}, x)
    return jnp.stack([jnp.mean((preds[f'y{t}'] - targets[t]) ** 2)
                      for t in range(len(targets))])
  return losses


@pytest.mark.parametrize('name,options', GRAD_MODELS)
def test_task_params_get_gradient_only_from_their_task_and_shared_from_several(name, options):
  num, x = 3, data()
  model = models.get(name, regressions(num), mlp(), **options)   # linear towers: no dead units
  params = init(model, x)['params']
  targets = jax.random.normal(jax.random.PRNGKey(5), (num, 6, 1))
  losses = _per_task_losses(model, x, targets)
  jac = jax.jit(jax.jacrev(losses))(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(jac['task'])[0]:
    # leaf [T losses, T tasks, ...]: the task axis leads every task-specific parameter.
    assert leaf.shape[1] == num, path
    # Only task t's loss reaches task t's slice (a dead ReLU may leave it at zero).
    nonzero = np.any(leaf.reshape(num, num, -1) != 0, axis=-1)
    assert not np.any(nonzero & ~np.eye(num, dtype=bool)), (jax.tree_util.keystr(path),
                                                             nonzero)
  heads = jac['task'].get('heads', jac['task'])        # omoe's task subtree is the TaskHeads
  out_bias = heads['group0']['towers']['out']['bias']   # [T losses, T tasks, 1]
  np.testing.assert_array_equal(out_bias[..., 0] != 0, np.eye(num, dtype=bool))
  for path, leaf in jax.tree_util.tree_flatten_with_path(jac['shared'])[0]:
    tasks_reaching = np.sum(np.any(leaf.reshape(num, -1) != 0, axis=-1))
    assert tasks_reaching >= 2, jax.tree_util.keystr(path)
  if name == 'ple' and options.get('num_levels', 2) >= 2:
    # Task k's level-1 experts reach every task through the level-1 shared gate.
    leaf = jax.tree.leaves(jac['shared']['level1_task_experts'])[0]      # [T, T, m_k, ...]
    assert np.all(np.any(leaf.reshape(num, num, -1) != 0, axis=-1))


# ------------------------------------------------------------------------------------------
# The representation split.

@pytest.mark.parametrize('name,options', REP_MODELS)
def test_representation_and_heads(name, options):
  num, x = 3, data()
  model = models.get(name, regressions(num), mlp(), tower_hidden=(3,), **options)
  variables = init(model, x)

  def heads(v, z, stacked=False):
    return model.apply(v, z, stacked=stacked, inputs=x, method=model.heads)

  def representation(v):
    return model.apply(v, x, method=model.representation)

  def total(tree):
    return sum(jnp.sum(a) for a in jax.tree.leaves(tree))

  @jax.jit
  def run(v):
    z = representation(v)
    z_stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (num,) + a.shape), z)
    head_losses = lambda zs: jnp.stack([jnp.sum(heads(v, zs, True)[f'y{t}'] ** 2)
                                        for t in range(num)])
    return dict(
        full=model.apply(v, x), split=heads(v, z), stacked=heads(v, z_stacked, True),
        z_jac=jax.jacrev(head_losses)(z_stacked),
        rep_grad=jax.grad(lambda p: total(representation({'params': p})))(v['params']),
        heads_grad=jax.grad(lambda p: total(heads({'params': p}, z)))(v['params']))

  out = run(variables)
  for k in out['full']:
    np.testing.assert_allclose(out['split'][k], out['full'][k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out['stacked'][k], out['full'][k], rtol=1e-6, atol=1e-6)
  # Task t reads only copy t of z; z uses only 'shared' params, the heads only 'task' ones.
  for leaf in jax.tree.leaves(out['z_jac']):
    nonzero = np.any(leaf.reshape(num, num, -1) != 0, axis=-1)
    assert not np.any(nonzero & ~np.eye(num, dtype=bool))
  assert all(np.all(g == 0) for g in jax.tree.leaves(out['rep_grad']['task']))
  assert all(np.all(g == 0) for g in jax.tree.leaves(out['heads_grad']['shared']))
  assert any(np.any(g != 0) for g in jax.tree.leaves(out['rep_grad']['shared']))


def test_dselect_k_has_no_representation_split():
  model = models.get('dselect_k', regressions(2), mlp())
  assert not hasattr(model, 'representation') and not hasattr(model, 'heads')


def test_heads_without_inputs_name_the_model():
  x = data()
  model = models.get('mmoe', regressions(2), mlp(), num_experts=2)
  variables = init(model, x)
  z = model.apply(variables, x, method=model.representation)
  with pytest.raises(ValueError, match=r'mmoe\.heads'):
    model.apply(variables, z, method=model.heads)


# ------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize('name,options,message', [
    ('mmoe', {'num_experts': 0}, 'mmoe.num_experts: must be >= 1, got 0'),
    ('omoe', {'num_experts': 0}, 'omoe.num_experts: must be >= 1, got 0'),
    ('mmoe', {'gate_dropout': 1.0}, 'mmoe.gate_dropout: must be in [0, 1)'),
    ('omoe', {'gate_hidden': (0,)}, 'omoe.gate_hidden: must be positive integer widths'),
    ('dselect_k', {'num_experts': 0}, 'dselect_k.num_experts: must be >= 1, got 0'),
    ('dselect_k', {'num_experts': 4, 'k': 5}, 'dselect_k.k: must be <= num_experts (4), got 5'),
    ('dselect_k', {'k': 0}, 'dselect_k.k: must be >= 1, got 0'),
    ('dselect_k', {'gamma': 0.0}, 'dselect_k.gamma: must be > 0, got 0.0'),
    ('dselect_k', {'gamma': -1.0}, 'dselect_k.gamma: must be > 0'),
    ('dselect_k', {'entropy_reg': -1.0}, 'dselect_k.entropy_reg: must be >= 0'),
    ('cgc', {'num_task_experts': 0}, 'cgc.num_task_experts: must be >= 1, got 0'),
    ('cgc', {'num_shared_experts': 0}, 'cgc.num_shared_experts: must be >= 1, got 0'),
    ('ple', {'num_levels': 0}, 'ple.num_levels: must be >= 1, got 0'),
    ('ple', {'num_task_experts': 0}, 'ple.num_task_experts: must be >= 1, got 0'),
    ('ple', {'num_shared_experts': 0}, 'ple.num_shared_experts: must be >= 1, got 0'),
    ('ple', {'expert_hidden': ()}, 'ple.expert_hidden: must have at least one layer'),
])
def test_bad_options_name_the_field(name, options, message):
  with pytest.raises(ValueError) as e:
    models.get(name, regressions(2), mlp(), **options)
  assert str(e.value).startswith(message)


def test_config_defaults_and_a_bad_config_value():
  assert models.hyperparameters('mmoe') == {
      'num_experts': 8, 'gate_bias': False, 'gate_hidden': (), 'gate_dropout': 0.0}
  assert models.hyperparameters('dselect_k') == {
      'num_experts': 8, 'k': 2, 'gamma': 1.0, 'entropy_reg': 1e-6, 'per_example': True}
  assert models.hyperparameters('ple')['num_levels'] == 2
  config = tiny_config(**{'model.name': 'ple', 'model.ple.num_levels': 0})
  with pytest.raises(ConfigError, match=r'config\.model\.ple\.num_levels: must be >= 1'):
    train.build_model(config, regressions(2))


# ------------------------------------------------------------------------------------------
# End-to-end training.

def _train(tmp_path, **overrides):
  config = tiny_config(**{'train.steps': 10, 'data.synthetic.sizes': (256, 64, 64),
                          'eval.splits': ('test',), 'train.checkpoint_every': 100,
                          **overrides})
  results = train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  assert results['steps'] == 10 and results['rejected_steps'] == 0
  assert all(np.isfinite(v['mse']) for v in results['metrics'].values())
  assert all(np.isfinite(line['loss']) for line in lines)
  return results, lines


# End-to-end training of every expert model (with MGDA): tests/test_model_zoo.py.


def test_dselect_k_trains_with_its_aux_losses_as_metrics(tmp_path):
  _, lines = _train(tmp_path, **{'model.name': 'dselect_k', 'model.dselect_k.num_experts': 5})
  for line in lines:
    assert np.isfinite(line['aux_loss/entropy']) and line['aux_loss/entropy'] > 0
    assert np.isfinite(line['aux_loss/reachability'])
    # sum over T = 2 tasks, B = 32 examples, k = 2 selectors of 1 / (reachable mass) >= 1.
    assert line['aux_loss/reachability'] >= 2 * 32 * 2
