"""Multi-layer perceptron backbone."""

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check_widths
from mtl_jax._src.models.stages import Hook, run_hook


class MLP(nn.Module):
  """Dense layers with an activation after each (optionally dropout).

  Inputs of rank > 2 are flattened to [B, -1] first.  Stage ``layer{i}`` is the i-th
  Dense (+ activation, dropout); ``hook(name, h)`` runs after each (see ``stages``).
  """
  hidden: Sequence[int]
  activation: Callable = nn.relu
  dropout: float = 0.0
  activate_last: bool = True

  @property
  def stage_names(self) -> tuple[str, ...]:
    return tuple(f'layer{i}' for i in range(len(self.hidden)))

  @nn.compact
  def __call__(self, x, train: bool = False, hook: Optional[Hook] = None):
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width)(x)
      if self.activate_last or i < len(self.hidden) - 1:
        x = self.activation(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = run_hook(hook, f'layer{i}', x)
    return x


@registry.BACKBONES.register('mlp')
def mlp(hidden=(64,), dropout=0.0):
  """An ``MLP`` of widths ``hidden`` (ReLU after every layer, the last included); bad widths
  raise ``ValueError`` naming ``mlp.hidden``."""
  return MLP(check_widths('mlp.hidden', hidden), dropout=dropout)
