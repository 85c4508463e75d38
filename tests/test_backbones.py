"""SmallCNN and TransformerEncoder backbones: shapes, hand references, invariances, hooks."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, train
from mtl_jax.train import ConfigError
from tests.conftest import tiny_config

KEY = jax.random.PRNGKey(0)
cnn = functools.partial(models.get_backbone, 'cnn')
transformer = functools.partial(models.get_backbone, 'transformer')


def _output_shape(module, shape):
  """The output shape of a freshly initialised ``module`` (traced only, nothing computed)."""
  out, _ = jax.eval_shape(lambda x: module.init_with_output(KEY, x), jnp.ones(shape))
  return out.shape


def _normal(shape, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('shape, output, expected', [
    ((2, 16), 'map', (2, 4, 8)),          # 1-D signal 16 -> 8 -> 4
    ((2, 16), 'flatten', (2, 32)),
    ((2, 16), 'mean', (2, 8)),
    ((2, 8, 8), 'map', (2, 2, 2, 8)),     # channel axis added
    ((2, 8, 8, 3), 'map', (2, 2, 2, 8)),
    ((2, 8, 4, 3), 'flatten', (2, 2 * 1 * 8)),
    ((2, 1), 'map', (2, 1, 8)),           # size 1 is never pooled to 0
    ((2, 3), 'map', (2, 1, 8)),
])
def test_cnn_output_shapes(shape, output, expected):
  assert _output_shape(cnn(channels=(4, 8), output=output), shape) == expected


def test_cnn_without_pooling_keeps_spatial_size():
  assert _output_shape(cnn(channels=(4, 8), pool=False), (2, 16)) == (2, 16, 8)
  assert _output_shape(cnn(channels=(4, 8), pool=(False, True)), (2, 6, 6, 1)) == (2, 3, 3, 8)


@pytest.mark.parametrize('shape, kwargs, expected', [
    ((2, 16), {}, (2, 4, 8)),                           # 4 chunks of 4
    ((2, 16), {'num_tokens': 2, 'output': 'mean'}, (2, 8)),
    ((2, 16), {'output': 'cls'}, (2, 8)),
    ((2, 5, 3), {}, (2, 5, 8)),                          # tokens kept
    ((2, 8, 8, 3), {}, (2, 4, 8)),                       # 4x4 patches: 2 x 2 of them
    ((2, 8, 4, 1), {'patch_size': 2, 'output': 'mean'}, (2, 8)),
])
def test_transformer_output_shapes(shape, kwargs, expected):
  options = dict(d_model=8, num_heads=2, **{'output': 'tokens', **kwargs})
  assert _output_shape(transformer(**options), shape) == expected


def test_transformer_patches_are_row_major_pixel_blocks():
  from mtl_jax._src.models.transformer import tokenize  # the private tokeniser, on purpose
  x = jnp.arange(2 * 4 * 6 * 3.).reshape(2, 4, 6, 3)
  tokens = tokenize(x, num_tokens=4, patch_size=2)
  assert tokens.shape == (2, 6, 12)
  # patch (i, j) = pixels [2i:2i+2, 2j:2j+2, :] in (row, col, channel) order.
  np.testing.assert_array_equal(tokens[1, 1 * 3 + 2], x[1, 2:4, 4:6, :].reshape(-1))


# ----------------------------------------------------------------------------- CNN reference


def _first_stage(module, variables, x):
  seen = {}

  def hook(name, h):
    seen.setdefault(name, h)
    return h

  module.apply(variables, x, hook=hook)
  return seen['block0']


@pytest.mark.parametrize('shape', [(3, 10), (2, 6, 7, 2)])
def test_cnn_first_stage_equals_lax_conv_relu_maxpool(shape):
  module = cnn(channels=(5, 3), kernel_size=3)
  x = _normal(shape)
  variables = module.init(KEY, x)
  p = variables['params']['conv0']
  lhs = x[..., None] if x.ndim == 2 else x
  dims = ('NWC', 'WIO', 'NWC') if lhs.ndim == 3 else ('NHWC', 'HWIO', 'NHWC')
  spatial = lhs.ndim - 2
  h = jax.lax.conv_general_dilated(lhs, p['kernel'], (1,) * spatial, 'SAME',
                                   dimension_numbers=dims) + p['bias']
  h = jax.lax.reduce_window(jnp.maximum(h, 0), -jnp.inf, jax.lax.max, (1,) + (2,) * spatial + (1,),
                            (1,) + (2,) * spatial + (1,), 'VALID')
  np.testing.assert_allclose(_first_stage(module, variables, x), h, rtol=1e-5, atol=1e-5)


def test_cnn_batch_norm_updates_stats_in_training_and_uses_running_averages_in_eval():
  module = cnn(channels=(4,), norm='batch', output='flatten')
  x = 3.0 + 2.0 * _normal((8, 12))
  variables = module.init(KEY, x)
  assert 'bias' not in variables['params']['conv0']          # the norm's shift replaces it
  stats = variables['batch_stats']['norm0']
  _, updated = module.apply(variables, x, train=True, mutable=['batch_stats'])
  new = updated['batch_stats']['norm0']
  # momentum 0.9: new = 0.9 old + 0.1 batch statistic of the conv output
  conv = jax.lax.conv_general_dilated(x[..., None], variables['params']['conv0']['kernel'], (1,),
                                      'SAME', dimension_numbers=('NWC', 'WIO', 'NWC'))
  np.testing.assert_allclose(new['mean'], 0.9 * stats['mean'] + 0.1 * conv.mean((0, 1)),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(new['var'], stats['var'])
  # Eval: no batch statistics; each example's output is independent of the rest of the batch,
  # the stats stay as they were, and they are what the output depends on.
  out, unchanged = module.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(module.apply(variables, x[:2]), out[:2], rtol=1e-6, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, unchanged['batch_stats'], variables['batch_stats'])
  moved = {**variables, 'batch_stats': updated['batch_stats']}
  assert not np.allclose(module.apply(moved, x), out)


# ----------------------------------------------------------------------------- transformer


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * p['scale'] + p['bias']


def _reference_block(p, x):
  """x + MHA(LN x), then + MLP(LN x), written out with einsums and a softmax."""
  a = p['attn']
  y = _layer_norm(x, p['ln_attn'])
  q, k, v = (jnp.einsum('bnd,dhk->bnhk', y, a[n]['kernel']) + a[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = jnp.einsum('bqhk,bshk->bhqs', q, k) / math.sqrt(q.shape[-1])
  o = jnp.einsum('bhqs,bshk->bqhk', jax.nn.softmax(logits, axis=-1), v)
  x = x + jnp.einsum('bqhk,hkd->bqd', o, a['out']['kernel']) + a['out']['bias']
  y = _layer_norm(x, p['ln_mlp'])
  y = jax.nn.gelu(y @ p['mlp_in']['kernel'] + p['mlp_in']['bias'])
  return x + y @ p['mlp_out']['kernel'] + p['mlp_out']['bias']


def _stages(module, variables, x):
  seen = {}

  def hook(name, h):
    seen[name] = h
    return h

  out = module.apply(variables, x, hook=hook)
  return seen, out


def test_transformer_blocks_equal_a_hand_written_encoder():
  module = transformer(d_model=8, num_heads=2, num_layers=2, output='tokens')
  x = _normal((2, 5, 3))
  variables = module.init(KEY, x)
  p = variables['params']
  seen, out = _stages(module, variables, x)
  h = x @ p['embed']['kernel'] + p['embed']['bias'] + p['pos_embed']
  for name in ('block0', 'block1'):
    h = _reference_block(p[name], h)
    np.testing.assert_allclose(seen[name], h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, _layer_norm(h, p['ln_final']), rtol=1e-4, atol=1e-5)


def test_transformer_attention_over_one_token_is_the_value_path():
  # softmax over a single key is 1: MHA(y) = W_o (W_v y + b_v) + b_o, whatever W_q, W_k are.
  module = transformer(d_model=8, num_heads=2, num_layers=1, output='tokens')
  x = _normal((3, 1, 4))
  variables = module.init(KEY, x)
  p = variables['params']
  seen, _ = _stages(module, variables, x)
  b, a = p['block0'], p['block0']['attn']
  h = x @ p['embed']['kernel'] + p['embed']['bias'] + p['pos_embed']
  v = jnp.einsum('bnd,dhk->bnhk', _layer_norm(h, b['ln_attn']), a['value']['kernel']) \
      + a['value']['bias']
  h = h + jnp.einsum('bnhk,hkd->bnd', v, a['out']['kernel']) + a['out']['bias']
  mlp = jax.nn.gelu(_layer_norm(h, b['ln_mlp']) @ b['mlp_in']['kernel'] + b['mlp_in']['bias'])
  h = h + mlp @ b['mlp_out']['kernel'] + b['mlp_out']['bias']
  np.testing.assert_allclose(seen['block0'], h, rtol=1e-4, atol=1e-5)
  scrambled = jax.tree.map(lambda w: w, variables)
  for n in ('query', 'key'):
    scrambled['params']['block0']['attn'][n] = jax.tree.map(
        lambda w: 5.0 * _normal(w.shape, seed=7), a[n])
  np.testing.assert_allclose(_stages(module, scrambled, x)[0]['block0'], h, rtol=1e-4, atol=1e-5)


def test_transformer_is_permutation_equivariant_without_position_embeddings():
  module = transformer(d_model=8, num_heads=2, output='tokens')
  x = _normal((2, 6, 3))
  variables = module.init(KEY, x)
  variables['params']['pos_embed'] = jnp.zeros_like(variables['params']['pos_embed'])
  perm = np.array([3, 0, 5, 1, 4, 2])
  out = module.apply(variables, x)
  np.testing.assert_allclose(module.apply(variables, x[:, perm]), out[:, perm], rtol=1e-5,
                             atol=1e-5)
  # ... and the position embeddings break it.
  variables['params']['pos_embed'] = _normal(variables['params']['pos_embed'].shape)
  out = module.apply(variables, x)
  assert not np.allclose(module.apply(variables, x[:, perm]), out[:, perm], atol=1e-3)


# ----------------------------------------------------------------------------- hooks


@pytest.mark.parametrize('module, shape', [
    (cnn(channels=(4, 4, 4), output='mean'), (2, 16)),
    (cnn(channels=(4, 4), output='map'), (2, 4, 4, 2)),
    (transformer(d_model=8, num_heads=2, num_layers=3), (2, 16)),
    (transformer(d_model=8, num_heads=2, output='cls'), (2, 8, 8, 1)),
])
def test_hooks_see_every_stage_in_order_and_replace_its_output(module, shape):
  x = _normal(shape)
  variables = module.init(KEY, x)
  names = []
  module.apply(variables, x, hook=lambda name, h: names.append(name) or h)
  assert tuple(names) == module.stage_names and len(names) >= 2
  last = module.stage_names[-1]
  out = module.apply(variables, x, hook=lambda name, h: h * 0 if name == last else h)
  if 'ln_final' in variables['params']:     # LN(0) = its bias, for every example and token
    expected = jnp.broadcast_to(variables['params']['ln_final']['bias'], out.shape)
  else:
    expected = jnp.zeros_like(out)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert not np.allclose(module.apply(variables, x), expected)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize('builder, kwargs, match', [
    (cnn, {'channels': (4, 0)}, r'cnn.channels: must be positive integer widths, got \(4, 0\)'),
    (cnn, {'channels': ()}, r'cnn.channels: must have at least one block'),
    (cnn, {'kernel_size': 0}, r'cnn.kernel_size: must be a positive integer, got 0'),
    (cnn, {'norm': 'layer'}, r"cnn.norm: must be one of \('none', 'batch'\), got 'layer'"),
    (cnn, {'pool': (True,)}, r'cnn.pool: must be a bool or one bool per block \(2\)'),
    (cnn, {'output': 'avg'}, r"cnn.output: must be one of \('map', 'flatten', 'mean'\)"),
    (cnn, {'dropout': 1.0}, r'cnn.dropout: must be in \[0, 1\)'),
    (transformer, {'d_model': 8, 'num_heads': 3}, r'transformer.num_heads: must divide '
     r'd_model=8, got 3'),
    (transformer, {'num_layers': 0}, r'transformer.num_layers: must be a positive integer'),
    (transformer, {'num_tokens': 0}, r'transformer.num_tokens: must be a positive integer'),
    (transformer, {'patch_size': 2.0}, r'transformer.patch_size: must be a positive integer'),
    (transformer, {'mlp_ratio': 0}, r'transformer.mlp_ratio: must be a positive number'),
    (transformer, {'output': 'max'}, r"transformer.output: must be one of \('mean', 'tokens', "
     r"'cls'\), got 'max'"),
])
def test_bad_options_raise_named_errors(builder, kwargs, match):
  with pytest.raises(ValueError, match=match):
    builder(**kwargs)


@pytest.mark.parametrize('module, shape, match', [
    (transformer(d_model=8, num_heads=2, num_tokens=3), (2, 16),
     r'transformer.num_tokens: must divide the input width 16 \(input shape \(2, 16\)\), got 3'),
    (transformer(d_model=8, num_heads=2, patch_size=3), (2, 8, 8, 1),
     r'transformer.patch_size: must divide the image height and width \(input shape '
     r'\(2, 8, 8, 1\)\), got 3'),
    (transformer(d_model=8, num_heads=2), (2, 4, 4, 4, 1), r'transformer.input: expects'),
    (cnn(channels=(4,)), (2, 4, 4, 4, 1), r'cnn.input: expects .* got \(2, 4, 4, 4, 1\)'),
])
def test_inputs_that_do_not_fit_raise_named_errors(module, shape, match):
  with pytest.raises(ValueError, match=match):
    _output_shape(module, shape)


def test_registry_and_config_blocks():
  assert {'cnn', 'transformer'} <= set(models.backbone_names())
  assert models.backbone_hyperparameters('cnn') == dict(
      channels=(16, 32), kernel_size=3, norm='none', pool=True, output='map')
  assert models.backbone_hyperparameters('transformer')['d_model'] == 32
  assert isinstance(models.get_backbone('cnn', channels=(4,), dropout=0.1),
                    models.SmallCNN)
  with pytest.raises(ConfigError, match=r'config.model.cnn.norm: must be one of'):
    train.train_and_evaluate(tiny_config(**{'model.backbone': 'cnn', 'model.cnn.norm': 'bn'}),
                             '/nonexistent/unused')


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize('overrides', [
    {'model.backbone': 'cnn', 'model.cnn.channels': (4, 4), 'model.cnn.norm': 'batch'},
    {'model.backbone': 'transformer', 'model.transformer.d_model': 8,
     'model.transformer.num_heads': 2, 'model.transformer.num_layers': 1,
     'weighting.name': 'mgda'},
])
def test_backbones_train_end_to_end(tmp_path, overrides):
  results = train.train_and_evaluate(tiny_config(**overrides, **{'train.steps': 10}),
                                     str(tmp_path))
  assert results['steps'] == 10 and results['rejected_steps'] == 0
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines and all(math.isfinite(l['loss']) for l in lines)
  values = [v for task in results['metrics'].values() for k, v in task.items() if k != 'count']
  assert values and all(math.isfinite(v) for v in values)
