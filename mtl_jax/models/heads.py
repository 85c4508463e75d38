"""Task heads: identical towers stacked on a leading task axis and run with ``nn.vmap``.

A tower is an MLP followed by a linear output layer.  Towers of tasks in the same
``TaskGroup`` (same kind and output size) are one module whose parameters have a leading
axis of size T_g, so T heads compile as one network, not T.
"""

from typing import Sequence

import flax.linen as nn

from mtl_jax.models.mlp import MLP
from mtl_jax.tasks import TaskSet


class Tower(nn.Module):
  """One task tower: hidden Dense+ReLU layers, then a linear output of size ``out_dim``."""
  hidden: Sequence[int]
  out_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = MLP(self.hidden, dropout=self.dropout, name='mlp')(x, train)
    return nn.Dense(self.out_dim, name='out')(x)


class StackedTowers(nn.Module):
  """``num`` identical towers; params get a leading axis of size ``num``.

  ``x`` is shared by all towers (``per_task_inputs=False``, x: [B, D]) or has a leading task
  axis (``per_task_inputs=True``, x: [num, B, D]).  Output: [num, B, out_dim].
  """
  num: int
  hidden: Sequence[int]
  out_dim: int
  dropout: float = 0.0
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    vmapped = nn.vmap(
        Tower,
        in_axes=(0 if self.per_task_inputs else None, None),
        out_axes=0,
        variable_axes={'params': 0, 'batch_stats': 0},
        split_rngs={'params': True, 'dropout': True},
        axis_size=self.num)
    return vmapped(self.hidden, self.out_dim, self.dropout, name='towers')(x, train)


class TaskHeads(nn.Module):
  """One ``StackedTowers`` per task group; returns predictions ``{task: [B, out_dim]}``."""
  tasks: TaskSet
  hidden: Sequence[int] = ()
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z, train: bool = False):
    predictions = {}
    for g, group in enumerate(self.tasks.groups):
      out = StackedTowers(len(group.names), self.hidden, group.prototype.out_dim, self.dropout,
                          name=f'group{g}')(z, train)
      predictions.update({name: out[j] for j, name in enumerate(group.names)})
    return predictions
