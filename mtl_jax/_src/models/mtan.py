"""MTAN, multi-task attention network (Liu, Johns & Davison, CVPR 2019), backbone-agnostic.

The shared backbone runs once; its hook records the outputs p^(j) of the selected stages
j = 1..J (option ``stages``, every stage by default).  Each task t keeps its own path of
element-wise soft attention masks over those features:

    a_t^(1) = g_t^(1)(p^(1)),
    a_t^(j) = g_t^(j)([p^(j); f_t^(j)(resize(t_t^(j-1)))])      (j > 1),
    t_t^(j) = a_t^(j) * p^(j),
    g_t^(j)(v) = sigmoid(Dense(C_j)(relu(Dense(C_j)(v)))),

where C_j is p^(j)'s channel (last) axis, f_t^(j) is a task-specific Dense(C_j) (a 1x1 conv
on feature maps) and ``resize`` brings the previous task feature to p^(j)'s spatial/token
shape (``jax.image.resize``, linear, antialiased when downsampling; the identity for
[B, D] features; to a [B, D] stage from feature maps, tokens or a graph's nodes, their mean,
padded nodes included).  Apart from that last step the selected stages must share one rank.  Task t's tower reads t_t^(J).

The per-task paths are one module vmapped over T (parameters with a leading T axis).
Shared: the backbone.  Task: the masks g_t, the projections f_t and the towers.
``representation(x)`` is the tuple (p^(1), ..., p^(J)); ``heads(z)`` the masks and towers
(with ``stacked=True`` every leaf of z has a leading T axis and task t reads copy t).

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): the backbone
runs on all T B inputs at once (as ``SharedBottom``'s trunk, T times the cost) and task t's
attention path reads the stage outputs of x_t, t_t^(j) = a_t^(j)(x_t) * p^(j)(x_t), so y_t
depends on x_t only; z = (p^(1), ..., p^(J)) with a task axis, [T, B, ...] (x_t's at [t]).  The
parameters are the shared-input model's (equal inputs give its predictions).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.columns import stage_option
from mtl_jax._src.models.experts import check_per_task_inputs, fold_tasks, unfold_tasks
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.shared_bottom import diagonal


def _resize(prev, p, prev_name: str, name: str):
  """``prev`` [B, *S', C'] resized to p's [B, *S] (its own channels kept); to a vector stage
  [B, D], the mean over S' (global average pooling)."""
  if prev.ndim > p.ndim == 2:
    return jnp.mean(prev, axis=tuple(range(1, prev.ndim - 1)))
  if prev.ndim != p.ndim:
    raise ValueError(f'mtan.stages: stage {prev_name!r} outputs rank {prev.ndim} '
                     f'{tuple(prev.shape)} but stage {name!r} rank {p.ndim} {tuple(p.shape)}; '
                     'the selected stages must keep one rank (select stages of one kind)')
  if prev.shape[1:-1] == p.shape[1:-1]:
    return prev
  return jax.image.resize(prev, p.shape[:-1] + prev.shape[-1:], 'linear')


class AttentionPath(nn.Module):
  """One task's attention path over the recorded stage outputs; returns t^(J).

  Sows the masks ``mask_<stage>`` and task features ``feature_<stage>`` as 'intermediates'.
  """
  stages: Sequence[str]

  @nn.compact
  def __call__(self, features):
    previous = None
    for j, (name, p) in enumerate(zip(self.stages, features)):
      channels = p.shape[-1]
      v = p
      if previous is not None:
        previous = _resize(previous, p, self.stages[j - 1], name)
        v = jnp.concatenate([p, nn.Dense(channels, name=f'f_{name}')(previous)], axis=-1)
      hidden = nn.relu(nn.Dense(channels, name=f'mask_{name}_0')(v))
      mask = nn.sigmoid(nn.Dense(channels, name=f'mask_{name}_1')(hidden))
      previous = mask * p
      self.sow('intermediates', f'mask_{name}', mask)
      self.sow('intermediates', f'feature_{name}', previous)
    return previous


class MTANHeads(nn.Module):
  """The T attention paths (vmapped, ``attention``) and the towers (``towers``)."""
  tasks: object            # a TaskSet
  stages: Sequence[str]
  tower_hidden: Sequence[int] = ()
  dropout: float = 0.0

  @nn.compact
  def __call__(self, features, train: bool = False, stacked: bool = False):
    attention = nn.vmap(AttentionPath, in_axes=0 if stacked else None, out_axes=0,
                        variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
                        split_rngs={'params': True, 'dropout': True},
                        axis_size=len(self.tasks))
    z = attention(tuple(self.stages), name='attention')(tuple(features))   # [T, B, ...]
    return TaskHeads(self.tasks, tuple(self.tower_hidden), self.dropout,
                     name='towers')(z, train, stacked=True)


class MTAN(nn.Module):
  """Shared backbone ``shared`` (its stage outputs recorded) and ``task`` (an MTANHeads)."""
  shared: nn.Module
  task: nn.Module
  stages: Sequence[str]
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """The recorded stage outputs (p^(1), ..., p^(J)) (per-task inputs: each [T, B, ...])."""
    recorded = {}

    def hook(name, h):
      if name in self.stages:
        recorded[name] = h
      return h

    num = len(self.task.tasks)
    self.shared(fold_tasks('mtan', x, num) if self.per_task_inputs else x, train, hook=hook)
    z = tuple(recorded[name] for name in self.stages)
    return tuple(unfold_tasks(p, num) for p in z) if self.per_task_inputs else z

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions {task: [B, out_dim]} from the stage outputs (one copy per task if
    ``stacked``); ``inputs`` is unused."""
    if self.per_task_inputs:                      # task t reads x_t's outputs (of copy t)
      return self.task(tuple(diagonal(p) for p in z) if stacked else z, train, stacked=True)
    return self.task(z, train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)


@registry.MODELS.register('mtan')
def mtan(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, stages='all'):
  """MTAN over the selected stages of any backbone (every stage by default).  Shared: the
  backbone; task: attention masks, projections f_t and towers."""
  stages = stage_option('mtan', 'stages', stages, backbone)
  return MTAN(shared=backbone,
              task=MTANHeads(tasks, stages, tuple(tower_hidden), dropout), stages=stages,
              per_task_inputs=check_per_task_inputs('mtan', per_task_inputs))
