"""Hard parameter sharing: a shared trunk followed by per-task heads.

    z = f_shared(x),    y_t = h_t(z)

Parameters are ``{'shared': trunk params, 'task': head params}``.  With one input per task
(``per_task_inputs``: x [B, T, ...]) the trunk runs on every task's input and
y_t = h_t(f_shared(x_t)).

The representation split (``representation`` / ``heads``) that the engine uses:
``heads(z, train, stacked, inputs)`` with ``stacked=True`` receives one copy of every leaf of
z per task (leading axis T) and task t must read only copy t.
"""

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.heads import TaskHeads


def task_major(x, num_tasks: int):
  """Per-task inputs [B, T, ...] as [T, B, ...] (with a check of the task axis)."""
  if x.ndim < 3 or x.shape[1] != num_tasks:
    raise ValueError(f'per-task inputs must be [B, T={num_tasks}, ...], got {x.shape}')
  return jnp.swapaxes(x, 0, 1)


def diagonal(z):
  """From per-task copies of a per-task leaf, [T, T, ...], task t's own slice: [T, ...]."""
  t = jnp.arange(z.shape[0])
  return z[t, t]


class SharedBottom(nn.Module):
  """Shared trunk ``shared`` and task heads ``task`` (a ``TaskHeads``)."""
  shared: nn.Module
  task: nn.Module
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """z = f_shared(x): [B, D] (per-task inputs: [T, B, D], task t's at [t])."""
    if not self.per_task_inputs:
      return self.shared(x, train)
    xt = task_major(x, len(self.task.tasks))
    z = self.shared(xt.reshape((-1,) + xt.shape[2:]), train)
    return z.reshape(xt.shape[:2] + z.shape[1:])

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions {task: [B, out_dim]} from z (with ``stacked``, one copy per task).
    ``inputs`` (the batch's inputs) is unused here; other models' heads may read it."""
    if self.per_task_inputs:
      return self.task(diagonal(z) if stacked else z, train, stacked=True)
    return self.task(z, train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)


@registry.MODELS.register('shared_bottom')
def shared_bottom(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False):
  """Hard parameter sharing: the backbone as the shared trunk, one tower per task."""
  return SharedBottom(shared=backbone, task=TaskHeads(tasks, tuple(tower_hidden), dropout),
                      per_task_inputs=per_task_inputs)
