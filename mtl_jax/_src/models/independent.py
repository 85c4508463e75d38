"""Independent per-task networks (no sharing): y_t = h_t(f_t(x)).

The T columns f_t are copies of the backbone with stacked parameters, run as one vmapped
network (``Stacked``), so the model compiles once whatever T.  Every parameter is
task-specific: ``params['shared']`` is empty and gradient methods see a zero Gram matrix
(they fall back to their uniform weights); joint training with a per-parameter optimiser
equals T separate trainings except where something couples the columns (global-norm
clipping, a shared schedule).  The single-task baseline of Delta-m comparisons.
"""

import flax.linen as nn

from mtl_jax._src import registry
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.shared_bottom import task_major
from mtl_jax._src.models.stacked import Stacked


class IndependentColumns(nn.Module):
  """``num`` backbone columns, column t feeding task t's head (and reading task t's input
  with ``per_task_inputs``: x [B, T, ...])."""
  backbone: nn.Module
  heads: nn.Module          # a TaskHeads
  num: int
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.per_task_inputs:
      x = task_major(x, self.num)
    z = Stacked(self.backbone, self.num, in_axis=0 if self.per_task_inputs else None,
                name='columns')(x, train=train)                           # [T, B, ...]
    return self.heads(z, train, stacked=True)


class Independent(nn.Module):
  """All parameters under ``'task'``; ``'shared'`` is empty."""
  task: IndependentColumns

  def __call__(self, x, train: bool = False):
    return self.task(x, train)


@registry.MODELS.register('independent')
def independent(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False):
  """One backbone copy and tower per task, nothing shared: y_t = h_t(f_t(x))."""
  return Independent(task=IndependentColumns(
      backbone, TaskHeads(tasks, tuple(tower_hidden), dropout), len(tasks), per_task_inputs))
