"""A small convolutional backbone (any number of blocks, 1-D or 2-D convolutions).

Block i (stage ``block{i}``), on a feature map h [B, *S, C] (S the spatial dims):

    h <- maxpool_2( relu( BN( conv_k(h) ) ) )      (then dropout; then ``hook('block{i}', h)``)

``conv_k``: kernel k along each spatial dim, stride 1, 'SAME' padding (S is kept), channels
``channels[i]``, bias only without batch norm.  ``BN`` (``norm='batch'``) normalises over
batch and spatial dims with batch statistics in training (running averages in collection
``batch_stats`` updated, momentum 0.9) and the running averages in evaluation.
``maxpool_2``: window 2, stride 2, 'VALID' (each spatial size n -> floor(n / 2)); a spatial
dim of size 1 is not pooled, so no size ever reaches 0.

The spatial rank comes from the input's rank: [B, H, W, C] images and [B, H, W] (a channel
axis of size 1 is added) use 2-D convolutions; [B, D] vectors are 1-D signals [B, D, 1].
Output (``output``): ``'map'`` the last feature map [B, *S', C_last]; ``'flatten'`` it as
[B, prod(S') * C_last]; ``'mean'`` its global average over S', [B, C_last].
"""

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.stages import Hook, run_hook

NORMS = ('none', 'batch')
OUTPUTS = ('map', 'flatten', 'mean')


def as_feature_map(x, module: str = 'cnn'):
  """``x`` as [B, *S, C]: [B, D] -> [B, D, 1]; [B, H, W] -> [B, H, W, 1]; [B, H, W, C] kept."""
  check(x.ndim in (2, 3, 4), f'{module}.input', 'expects input shapes [B, D], [B, H, W] or '
        '[B, H, W, C]', tuple(x.shape))
  return x if x.ndim == 4 else x[..., None]


class SmallCNN(nn.Module):
  """Blocks conv -> (batch norm) -> ReLU -> (max-pool 2); stages ``block0..``."""
  channels: Sequence[int] = (16, 32)
  kernel_size: int = 3
  norm: str = 'none'
  pool: Union[bool, Sequence[bool]] = True   # one flag for all blocks, or one per block
  output: str = 'map'
  dropout: float = 0.0

  @property
  def stage_names(self) -> tuple[str, ...]:
    return tuple(f'block{i}' for i in range(len(self.channels)))

  @nn.compact
  def __call__(self, x, train: bool = False, hook: Optional[Hook] = None):
    h = as_feature_map(x)
    spatial = h.ndim - 2
    pools = ((self.pool,) * len(self.channels) if isinstance(self.pool, bool)
             else tuple(self.pool))
    for i, (width, pool) in enumerate(zip(self.channels, pools)):
      batch_norm = self.norm == 'batch'
      h = nn.Conv(width, (self.kernel_size,) * spatial, padding='SAME',
                  use_bias=not batch_norm, name=f'conv{i}')(h)
      if batch_norm:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         name=f'norm{i}')(h)
      h = nn.relu(h)
      if pool:
        window = tuple(2 if n >= 2 else 1 for n in h.shape[1:-1])
        h = nn.max_pool(h, window, strides=window, padding='VALID')
      if self.dropout > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = run_hook(hook, f'block{i}', h)
    if self.output == 'flatten':
      return jnp.reshape(h, (h.shape[0], -1))
    if self.output == 'mean':
      return jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
    return h


@registry.BACKBONES.register('cnn')
def cnn(channels=(16, 32), kernel_size=3, norm='none', pool=True, output='map', dropout=0.0):
  """A ``SmallCNN``; bad options raise ``ValueError`` naming ``cnn.<field>``."""
  channels = check_widths('cnn.channels', channels)
  check(len(channels) >= 1, 'cnn.channels', 'must have at least one block', channels)
  check(type(kernel_size) is int and kernel_size >= 1, 'cnn.kernel_size',
        'must be a positive integer', kernel_size)
  check(norm in NORMS, 'cnn.norm', f'must be one of {NORMS}', norm)
  if not isinstance(pool, bool):
    pool = tuple(pool) if isinstance(pool, (tuple, list)) else pool
    check(isinstance(pool, tuple) and len(pool) == len(channels)
          and all(isinstance(p, bool) for p in pool), 'cnn.pool',
          f'must be a bool or one bool per block ({len(channels)})', pool)
  check(output in OUTPUTS, 'cnn.output', f'must be one of {OUTPUTS}', output)
  check(0 <= dropout < 1, 'cnn.dropout', 'must be in [0, 1)', dropout)
  return SmallCNN(channels, kernel_size, norm, pool, output, dropout)
