"""gated_fusion: shapes, the representation split, gates and convex fusion against a hand
computation, the closed-form gate gradient, the split of parameters, detach, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, tasks as T
from tests.conftest import train_tiny

KINDS = [T.regression('r'), T.binary('b'), T.multiclass('c', 3), T.regression('s', 2)]
X = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)


def _tasks(num):
  return T.TaskSet([T.Task(f'{t.name}{i}', t.kind, t.out_dim, t.loss, t.metrics)
                    for i, t in enumerate(KINDS[:num])])


def _model(num, **options):
  return models.get('gated_fusion', _tasks(num), models.get_backbone('mlp', hidden=(6,)),
                    tower_hidden=(5,), **options)


def _init(model):
  return jax.jit(model.init)(jax.random.PRNGKey(0), X)['params']


def _columns_prediction(params, rep, tasks, name):
  """Y_{i->t} = H_i V_{t,i} + v_{t,i} for every column i: [B, T_cols, o], by hand."""
  p = params['task']
  h = np.asarray(rep['columns'], np.float64)                       # [B, T_cols, w]
  for g, group in enumerate(tasks.groups):
    if name in group.names:
      j = group.names.index(name)
      return (np.einsum('biw,iwo->bio', h, np.asarray(p[f'out{g}_kernel'][j]))
              + np.asarray(p[f'out{g}_bias'][j]))
  raise KeyError(name)


def _hand_fusion(params, rep, tasks, context='representation'):
  """Gates w_t = sigmoid(U_t^T c + b_t) and y_t = sum_i w_ti Y_it / (sum_i w_ti + eps)."""
  p = jax.tree.map(np.asarray, params['task'])
  c = np.asarray(rep['context'], np.float64)
  out, gates = {}, {}
  for t, name in enumerate(tasks.names):
    logits = p['gate_bias'][t] + (c @ p['gate_kernel'][t] if context == 'representation' else 0)
    w = 1 / (1 + np.exp(-np.broadcast_to(logits, (c.shape[0], len(tasks)))))   # [B, T_cols]
    y = _columns_prediction(params, rep, tasks, name)
    out[name] = np.einsum('bi,bio->bo', w, y) / (w.sum(1, keepdims=True) + 1e-6)
    gates[name] = w
  return out, gates


@pytest.mark.parametrize('num,options', [(1, {}), (2, {'context': 'static'}), (4, {})])
def test_shapes_the_representation_split_and_a_hand_computed_fusion(num, options):
  model = _model(num, **options)
  tasks = _tasks(num)
  params = _init(model)
  assert set(params) == {'shared', 'task'}
  assert set(params['task']) == ({'gate_bias', 'out0_kernel', 'out0_bias'}
                                 | ({'gate_kernel'} if not options else set())
                                 | {f'out{g}_{k}' for g in range(len(tasks.groups))
                                    for k in ('kernel', 'bias')})

  @jax.jit
  def run(params):
    v = {'params': params}
    out = model.apply(v, X)
    z = model.apply(v, X, method='representation')
    direct = model.apply(v, z, inputs=X, method='heads')
    stacked = model.apply(v, jax.tree.map(lambda a: jnp.broadcast_to(a, (num,) + a.shape), z),
                          stacked=True, inputs=X, method='heads')
    return out, z, direct, stacked

  out, z, direct, stacked = run(params)
  assert set(out) == set(tasks.names)
  hand, _ = _hand_fusion(params, z, tasks, **options)
  for t in tasks:
    assert out[t.name].shape == (3, t.out_dim)
    np.testing.assert_allclose(direct[t.name], out[t.name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked[t.name], out[t.name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[t.name], hand[t.name], rtol=1e-5, atol=1e-6)


# That stacked copy t reaches task t only: tests/test_model_zoo.py (every model).


def test_gates_are_in_0_1_and_the_fusion_is_convex_and_uniform_at_zero_gates():
  num = 4
  model, tasks = _model(num), _tasks(num)
  params = _init(model)
  rng = np.random.default_rng(3)
  params['task'] = {**params['task'],
                    'gate_bias': rng.normal(0, 2, (num, num)).astype(np.float32),
                    'gate_kernel': rng.normal(0, 1, params['task']['gate_kernel'].shape)
                    .astype(np.float32)}
  apply = jax.jit(lambda params: (model.apply({'params': params}, X),
                                  model.apply({'params': params}, X, method='representation')))
  out, rep = apply(params)
  _, gates = _hand_fusion(params, rep, tasks)
  for name in tasks.names:
    w = gates[name]
    assert np.all((w > 0) & (w < 1)) and np.ptp(w) > 0.1
    y = _columns_prediction(params, rep, tasks, name)                   # [B, T_cols, o]
    assert np.all(y.min(1) - 1e-5 <= out[name]) and np.all(out[name] <= y.max(1) + 1e-5)

  # b = 0 and U = 0: every gate is 1/2 and y_t is the mean of the columns' predictions.
  params['task'] = {**params['task'], 'gate_bias': np.zeros((num, num), np.float32),
                    'gate_kernel': np.zeros_like(params['task']['gate_kernel'])}
  out, rep = apply(params)
  for name in tasks.names:
    np.testing.assert_allclose(out[name], _columns_prediction(params, rep, tasks, name).mean(1),
                               rtol=1e-5, atol=1e-6)


def test_the_gate_gradient_has_the_closed_form():
  """Static gates a_t = b_t: dy_t/da_ti = w_ti (1 - w_ti) (Y_it - y_t) / (sum_j w_tj + eps),
  and y_t does not depend on any other task's gates."""
  num = 3
  model, tasks = _model(num, context='static'), _tasks(num)
  params = _init(model)
  bias = np.random.default_rng(4).normal(0, 1.5, (num, num)).astype(np.float32)

  @jax.jit
  def run(bias):
    with_bias = lambda b: {**params, 'task': {**params['task'], 'gate_bias': b}}
    rep = model.apply({'params': with_bias(bias)}, X, method='representation')
    jac = jax.jacrev(lambda b: model.apply({'params': with_bias(b)}, X))(bias)
    return model.apply({'params': with_bias(bias)}, X), rep, jac

  out, rep, jac = run(bias)
  for t, name in enumerate(tasks.names):
    w = 1 / (1 + np.exp(-bias[t].astype(np.float64)))            # [T_cols]
    y = _columns_prediction(params, rep, tasks, name)                    # [B, T_cols, o]
    expected = (w * (1 - w))[None, :, None] * (y - np.asarray(out[name])[:, None]) / (
        w.sum() + 1e-6)                                          # [B, T_cols, o]
    got = np.asarray(jac[name])                                  # [B, o, T, T_cols]
    np.testing.assert_allclose(got[:, :, t], np.moveaxis(expected, 1, 2), rtol=1e-4,
                               atol=1e-6)
    assert not np.any(np.delete(got, t, axis=2))


