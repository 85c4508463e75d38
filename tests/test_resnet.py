"""The ResNet backbone ('resnet'): shapes, ResNet-18's parameter count, a hand-written block,
BatchNorm and GroupNorm, hooks, option errors, the Gramian mode and a run through the trainer."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, train
from mtl_jax.train import ConfigError
from tests.conftest import tiny_config, train_tiny
from tests.test_backbones import _normal, _output_shape
from tests.test_gramian import TASKS, _batch, _check, _engine_case

KEY = jax.random.PRNGKey(0)
resnet = functools.partial(models.get_backbone, 'resnet')
TINY = dict(blocks=(1, 1), widths=(4, 6))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('kwargs, shape, expected', [
    ({}, (2, 64, 64, 3), (2, 512)),                                 # ResNet-18, a vector
    ({'output': 'map'}, (2, 224, 224, 3), (2, 7, 7, 512)),          # torchvision's 224 -> 7
    ({'output': 'map', 'stem': 'cifar'}, (2, 64, 64, 3), (2, 8, 8, 512)),   # 64 -> 8
    ({'output': 'map'}, (2, 65, 63, 3), (2, 3, 2, 512)),            # ceil(n / 2) per stride 2
    ({**TINY, 'output': 'map'}, (2, 9, 9), (2, 2, 2, 6)),           # channel axis added
    ({**TINY, 'output': 'map', 'stem': 'cifar'}, (2, 16), (2, 8, 6)),  # a 1-D signal
    ({**TINY, 'output': 'map'}, (2, 1), (2, 1, 6)),                 # no size reaches 0
    ({**TINY, 'norm': 'group'}, (2, 16, 16, 1), (2, 6)),
])
def test_output_shapes(kwargs, shape, expected):
  assert _output_shape(resnet(**kwargs), shape) == expected


def test_resnet18_has_torchvisions_parameter_count():
  # torchvision's resnet18 has 11 689 512 parameters, 513 000 of them in its 1000-way fc.
  variables = jax.eval_shape(lambda: resnet().init(KEY, jnp.ones((1, 64, 64, 3))))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 11_689_512 - 513_000
  stats = variables['batch_stats']
  assert set(stats) == {'stem_norm'} | {f'layer{i}_{j}' for i in range(1, 5) for j in (0, 1)}
  assert 'shortcut_norm' in stats['layer2_0'] and 'shortcut_norm' not in stats['layer1_0']


# ----------------------------------------------------------------------------- references


def _conv(x, kernel, stride, pad):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('stride, width', [(1, 3), (2, 5)])
def test_basic_block_equals_a_hand_written_block(stride, width):
  from mtl_jax._src.models.resnet import BasicBlock  # the block alone, on purpose
  block = BasicBlock(width, stride, norm='none')
  x = _normal((2, 7, 7, 3))
  p = block.init(KEY, x)['params']
  y = jax.nn.relu(_conv(x, p['conv1']['kernel'], stride, 1) + p['conv1']['bias'])
  y = _conv(y, p['conv2']['kernel'], 1, 1) + p['conv2']['bias']
  if stride == 1 and width == 3:
    shortcut = x
    assert 'shortcut' not in p
  else:
    shortcut = _conv(x, p['shortcut']['kernel'], stride, 0) + p['shortcut']['bias']
  expected = jax.nn.relu(y + shortcut)
  assert expected.shape == (2, 7 if stride == 1 else 4, 7 if stride == 1 else 4, width)
  np.testing.assert_allclose(block.apply({'params': p}, x), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_stem_is_conv7_stride2_then_maxpool3_stride2():
  module = resnet(**TINY)
  x = _normal((2, 10, 10, 2))
  variables = module.init(KEY, x)
  seen = {}
  module.apply(variables, x, hook=lambda name, h: seen.setdefault(name, h))
  p, s = variables['params']['stem_norm'], variables['batch_stats']['stem_norm']
  h = _conv(x, variables['params']['stem_conv']['kernel'], 2, 3)
  h = jax.nn.relu((h - s['mean']) / jnp.sqrt(s['var'] + 1e-5) * p['scale'] + p['bias'])
  h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                            ((0, 0), (1, 1), (1, 1), (0, 0)))
  assert h.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(seen['stem'], h, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- norms


def test_batch_norm_updates_stats_in_training_and_uses_running_averages_in_eval():
  module = resnet(**TINY, stem='cifar')
  x = 3.0 + 2.0 * _normal((8, 6, 6, 2))
  variables = module.init(KEY, x)
  stats = variables['batch_stats']
  _, updated = module.apply(variables, x, train=True, mutable=['batch_stats'])
  new = updated['batch_stats']
  # momentum 0.9: new = 0.9 old + 0.1 batch mean of the stem convolution's output
  conv = _conv(x, variables['params']['stem_conv']['kernel'], 1, 1)
  np.testing.assert_allclose(new['stem_norm']['mean'],
                             0.9 * stats['stem_norm']['mean'] + 0.1 * conv.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-5)
  for path in (('stem_norm', 'var'), ('layer2_0', 'shortcut_norm', 'mean'),
               ('layer1_0', 'norm2', 'var')):
    old_leaf = functools.reduce(lambda d, k: d[k], path, stats)
    assert not np.allclose(functools.reduce(lambda d, k: d[k], path, new), old_leaf), path
  # Eval: running averages, left unchanged, and each example independent of the batch.
  out, unchanged = module.apply(variables, x, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, unchanged['batch_stats'], stats)
  np.testing.assert_allclose(module.apply(variables, x[:3]), out[:3], rtol=1e-5, atol=1e-6)
  assert not np.allclose(module.apply({**variables, 'batch_stats': new}, x), out)
  # Training normalises with the batch's statistics: a sub-batch gives other outputs.
  train_out = module.apply(variables, x, train=True, mutable=['batch_stats'])[0]
  assert not np.allclose(module.apply(variables, x[:3], train=True,
                                      mutable=['batch_stats'])[0], train_out[:3], atol=1e-4)


@pytest.mark.parametrize('norm', ['group', 'none'])
def test_group_norm_and_no_norm_keep_no_state_and_examples_independent(norm):
  module = resnet(**TINY, norm=norm)
  x = _normal((5, 8, 8, 3))
  variables = module.init(KEY, x)
  assert set(variables) == {'params'}
  assert ('bias' in variables['params']['stem_conv']) == (norm == 'none')
  out = module.apply(variables, x, train=True)
  np.testing.assert_allclose(module.apply(variables, x[:2], train=True), out[:2], rtol=1e-5,
                             atol=1e-6)


def test_group_norm_uses_gcd_groups():
  from mtl_jax._src.models.resnet import BasicBlock  # the block alone, on purpose
  # gcd(4, 6) = 2 groups of 3 channels: the first three channels normalised together.
  block = BasicBlock(6, 1, norm='group', groups=4)
  x = _normal((1, 3, 3, 6))
  variables = block.init(KEY, x)
  captured = {}

  def spy(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name == 'norm1':
      captured['in'], captured['out'] = args[0], out
    return out

  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  with nn.intercept_methods(spy):
    block.apply(variables, x)
  h = np.asarray(captured['in']).reshape(1, 9, 2, 3)
  mean, var = h.mean((1, 3), keepdims=True), h.var((1, 3), keepdims=True)
  np.testing.assert_allclose(captured['out'], ((h - mean) / np.sqrt(var + 1e-5)).reshape(
      1, 3, 3, 6), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- stages, options


def test_hooks_see_every_stage_in_order_and_replace_its_output():
  module = resnet(blocks=(1, 1, 1), widths=(4, 4, 8))
  x = _normal((2, 12, 12, 1))
  variables = module.init(KEY, x)
  names = []
  module.apply(variables, x, hook=lambda name, h: names.append(name) or h)
  assert tuple(names) == module.stage_names == ('stem', 'layer1', 'layer2', 'layer3')
  out = module.apply(variables, x, hook=lambda name, h: h * 0 if name == 'layer3' else h)
  np.testing.assert_array_equal(out, np.zeros((2, 8)))
  assert not np.allclose(module.apply(variables, x), 0)


@pytest.mark.parametrize('kwargs, match', [
    ({'widths': (4, 0)}, r'resnet.widths: must be positive integer widths, got \(4, 0\)'),
    ({'widths': ()}, r'resnet.widths: must have at least one stage'),
    ({'blocks': (2, 2)}, r'resnet.blocks: must give one block count per stage \(4\), got '
     r'\(2, 2\)'),
    ({'blocks': (2, 0, 2, 2)}, r'resnet.blocks: must be positive integer widths'),
    ({'norm': 'layer'}, r"resnet.norm: must be one of \('batch', 'group', 'none'\), got "
     r"'layer'"),
    ({'groups': 0}, r'resnet.groups: must be a positive integer, got 0'),
    ({'stem': 'vit'}, r"resnet.stem: must be one of \('imagenet', 'cifar'\), got 'vit'"),
    ({'output': 'flatten'}, r"resnet.output: must be one of \('mean', 'map'\)"),
    ({'dropout': 1.0}, r'resnet.dropout: must be in \[0, 1\)'),
])
def test_bad_options_raise_named_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    resnet(**kwargs)


def test_input_of_the_wrong_rank_raises_a_named_error():
  with pytest.raises(ValueError, match=r'resnet.input: expects .* got \(2, 4, 4, 4, 1\)'):
    _output_shape(resnet(**TINY), (2, 4, 4, 4, 1))


def test_registry_and_config_block():
  assert 'resnet' in models.backbone_names()
  assert models.backbone_hyperparameters('resnet') == dict(
      blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), norm='batch', groups=32,
      stem='imagenet', output='mean')
  with pytest.raises(ConfigError, match=r'config.model.resnet.stem: must be one of'):
    train.train_and_evaluate(tiny_config(**{'model.backbone': 'resnet',
                                            'model.resnet.stem': 'big'}), '/nonexistent/unused')


# ----------------------------------------------------------------------------- engine, trainer


@pytest.mark.parametrize('norm', ['batch', 'group'])
def test_gram_mode_equals_jacrev(norm):
  backbone = resnet(**TINY, norm=norm, dropout=0.2)
  model = models.get('shared_bottom', TASKS, backbone, tower_hidden=(4,))
  _check(*_engine_case(model, _batch(4, (7, 7, 2))), f'resnet {norm}')


def test_trains_end_to_end_with_batch_norm_and_a_gram_method(tmp_path):
  results = train_tiny(tmp_path, **{
      'model.backbone': 'resnet', 'model.resnet.blocks': (1, 1), 'model.resnet.widths': (4, 8),
      'model.resnet.stem': 'cifar', 'weighting.name': 'mgda'})
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines and all(math.isfinite(l['loss']) for l in lines)
  assert results['steps'] == 10
