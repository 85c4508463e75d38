"""Cross-stitch and residual column models against hand computations (numpy references)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, tasks as T
from tests.conftest import train_tiny


class TinyConv(nn.Module):
  """A test backbone: two feature-map stages (the second downsamples), optionally a flatten."""
  flatten: bool = False

  @property
  def stage_names(self):
    return ('conv0', 'conv1') + (('flat',) if self.flatten else ())

  @nn.compact
  def __call__(self, x, train=False, hook=None):
    hook = hook or (lambda name, h: h)
    x = hook('conv0', nn.relu(nn.Conv(4, (3, 3))(x)))
    x = hook('conv1', nn.relu(nn.Conv(6, (3, 3), strides=2)(x)))
    if self.flatten:
      x = hook('flat', x.reshape(x.shape[0], -1))
    return x


def mixed_tasks(num):
  kinds = [T.regression('r0'), T.binary('b1'), T.regression('r2', 2), T.multiclass('m3', 3)]
  return T.TaskSet(kinds[:num])


def regressions(num):
  return T.TaskSet([T.regression(f'y{t}') for t in range(num)])


def shape_cases():
  """(backbone, T): T = 1, 2, 4 over an MLP; T = 1, 3 over a CNN (the library's if any)."""
  conv = 'cnn' if 'cnn' in models.backbone_names() else 'conv'
  return [('mlp', 1), ('mlp', 2), ('mlp', 4), (conv, 1), (conv, 3)]


def backbone_and_input_shape(label):
  if label == 'mlp':
    return models.get_backbone('mlp', hidden=(6, 5)), (3, 7)
  if label == 'cnn':
    return models.get_backbone('cnn', channels=(4, 6), norm='batch'), (2, 8, 8, 3)
  return TinyConv(), (2, 6, 6, 2)


def fake_init(model, x, seed=0):
  """Variables of the model's structure (from an abstract init, nothing compiled) filled with
  seeded normal values; batch-norm statistics mean 0, var 1.  The real initialisers are tested
  separately (a jitted init compiles every vmapped initialiser: seconds per model)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    key = jax.tree_util.keystr(path)
    if key.endswith("['var']"):
      return jnp.ones(s.shape, s.dtype)
    if key.endswith("['mean']"):
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def real_init(model, x):
  return jax.jit(model.init)(jax.random.key(0, impl='unsafe_rbg'), x)


def set_params(params, prefix, fn):
  """``fn(leaf)`` for the params whose name starts with ``prefix``."""
  return jax.tree_util.tree_map_with_path(
      lambda path, v: fn(v) if str(path[-1].key).startswith(prefix) else v, params)


def tasks_reaching(jac_leaves, copies):
  """[copy, task]: does task t's loss reach the parameters of copy c?  ``jac_leaves``: the
  per-task Jacobian leaves [T, copies, ...]."""
  norms = sum(jnp.sum(leaf.reshape(leaf.shape[0], copies, -1) ** 2, -1) for leaf in jac_leaves)
  return np.asarray(norms > 0).T


def per_task_jacobian(model, variables, x, tasks):
  def losses(params):
    preds = model.apply({**variables, 'params': params}, x)
    return jnp.stack([jnp.mean(preds[name] ** 2) for name in tasks.names])
  return jax.jit(jax.jacrev(losses))(variables['params'])


def at_most_one_task(jac_leaves):
  return all(np.all(np.sum(np.abs(np.asarray(leaf)) > 0, axis=0) <= 1) for leaf in jac_leaves)


def _mlp_forward(layers, x, hook):
  """Numpy MLP columns: u_c = relu(h_c W_c + b_c) per layer, then [h_c] = hook(l, [u_c])."""
  hs = [np.asarray(x)] * len(layers[0])
  for l in range(len(layers)):
    hs = hook(l, [np.maximum(h @ w + b, 0.0) for h, (w, b) in zip(hs, layers[l])])
  return hs


def _layers(backbone_params, num_layers, num_columns):
  return [[(np.asarray(backbone_params[f'Dense_{l}']['kernel'][c]),
            np.asarray(backbone_params[f'Dense_{l}']['bias'][c])) for c in range(num_columns)]
          for l in range(num_layers)]


@pytest.mark.parametrize('name', ['cross_stitch', 'residual'])
@pytest.mark.parametrize('label,num', shape_cases())
def test_shapes_split_and_representation_heads(name, label, num):
  tasks = mixed_tasks(num)
  backbone, shape = backbone_and_input_shape(label)
  model = models.get(name, tasks, backbone, tower_hidden=(3,))
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  variables = fake_init(model, x)
  assert set(variables['params']) == {'shared', 'task'}
  columns = num + (name == 'residual')          # the residual model's shared stream
  assert all(leaf.shape[0] == columns for leaf in jax.tree.leaves(variables['params']['shared']))
  xs = jnp.stack([x * (t + 1.0) for t in range(num)])

  @jax.jit
  def run(variables, x, xs):
    preds = model.apply(variables, x)
    z = model.apply(variables, x, method=model.representation)
    split = model.apply(variables, z, inputs=x, method=model.heads)
    # Stacked: task t reads copy t only (copy t computed from its own input xs[t]).
    zs = jax.vmap(lambda xt: model.apply(variables, xt, method=model.representation))(xs)
    stacked = model.apply(variables, zs, stacked=True, method=model.heads)
    separate = jax.vmap(lambda xt: model.apply(variables, xt))(xs)
    if 'batch_stats' in variables:      # training mode updates the (stacked) statistics
      _, new_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
      assert jax.tree.structure(new_state) == jax.tree.structure(
          {'batch_stats': variables['batch_stats']})
    return preds, z, split, stacked, separate

  preds, z, split, stacked, separate = run(variables, x, xs)
  assert {k: v.shape for k, v in preds.items()} == {t.name: (shape[0], t.out_dim) for t in tasks}
  assert z.shape[0] == num
  for t, task in enumerate(tasks.names):
    np.testing.assert_allclose(split[task], preds[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked[task], separate[task][t], rtol=1e-5, atol=1e-6)


def test_initialisation():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 7)))
  backbone = models.get_backbone('mlp', hidden=(6, 5))
  for num, granularity, alpha_self, expected_self, expected_other in [
      (1, 'channel', 0.9, 1.0, None), (2, 'channel', 0.9, 0.9, 0.1),
      (4, 'scalar', 0.7, 0.7, 0.1)]:
    model = models.get('cross_stitch', regressions(num), backbone, granularity=granularity,
                       alpha_self=alpha_self)
    params = real_init(model, x)['params']
    for l, width in enumerate((6, 5)):
      alpha = np.asarray(params['shared']['module'][f'alpha_layer{l}'])
      assert alpha.shape == (num, num) + ((width,) if granularity == 'channel' else ())
      expected = np.where(np.eye(num, dtype=bool), expected_self, expected_other or 0.0)
      np.testing.assert_allclose(alpha, expected.reshape(expected.shape + (1,) * (alpha.ndim - 2))
                                 * np.ones_like(alpha), rtol=1e-6)
    if num == 2:
      # Paper init, by hand: x~_1 = 0.9 x_1 + 0.1 x_2 at layer0, then at layer1.
      layers = _layers(params['shared']['module']['backbone'], 2, 2)
      mix = lambda l, us: [0.9 * us[0] + 0.1 * us[1], 0.1 * us[0] + 0.9 * us[1]]
      z = jax.jit(lambda v, x: model.apply(v, x, method=model.representation))(
          {'params': params}, x)
      np.testing.assert_allclose(z, np.stack(_mlp_forward(layers, x, mix)), rtol=1e-5,
                                 atol=1e-6)
  model = models.get('residual', regressions(3), backbone)
  params = real_init(model, x)['params']['shared']['module']
  for name in ('gamma_layer0', 'gamma_layer1', 'beta_layer0', 'beta_layer1'):
    np.testing.assert_array_equal(params[name], 0.0)
  assert params['gamma_layer0'].shape == (4, 3) and params['beta_layer0'].shape == (4,)
  # Each column gets its own initialisation.
  kernel = params['backbone']['Dense_0']['kernel']
  assert not np.allclose(kernel[0], kernel[1])


def _cross_stitch_reference(params, x, stitched, num, hidden):
  layers = _layers(params['shared']['module']['backbone'], len(hidden), num)

  def hook(l, us):
    if l not in stitched:
      return us
    alpha = np.asarray(params['shared']['module'][f'alpha_layer{l}'])   # [i, j, C] or [i, j]
    if alpha.ndim == 2:
      alpha = np.broadcast_to(alpha[..., None], alpha.shape + (us[0].shape[-1],))
    return [sum(alpha[i, j] * us[j] for j in range(num)) for i in range(num)]

  return np.stack(_mlp_forward(layers, x, hook))


@pytest.mark.parametrize('granularity,num,stitch,stitched', [
    ('channel', 3, 'all', (0, 1)), ('scalar', 2, 'layer1', (1,))])
def test_cross_stitch_equals_hand_mixing(granularity, num, stitch, stitched):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 7)))
  model = models.get('cross_stitch', regressions(num), models.get_backbone('mlp', hidden=(6, 5)),
                     stitch=stitch, granularity=granularity)
  variables = fake_init(model, x)
  assert sorted(k for k in variables['params']['shared']['module'] if k.startswith('alpha')) == [
      f'alpha_layer{l}' for l in stitched]
  z = jax.jit(lambda v, x: model.apply(v, x, method=model.representation))(variables, x)
  np.testing.assert_allclose(
      z, _cross_stitch_reference(variables['params'], x, stitched, num, (6, 5)),
      rtol=1e-5, atol=1e-5)


def test_identity_alpha_and_zero_links_equal_independent_columns():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 2))
  tasks = mixed_tasks(3)
  column = jax.jit(lambda p, x: TinyConv().apply({'params': p}, x))
  heads = jax.jit(lambda p, z: models.TaskHeads(tasks, (3,)).apply({'params': p}, z, stacked=True))
  identity = lambda a: jnp.broadcast_to(jnp.eye(3)[:, :, None], a.shape)
  zero_links = lambda p: set_params(set_params(p, 'gamma', jnp.zeros_like), 'beta',
                                    jnp.zeros_like)
  for name, setting in [('cross_stitch', lambda p: set_params(p, 'alpha', identity)),
                        ('residual', zero_links)]:
    model = models.get(name, tasks, TinyConv(), tower_hidden=(3,))
    params = setting(fake_init(model, x)['params'])
    z, preds = jax.jit(lambda p, x: (model.apply({'params': p}, x, method=model.representation),
                                     model.apply({'params': p}, x)))(params, x)
    for t, task in enumerate(tasks.names):
      zt = column(jax.tree.map(lambda leaf: leaf[t], params['shared']['module']['backbone']), x)
      np.testing.assert_allclose(z[t], zt, rtol=1e-5, atol=1e-5)
      # The towers fed column t for every task: task t's prediction is the model's.
      np.testing.assert_allclose(heads(params['task'], jnp.stack([zt] * 3))[task], preds[task],
                                 rtol=1e-5, atol=1e-5)


def _residual_reference(params, x, num, shared_stream, direction, hidden):
  module = params['shared']['module']
  layers = _layers(module['backbone'], len(hidden), num + shared_stream)

  def hook(l, us):
    gamma = np.asarray(module[f'gamma_layer{l}'])                  # [column t, source s]
    out = []
    for t in range(num):
      h = us[t] + sum(gamma[t, s] * us[s] for s in range(num)
                      if (s < t if direction == 'previous' else s != t))
      if shared_stream:
        h = h + np.asarray(module[f'beta_layer{l}'])[t] * us[num]
      out.append(h)
    return out + us[num:]

  return np.stack(_mlp_forward(layers, x, hook)[:num])


@pytest.mark.parametrize('shared_stream,direction,detach,links', [
    (True, 'all', False, 'all'), (False, 'all', True, 'all'),
    (True, 'previous', False, 'layer1')])
def test_residual_equals_hand_links(shared_stream, direction, detach, links):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 7)))
  num = 3
  model = models.get('residual', regressions(num), models.get_backbone('mlp', hidden=(6, 5)),
                     shared_stream=shared_stream, direction=direction, detach=detach,
                     links=links)
  params = fake_init(model, x)['params']
  module = params['shared']['module']
  assert ('beta_layer1' in module) == shared_stream
  assert ('gamma_layer0' in module) == (links == 'all')
  if links != 'all':   # no links at layer0: the reference with zero links there
    params['shared']['module'] = {**module, 'gamma_layer0': jnp.zeros((num + shared_stream, num)),
                                  'beta_layer0': jnp.zeros((num + shared_stream,))}
  z = jax.jit(lambda p, x: model.apply({'params': p}, x, method=model.representation))(
      fake_init(model, x)['params'], x)
  np.testing.assert_allclose(
      z, _residual_reference(params, x, num, shared_stream, direction, (6, 5)),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('detach,direction', [(True, 'all'), (False, 'all'),
                                              (False, 'previous')])
def test_residual_gradient_flow(detach, direction):
  num = 3
  tasks = regressions(num)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 7))
  model = models.get('residual', tasks, models.get_backbone('mlp', hidden=(6, 5)),
                     tower_hidden=(4,), detach=detach, direction=direction)
  variables = fake_init(model, x)
  variables['params'] = set_params(set_params(variables['params'], 'gamma', lambda a: a + 2.0),
                                   'beta', lambda a: a + 2.0)        # non-zero links
  jac = per_task_jacobian(model, variables, x, tasks)
  reach = tasks_reaching(jax.tree.leaves(jac['shared']['module']['backbone']), num + 1)
  assert reach[num].all()                 # the shared stream (last column) feeds every task
  if detach:                              # column t: task t's gradient only
    np.testing.assert_array_equal(reach[:num], np.eye(num, dtype=bool))
  elif direction == 'all':
    assert reach[:num].all()
  else:                                   # column s feeds the tasks t >= s only
    np.testing.assert_array_equal(reach[:num], np.triu(np.ones((num, num), bool)))
  # Column t's links (its rows of gamma, beta) at the last stage, at every stage if detached,
  # and the towers: task t only.
  module = jac['shared']['module']
  assert at_most_one_task([module[k] for k in module if k.endswith('layer1') or detach
                           and k != 'backbone'])
  if not detach:   # column t's layer0 links feed the other tasks through the layer1 links
    assert not at_most_one_task([module['gamma_layer0']])
  assert at_most_one_task(jax.tree.leaves(jac['task']))


def test_cross_stitch_couples_every_column():
  num = 3
  tasks = regressions(num)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 7))
  model = models.get('cross_stitch', tasks, models.get_backbone('mlp', hidden=(6, 5)),
                     tower_hidden=(4,))
  jac = per_task_jacobian(model, fake_init(model, x), x, tasks)
  assert tasks_reaching(jax.tree.leaves(jac['shared']['module']['backbone']), num).all()
  assert at_most_one_task(jax.tree.leaves(jac['task']))


def test_bad_options_raise_named_errors():
  tasks, backbone = regressions(2), models.get_backbone('mlp', hidden=(6, 5))
  with pytest.raises(ValueError, match=r"cross_stitch\.stitch: unknown stage 'x'; the backbone "
                     r"has \['layer0', 'layer1'\]"):
    models.get('cross_stitch', tasks, backbone, stitch='x')
  with pytest.raises(ValueError, match=r'cross_stitch\.stitch: must select at least one'):
    models.get('cross_stitch', tasks, backbone, stitch=())
  with pytest.raises(ValueError, match=r'cross_stitch\.granularity'):
    models.get('cross_stitch', tasks, backbone, granularity='pixel')
  with pytest.raises(ValueError, match=r'cross_stitch\.alpha_self'):
    models.get('cross_stitch', tasks, backbone, alpha_self=1.5)
  with pytest.raises(ValueError, match=r"residual\.links: unknown stage 'layer7'"):
    models.get('residual', tasks, backbone, links=('layer0', 'layer7'))
  with pytest.raises(ValueError, match=r'residual\.direction'):
    models.get('residual', tasks, backbone, direction='next')
  with pytest.raises(ValueError, match=r'residual\.detach'):
    models.get('residual', tasks, backbone, detach='yes')
  with pytest.raises(ValueError, match=r'residual\.shared_stream'):
    models.get('residual', tasks, backbone, shared_stream=1)
  # Stage lists also as comma-separated strings (a config field keeps its string type).
  model = models.get('cross_stitch', tasks, backbone, stitch='layer1, layer0')
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((2, 3)))
  assert {'alpha_layer0', 'alpha_layer1'} <= set(shapes['params']['shared']['module'])


@pytest.mark.parametrize('name,method', [('cross_stitch', 'ew'), ('residual', 'pcgrad')])
def test_trains(tmp_path, name, method):
  results = train_tiny(tmp_path, **{'model.name': name, 'weighting.name': method,
                                    'model.mlp.hidden': (8, 8)})
  assert results['model'] == name
