"""MTAN over any backbone: the attention equations by hand, masks, gradient flow, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from tests.conftest import train_tiny
from tests.test_columns import (TinyConv, at_most_one_task, backbone_and_input_shape,
                                fake_init, mixed_tasks, per_task_jacobian, regressions,
                                shape_cases, tasks_reaching)


def _run(model):
  """Jitted: predictions and the sown masks / task features {name: [T, B, ...]}."""
  def run(variables, x):
    preds, state = model.apply(variables, x, mutable=['intermediates'])
    return preds, {k: v[0] for k, v in state['intermediates']['task']['attention'].items()}
  return jax.jit(run)


@pytest.mark.parametrize('label,num', shape_cases())
def test_shapes_masks_and_representation_heads(label, num):
  tasks = mixed_tasks(num)
  backbone, shape = backbone_and_input_shape(label)
  model = models.get('mtan', tasks, backbone, tower_hidden=(3,))
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  variables = fake_init(model, x)
  assert set(variables['params']) == {'shared', 'task'}
  assert all(leaf.shape[0] == num
             for leaf in jax.tree.leaves(variables['params']['task']['attention']))
  xs = jnp.stack([x * (t + 1.0) for t in range(num)])

  @jax.jit
  def run(variables, x, xs):
    preds, state = model.apply(variables, x, mutable=['intermediates'])
    z = model.apply(variables, x, method=model.representation)
    split = model.apply(variables, z, inputs=x, method=model.heads)
    broadcast = model.apply(variables, jax.tree.map(
        lambda a: jnp.broadcast_to(a, (num,) + a.shape), z), stacked=True, method=model.heads)
    # Stacked: task t reads copy t only (copy t computed from its own input xs[t]).
    zs = jax.vmap(lambda xt: model.apply(variables, xt, method=model.representation))(xs)
    stacked = model.apply(variables, zs, stacked=True, method=model.heads)
    separate = jax.vmap(lambda xt: model.apply(variables, xt))(xs)
    inter = {k: v[0] for k, v in state['intermediates']['task']['attention'].items()}
    if 'batch_stats' in variables:      # training mode updates the (stacked) statistics
      _, new_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
      assert jax.tree.structure(new_state) == jax.tree.structure(
          {'batch_stats': variables['batch_stats']})
    return preds, z, split, broadcast, stacked, separate, inter

  preds, z, split, broadcast, stacked, separate, inter = run(variables, x, xs)
  assert {k: v.shape for k, v in preds.items()} == {t.name: (shape[0], t.out_dim) for t in tasks}
  assert isinstance(z, tuple) and len(z) == len(backbone.stage_names)
  for t, task in enumerate(tasks.names):
    np.testing.assert_allclose(split[task], preds[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(broadcast[task], preds[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked[task], separate[task][t], rtol=1e-5, atol=1e-6)
  # Masks lie in (0, 1), one per element of the stage output; t = a * p.
  for name, p in zip(backbone.stage_names, z):
    mask = inter[f'mask_{name}']
    assert mask.shape == (num,) + p.shape
    assert np.all((mask > 0) & (mask < 1))
    np.testing.assert_allclose(inter[f'feature_{name}'], mask * p[None], rtol=1e-6)


def _dense(params, name, t, v):
  return v @ np.asarray(params[name]['kernel'][t]) + np.asarray(params[name]['bias'][t])


def test_attention_equations_by_hand():
  num = 2
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 7)))
  model = models.get('mtan', regressions(num), models.get_backbone('mlp', hidden=(6, 5, 3)),
                     stages=('layer2', 'layer0'))
  variables = fake_init(model, x)
  shared, att = variables['params']['shared'], variables['params']['task']['attention']
  assert set(att) == {'mask_layer0_0', 'mask_layer0_1', 'f_layer2', 'mask_layer2_0',
                      'mask_layer2_1'}
  _, inter = _run(model)(variables, x)
  p, h = [], x
  for l in range(3):
    h = np.maximum(h @ np.asarray(shared[f'Dense_{l}']['kernel'])
                   + np.asarray(shared[f'Dense_{l}']['bias']), 0)
    p.append(h)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  g = lambda stage, t, v: sigmoid(_dense(att, f'mask_{stage}_1', t,
                                         np.maximum(_dense(att, f'mask_{stage}_0', t, v), 0)))
  for t in range(num):
    a0 = g('layer0', t, p[0])                               # the first mask reads p^(1) only
    a2 = g('layer2', t, np.concatenate([p[2], _dense(att, 'f_layer2', t, a0 * p[0])], -1))
    np.testing.assert_allclose(inter['mask_layer0'][t], a0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inter['mask_layer2'][t], a2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inter['feature_layer2'][t], a2 * p[2], rtol=1e-5, atol=1e-6)


def test_downsampled_stages_are_resized():
  # A spatially constant first stage (zero conv kernel): its masked task feature is constant,
  # so any resize to the 3x3 second stage keeps it; the second mask is then computable by hand.
  num = 2
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 2)))
  model = models.get('mtan', regressions(num), TinyConv())
  variables = fake_init(model, x)
  conv0 = variables['params']['shared']['Conv_0']
  conv0['kernel'] = jnp.zeros_like(conv0['kernel'])
  conv0['bias'] = jnp.abs(conv0['bias']) + 0.1
  att = variables['params']['task']['attention']
  _, inter = _run(model)(variables, x)
  p1, p2 = jax.jit(lambda v, x: model.apply(v, x, method=model.representation))(variables, x)
  assert p1.shape == (2, 6, 6, 4) and p2.shape == (2, 3, 3, 6)
  assert inter['mask_conv1'].shape == (num, 2, 3, 3, 6)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  g = lambda stage, t, v: sigmoid(_dense(att, f'mask_{stage}_1', t,
                                         np.maximum(_dense(att, f'mask_{stage}_0', t, v), 0)))
  p1c = np.asarray(conv0['bias']) + 0 * np.asarray(p1[:, :1, :1])      # [B, 1, 1, 4]
  for t in range(num):
    t1 = g('conv0', t, p1c) * p1c                                       # constant map
    f = _dense(att, 'f_conv1', t, t1)                                   # [B, 1, 1, 6]
    a2 = g('conv1', t, np.concatenate([p2, np.broadcast_to(f, p2.shape)], -1))
    np.testing.assert_allclose(inter['mask_conv1'][t], a2, rtol=1e-5, atol=1e-6)


def test_masks_forced_to_one_give_the_shared_feature():
  tasks = mixed_tasks(3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 2))
  model = models.get('mtan', tasks, TinyConv(), tower_hidden=(3,))
  params = fake_init(model, x)['params']
  att = params['task']['attention']
  for name in ('conv0', 'conv1'):
    att[f'mask_{name}_1'] = {'kernel': jnp.zeros_like(att[f'mask_{name}_1']['kernel']),
                             'bias': jnp.full_like(att[f'mask_{name}_1']['bias'], 100.0)}
  preds, inter = _run(model)({'params': params}, x)
  z = jax.jit(lambda v, x: model.apply(v, x, method=model.representation))({'params': params}, x)
  for name, p in zip(('conv0', 'conv1'), z):
    np.testing.assert_array_equal(inter[f'mask_{name}'], 1.0)
    np.testing.assert_allclose(inter[f'feature_{name}'], jnp.broadcast_to(p, (3,) + p.shape),
                               rtol=1e-6)
  # Then the model is a shared bottom: the towers read the last stage output p^(J).
  towers = jax.jit(lambda p, z: models.TaskHeads(tasks, (3,)).apply({'params': p}, z))(
      params['task']['towers'], z[-1])
  for task in tasks.names:
    np.testing.assert_allclose(preds[task], towers[task], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('label', ['mlp', 'conv'])
def test_task_params_get_gradient_from_their_own_task_only(label):
  num = 3
  tasks = regressions(num)
  backbone, shape = backbone_and_input_shape(label)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  model = models.get('mtan', tasks, backbone, tower_hidden=(4,))
  jac = per_task_jacobian(model, fake_init(model, x), x, tasks)
  assert at_most_one_task(jax.tree.leaves(jac['task']))
  # Task t reaches its own copy of every attention parameter.
  reach = tasks_reaching(jax.tree.leaves(jac['task']['attention']), num)
  np.testing.assert_array_equal(reach, np.eye(num, dtype=bool))
  # The backbone is shared: every task reaches it.
  norms = sum(jnp.sum(leaf.reshape(num, -1) ** 2, -1) for leaf in jax.tree.leaves(jac['shared']))
  assert np.all(np.asarray(norms) > 0)


def test_bad_stages_raise_named_errors():
  tasks = regressions(2)
  with pytest.raises(ValueError, match=r"mtan\.stages: unknown stage 'x'; the backbone has "
                     r"\['layer0', 'layer1'\]"):
    models.get('mtan', tasks, models.get_backbone('mlp', hidden=(6, 5)), stages='x')
  with pytest.raises(ValueError, match=r'mtan\.stages: must select at least one'):
    models.get('mtan', tasks, models.get_backbone('mlp', hidden=(6, 5)), stages=())
  x = jnp.ones((2, 6, 6, 2))
  # Stages of one rank are fine (also given as a comma-separated string).
  model = models.get('mtan', tasks, TinyConv(flatten=True), stages='conv0,conv1')
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert 'f_flat' not in shapes['params']['task']['attention']


@pytest.mark.parametrize('method,mode', [('ew', 'param'), ('pcgrad', 'rep')])
def test_trains(tmp_path, method, mode):
  results = train_tiny(tmp_path, **{'model.name': 'mtan', 'weighting.name': method,
                                    'weighting.mode': mode, 'model.mlp.hidden': (8, 8)})
  assert results['model'] == 'mtan'


def test_a_vector_stage_after_feature_maps_reads_their_mean():
  """From a [B, H, W, C] stage to a [B, D] one, the task feature enters f as its mean over
  H and W: the mask of the vector stage, recomputed by hand from the sown feature."""
  tasks = regressions(2)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
  model = models.get('mtan', tasks, TinyConv(flatten=True))
  variables = model.init(jax.random.PRNGKey(0), x)
  _, sown = model.apply(variables, x, mutable='intermediates')
  seen = sown['intermediates']['task']['attention']
  p_flat = model.apply(variables, x, method=model.representation)[-1]       # [B, D]
  params = variables['params']['task']['attention']
  dense = lambda name, t, v: v @ params[name]['kernel'][t] + params[name]['bias'][t]
  for t in range(2):
    pooled = jnp.mean(seen['feature_conv1'][0][t], axis=(1, 2))            # [B, C]
    v = jnp.concatenate([p_flat, dense('f_flat', t, pooled)], axis=-1)
    mask = jax.nn.sigmoid(dense('mask_flat_1', t, jax.nn.relu(dense('mask_flat_0', t, v))))
    np.testing.assert_allclose(seen['mask_flat'][0][t], mask, rtol=1e-5, atol=1e-6)
