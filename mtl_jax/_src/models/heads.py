"""Task heads: identical towers stacked on a leading task axis and run with ``nn.vmap``.

A tower is an MLP followed by a linear output layer.  Towers of tasks in the same
``TaskGroup`` (same kind and output size) are one module whose parameters have a leading
axis of size T_g, so T heads compile as one network, not T.
"""

from typing import Sequence

import flax.linen as nn
import numpy as np

from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.tasks import TaskSet


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

  ``x`` is shared by all towers (x: [B, D]) or, with ``per_task_inputs``, has a leading task
  axis (x: [num, B, D]).  Output: [num, B, out_dim].
  """
  num: int
  hidden: Sequence[int]
  out_dim: int
  dropout: float = 0.0
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, per_task_inputs: bool = None):
    mapped = self.per_task_inputs if per_task_inputs is None else per_task_inputs
    vmapped = nn.vmap(
        Tower,
        in_axes=(0 if mapped else None, None),
        out_axes=0,
        variable_axes={'params': 0, 'batch_stats': 0},
        split_rngs={'params': True, 'dropout': True},
        axis_size=self.num)
    return vmapped(self.hidden, self.out_dim, self.dropout, name='towers')(x, train)


class TaskHeads(nn.Module):
  """One ``StackedTowers`` per task group; returns predictions ``{task: [B, out_dim]}``.

  ``z`` is the shared representation [B, D], or with ``stacked=True`` one copy per task
  [T, B, D] (task-axis order), each head reading its own: then one backward pass gives every
  dL_t/dz at once (the engine's per-task representation gradients).
  """
  tasks: TaskSet
  hidden: Sequence[int] = ()
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z, train: bool = False, stacked: bool = False):
    predictions = {}
    for g, group in enumerate(self.tasks.groups):
      index = np.asarray(group.indices)
      inputs = (z[index[0]:index[-1] + 1] if np.all(np.diff(index) == 1) else z[index]) \
          if stacked else z
      out = StackedTowers(len(group.names), self.hidden, group.prototype.out_dim, self.dropout,
                          name=f'group{g}')(inputs, train, per_task_inputs=stacked)
      predictions.update({name: out[j] for j, name in enumerate(group.names)})
    return self.tasks.ordered(predictions)
