"""A ResNet backbone of BasicBlocks (He et al. 2016, "Deep Residual Learning for Image
Recognition", CVPR): ResNet-18 by default, 1-D or 2-D convolutions.

Stem (stage ``stem``), on a feature map h [B, *S, C] (S the spatial dims):

    ``stem='imagenet'``:  h <- maxpool_3/2( relu( norm( conv_7/2(h) ) ) )   (torchvision's)
    ``stem='cifar'``:     h <- relu( norm( conv_3/1(h) ) )                   (small images)

then ``len(widths)`` stages ``layer1..layerN`` of ``blocks[i]`` BasicBlocks of width
``widths[i]``, the first block of every stage but the first with stride 2:

    y = norm( conv_3/1( relu( norm( conv_3/s(h) ) ) ) ),   h <- relu( y + shortcut(h) )

``shortcut`` is the identity, or norm(conv_1/s(h)) where the stride or the width changes.
Padding is torchvision's (k // 2 on each side: each spatial size n -> ceil(n / s)), so no
size reaches 0.  Convolutions have a bias only with ``norm='none'``.  ``norm``: ``'batch'``
(batch statistics in training, running averages in collection ``batch_stats``, momentum 0.9,
in evaluation), ``'group'`` (GroupNorm, gcd(``groups``, width) groups: every width works) or
``'none'``.  Output (``output``): ``'mean'`` the global average over S of the last stage,
[B, widths[-1]] (then dropout), or ``'map'`` the last feature map [B, *S', widths[-1]].

Defaults: ResNet-18 (``blocks=(2, 2, 2, 2)``, ``widths=(64, 128, 256, 512)``, 11.2 M
parameters on 3-channel images); ``blocks=(1, 1, 1, 1)`` is ResNet-10, ``(3, 4, 6, 3)``
ResNet-34.  Inputs: [B, H, W, C] or [B, H, W] images (2-D) and [B, D] vectors (1-D
signals [B, D, 1]), as ``cnn``.  Stages: ``stem``, ``layer1``, ..., each followed by the hook.
"""

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.cnn import as_feature_map
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.stages import Hook, run_hook

NORMS = ('batch', 'group', 'none')
STEMS = ('imagenet', 'cifar')
OUTPUTS = ('mean', 'map')


def _norm(kind: str, groups: int, train: bool, name: str):
  """The normalisation layer after a convolution (the identity for ``'none'``)."""
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  if kind == 'group':
    return lambda h: nn.GroupNorm(num_groups=math.gcd(groups, h.shape[-1]), epsilon=1e-5,
                                  name=name)(h)
  return lambda h: h


def _conv(width: int, kernel: int, stride: int, spatial: int, bias: bool, name: str):
  """A ``kernel``^spatial convolution with stride ``stride`` and torchvision's padding."""
  return nn.Conv(width, (kernel,) * spatial, strides=(stride,) * spatial,
                 padding=((kernel // 2, kernel // 2),) * spatial, use_bias=bias, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""
  width: int
  stride: int = 1
  norm: str = 'batch'
  groups: int = 32

  @nn.compact
  def __call__(self, h, train: bool = False):
    spatial, bias = h.ndim - 2, self.norm == 'none'
    norm = lambda name: _norm(self.norm, self.groups, train, name)
    y = _conv(self.width, 3, self.stride, spatial, bias, 'conv1')(h)
    y = nn.relu(norm('norm1')(y))
    y = norm('norm2')(_conv(self.width, 3, 1, spatial, bias, 'conv2')(y))
    if self.stride != 1 or h.shape[-1] != self.width:
      h = norm('shortcut_norm')(_conv(self.width, 1, self.stride, spatial, bias, 'shortcut')(h))
    return nn.relu(y + h)


class ResNet(nn.Module):
  """Stem, stages of BasicBlocks, global average pool; stages ``stem``, ``layer1..``."""
  blocks: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  norm: str = 'batch'
  groups: int = 32
  stem: str = 'imagenet'
  output: str = 'mean'
  dropout: float = 0.0

  @property
  def stage_names(self) -> tuple[str, ...]:
    return ('stem',) + tuple(f'layer{i + 1}' for i in range(len(self.widths)))

  @nn.compact
  def __call__(self, x, train: bool = False, hook: Optional[Hook] = None):
    h = as_feature_map(x, 'resnet')
    spatial = h.ndim - 2
    imagenet = self.stem == 'imagenet'
    h = _conv(self.widths[0], 7 if imagenet else 3, 2 if imagenet else 1, spatial,
              self.norm == 'none', 'stem_conv')(h)
    h = nn.relu(_norm(self.norm, self.groups, train, 'stem_norm')(h))
    if imagenet:
      h = nn.max_pool(h, (3,) * spatial, strides=(2,) * spatial, padding=((1, 1),) * spatial)
    h = run_hook(hook, 'stem', h)
    for i, (num, width) in enumerate(zip(self.blocks, self.widths)):
      for j in range(num):
        stride = 2 if i > 0 and j == 0 else 1
        h = BasicBlock(width, stride, self.norm, self.groups, name=f'layer{i + 1}_{j}')(h, train)
      h = run_hook(hook, f'layer{i + 1}', h)
    if self.output == 'map':
      return h
    h = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h


@registry.BACKBONES.register('resnet')
def resnet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), norm='batch', groups=32,
           stem='imagenet', output='mean', dropout=0.0):
  """A ``ResNet`` (ResNet-18 by default); bad options raise ``ValueError`` naming
  ``resnet.<field>``."""
  widths = check_widths('resnet.widths', widths)
  blocks = check_widths('resnet.blocks', blocks)
  check(len(widths) >= 1, 'resnet.widths', 'must have at least one stage', widths)
  check(len(blocks) == len(widths), 'resnet.blocks',
        f'must give one block count per stage ({len(widths)})', blocks)
  check(norm in NORMS, 'resnet.norm', f'must be one of {NORMS}', norm)
  check(type(groups) is int and groups >= 1, 'resnet.groups', 'must be a positive integer',
        groups)
  check(stem in STEMS, 'resnet.stem', f'must be one of {STEMS}', stem)
  check(output in OUTPUTS, 'resnet.output', f'must be one of {OUTPUTS}', output)
  check(0 <= dropout < 1, 'resnet.dropout', 'must be in [0, 1)', dropout)
  return ResNet(blocks, widths, norm, groups, stem, output, dropout)
