"""The LeNet-style shared encoders of the MultiMNIST benchmarks (two digits per image, one
task per digit).

``variant='sener'`` (Sener & Koltun, 2018), on 28x28 images:

    conv 5x5, 10 -> maxpool 2 -> relu -> conv 5x5, 20 -> channel dropout -> maxpool 2 -> relu
      -> flatten (320) -> dense 50 -> relu

``variant='pareto_mtl'`` (Lin et al., 2019), on 36x36 images:

    conv 9x9, 10 -> relu -> maxpool 2 -> conv 5x5, 20 -> relu -> maxpool 2
      -> flatten (500) -> dense 50 -> relu

Convolutions are 'VALID', stride 1.  The channel dropout drops whole feature maps (one mask
per example and channel) and, unlike the hand-made mask of Sener & Koltun's code, rescales
by 1/(1-p) (standard dropout).  Stages: ``conv0``, ``conv1``, ``fc`` (each followed by the hook).
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.cnn import as_feature_map
from mtl_jax._src.models.common import check
from mtl_jax._src.models.stages import Hook, run_hook

VARIANTS = ('sener', 'pareto_mtl')


class LeNet(nn.Module):
  """The MultiMNIST LeNet encoder; inputs [B, H, W] or [B, H, W, C]; output [B, features]."""
  variant: str = 'sener'
  features: int = 50
  dropout: float = 0.0

  @property
  def stage_names(self) -> tuple[str, ...]:
    return ('conv0', 'conv1', 'fc')

  @nn.compact
  def __call__(self, x, train: bool = False, hook: Optional[Hook] = None):
    h = as_feature_map(x, 'lenet')
    check(h.ndim == 4, 'lenet.input', 'expects images [B, H, W] or [B, H, W, C]',
          tuple(x.shape))
    pool = lambda h: nn.max_pool(h, (2, 2), strides=(2, 2), padding='VALID')
    first = 5 if self.variant == 'sener' else 9
    h = nn.Conv(10, (first, first), padding='VALID', name='conv0')(h)
    h = nn.relu(pool(h)) if self.variant == 'sener' else pool(nn.relu(h))
    h = run_hook(hook, 'conv0', h)
    h = nn.Conv(20, (5, 5), padding='VALID', name='conv1')(h)
    if self.variant == 'sener' and self.dropout > 0:
      h = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
    h = nn.relu(pool(h)) if self.variant == 'sener' else pool(nn.relu(h))
    h = run_hook(hook, 'conv1', h)
    h = jnp.reshape(h, (h.shape[0], -1))
    h = nn.relu(nn.Dense(self.features, name='fc')(h))
    return run_hook(hook, 'fc', h)


@registry.BACKBONES.register('lenet')
def lenet(variant='sener', features=50, dropout=0.0):
  """A ``LeNet``; bad options raise ``ValueError`` naming ``lenet.<field>``."""
  check(variant in VARIANTS, 'lenet.variant', f'must be one of {VARIANTS}', variant)
  check(type(features) is int and features >= 1, 'lenet.features', 'must be a positive integer',
        features)
  check(0 <= dropout < 1, 'lenet.dropout', 'must be in [0, 1)', dropout)
  return LeNet(variant, features, dropout)