def test_task_parameters_get_gradient_only_from_their_own_task_and_detach():
  num = 4
  tasks = _tasks(num)
  rng = np.random.default_rng(1)
  batch = {'inputs': X, 'labels': {'r0': rng.normal(size=(3, 1)), 'b1': rng.integers(0, 2, 3),
                                   'c2': rng.integers(0, 3, 3), 's3': rng.normal(size=(3, 2))}}
  for detach in (False, True):
    model = _model(num, detach_predictions=detach)
    params = _init(model)
    jac = jax.jit(jax.jacrev(lambda p: tasks.losses(model.apply({'params': p}, X), batch)))(
        params)
    # Slice j of a task parameter (gates: task j; output layers of group g: its j-th task)
    # gets gradient from that task's loss only.
    for key, leaf in jac['task'].items():
      owners = (np.arange(num) if key.startswith('gate') else
                np.asarray(tasks.groups[int(key[3:key.index('_')])].indices))
      nonzero = np.any(np.asarray(leaf).reshape(num, len(owners), -1) != 0, axis=2)
      allowed = np.arange(num)[:, None] == owners[None, :]
      assert not np.any(nonzero & ~allowed), key
      if key.startswith('gate') or not detach:
        np.testing.assert_array_equal(nonzero, allowed)
    columns = jax.tree.leaves(jac['shared']['columns'])
    if detach:   # the task losses train only the gates (and the trunk through the context)
      assert not any(np.any(leaf) for leaf in columns)
      assert not any(np.any(jac['task'][k]) for k in jac['task'] if k.startswith('out'))
      assert np.any(jax.tree.leaves(jac['shared']['backbone'])[0])
    else:        # every task's loss depends on every column
      for leaf in columns:
        assert np.all(np.any(np.asarray(leaf).reshape(num, num, -1) != 0, axis=2))


@pytest.mark.parametrize('option,value,message', [
    ('context', 'input', 'context: must be one of'),
    ('detach_predictions', 'yes', 'detach_predictions: must be a bool'),
])
def test_bad_options(option, value, message):
  with pytest.raises(ValueError, match='^gated_fusion.' + message):
    _model(2, **{option: value})


@pytest.mark.parametrize('method', ['ew', 'cagrad'])
def test_trains_end_to_end(tmp_path, method):
  train_tiny(tmp_path, **{'model.name': 'gated_fusion', 'weighting.name': method})
