"""Hard parameter sharing: a shared trunk followed by per-task heads.

    z = f_shared(x),    y_t = h_t(z)

Parameters are ``{'shared': trunk params, 'task': head params}``.
"""

import flax.linen as nn


class SharedBottom(nn.Module):
  """Shared trunk ``shared`` and task heads ``task`` (a ``TaskHeads``)."""
  shared: nn.Module
  task: nn.Module

  def representation(self, x, train: bool = False):
    """The shared representation z = f_shared(x)."""
    return self.shared(x, train)

  def heads(self, z, train: bool = False, stacked: bool = False):
    """Predictions {task: [B, out_dim]} from z [B, D] (or one copy per task, [T, B, D])."""
    return self.task(z, train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)
