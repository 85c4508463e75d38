"""Multi-layer perceptron backbone."""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Dense layers with an activation after each (optionally dropout).

  Inputs of rank > 2 are flattened to [B, -1] first.
  """
  hidden: Sequence[int]
  activation: Callable = nn.relu
  dropout: float = 0.0
  activate_last: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width)(x)
      if self.activate_last or i < len(self.hidden) - 1:
        x = self.activation(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x
