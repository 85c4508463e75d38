"""Column architectures: one copy of the backbone per task, coupled between stages.

Both models run their columns as ONE vmapped module (``Stacked`` over the axis ``'task'``);
inside a column, the backbone's stage hook gathers every column's activation
(``jax.lax.all_gather``) and mixes them, so the models work over any backbone of the stage
protocol (``stages.py``) and compile once whatever T.  A mixing parameter created
in the hook belongs to one column (leading axis = column index): column i owns row i of the
mixing matrix.

* ``cross_stitch`` (Misra et al., CVPR 2016): at each stitch point
      x~_i = sum_j alpha_ij x_j        (i, j = 1..T),
  alpha per channel ([T, T, C], the last axis of the stage output) or per column pair
  ([T, T]); init alpha_ii = alpha_self, alpha_ij = (1 - alpha_self) / (T - 1) (rows sum to 1).
* ``residual`` (lateral residual links between task columns, a design of this library; with
  ``direction='previous'`` akin to progressive networks' lateral connections, Rusu et al.,
  2016): after each linked stage
      h_t <- u_t + sum_{s != t} gamma_ts u_s + beta_t u_shared,
  gamma, beta initialised at 0 (training starts as independent columns); ``direction=
  'previous'`` keeps only the links s < t (ordered tasks); ``detach`` stops the gradient
  through the links between task columns; ``shared_stream`` adds a column u_shared that every
  task column reads and that reads none.

Task t's tower reads column t.  Parameter split (static): columns and mixing parameters under
``'shared'``, towers under ``'task'``.

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): all the
columns run on every task's input (the inputs folded into one batch of T B examples, as
``SharedBottom``'s trunk) and task t's tower reads column t on x_t, so y_t depends on x_t only.
Letting column t read x_t alone would mix, at every stitch or link, activations of unrelated
examples (example b of task s into example b of task t, paired by batch position): y_t would
depend on the other tasks' inputs and on how batches are drawn.  The columns cost T times the
shared-input model's (T B examples; batch-norm statistics, in training, over all T B); the
parameters are the same (equal inputs give the shared-input predictions).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check
from mtl_jax._src.models.experts import check_per_task_inputs, fold_tasks, unfold_tasks
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.shared_bottom import diagonal
from mtl_jax._src.models.stacked import Stacked
from mtl_jax._src.models.stages import resolve_stages

AXIS = 'task'


def stage_option(model: str, field: str, selected, backbone) -> tuple:
  """``selected`` stages ('all', 'last', a name, names, or 'a,b' comma-separated) resolved
  against ``backbone.stage_names``; unknown or no stages raise errors naming model.field."""
  names = getattr(backbone, 'stage_names', None)
  check(names is not None, f'{model}.backbone',
        'must follow the stage protocol (a stage_names attribute)', type(backbone).__name__)
  if isinstance(selected, str) and ',' in selected:
    selected = tuple(s.strip() for s in selected.split(',') if s.strip())
  chosen = set(resolve_stages(model, field, selected, tuple(names)))
  check(bool(chosen), f'{model}.{field}', 'must select at least one stage', selected)
  return tuple(s for s in names if s in chosen)     # in backbone order


class CrossStitchColumn(nn.Module):
  """One column (a backbone copy) that mixes all columns' activations at the stitch points.

  Run inside ``Stacked(..., axis_name='task')``; this column's row of alpha is the param
  ``alpha_<stage>``, shape [T, C] ('channel') or [T] ('scalar')."""
  backbone: nn.Module
  num: int
  stitch: Sequence[str]
  granularity: str = 'channel'
  alpha_self: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    num, alpha_self = self.num, self.alpha_self
    other = (1.0 - alpha_self) / (num - 1) if num > 1 else 0.0

    def init(key, shape, dtype=jnp.float32):
      del key
      own = jnp.arange(num) == jax.lax.axis_index(AXIS)
      row = jnp.where(own, 1.0 if num == 1 else alpha_self, other)
      return jnp.broadcast_to(row.reshape((num,) + (1,) * (len(shape) - 1)), shape).astype(dtype)

    def hook(name, h):
      if name not in self.stitch:
        return h
      every = jax.lax.all_gather(h, AXIS)                  # [T, B, ..., C]
      if self.granularity == 'channel':
        alpha = self.param(f'alpha_{name}', init, (num, h.shape[-1]), jnp.float32)
        return jnp.einsum('t...c,tc->...c', every, alpha.astype(h.dtype))
      alpha = self.param(f'alpha_{name}', init, (num,), jnp.float32)
      return jnp.einsum('t...,t->...', every, alpha.astype(h.dtype))

    return self.backbone(x, train, hook=hook)


class ResidualColumn(nn.Module):
  """One column of the residual model: columns 0..T-1 are the task columns, column T (if
  ``num > num_tasks``) the shared stream.

  Params of this column: ``gamma_<stage>`` [T] (its row of gamma; the diagonal, the s >= t
  entries with direction 'previous' and the shared stream's row are unused) and
  ``beta_<stage>`` [] (the shared stream's row is unused)."""
  backbone: nn.Module
  num_tasks: int
  num: int
  links: Sequence[str]
  detach: bool = False
  direction: str = 'all'

  @nn.compact
  def __call__(self, x, train: bool = False):
    num_tasks = self.num_tasks

    def hook(name, h):
      if name not in self.links:
        return h
      every = jax.lax.all_gather(h, AXIS)                  # [columns, B, ...]
      i = jax.lax.axis_index(AXIS)
      s = jnp.arange(num_tasks)
      active = (s < i) if self.direction == 'previous' else (s != i)
      gamma = self.param(f'gamma_{name}', nn.initializers.zeros, (num_tasks,), jnp.float32)
      sources = every[:num_tasks]
      if self.detach:
        sources = jax.lax.stop_gradient(sources)
      mixed = h + jnp.einsum('t...,t->...', sources,
                             jnp.where(active, gamma, 0.0).astype(h.dtype))
      if self.num > num_tasks:                            # the shared stream (never detached)
        beta = self.param(f'beta_{name}', nn.initializers.zeros, (), jnp.float32)
        mixed = mixed + beta.astype(h.dtype) * every[num_tasks]
      return jnp.where(i < num_tasks, mixed, h)          # the shared stream reads no links

    return self.backbone(x, train, hook=hook)


class ColumnModel(nn.Module):
  """Stacked columns ``shared`` (output [columns, B, ...]) and towers ``task`` (a
  ``TaskHeads``): task t's tower reads column t.

  ``representation(x)`` is the task columns' output z [T, B, ...] (with ``per_task_inputs``
  column t's on x_t); ``heads(z, stacked=True)`` receives one copy of z per task
  ([T, T, B, ...]) and task t reads column t of copy t."""
  shared: nn.Module
  task: nn.Module
  num_tasks: int
  per_task_inputs: bool = False
  model_name: str = 'columns'

  def representation(self, x, train: bool = False):
    if not self.per_task_inputs:
      return self.shared(x, train=train)[:self.num_tasks]
    num = self.num_tasks
    out = self.shared(fold_tasks(self.model_name, x, num), train=train)   # [columns, T B, ...]
    return diagonal(unfold_tasks(out[:num], num, 1))                       # column t on x_t

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    if stacked:
      index = jnp.arange(self.num_tasks)
      z = z[index, index]
    return self.task(z, train, stacked=True)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)


@registry.MODELS.register('cross_stitch')
def cross_stitch(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
                 stitch='all', granularity='channel', alpha_self=0.9):
  """Cross-stitch networks: x~_i = sum_j alpha_ij x_j at the stitch points (after every stage
  by default); alpha per channel or scalar, init alpha_ii = alpha_self, the rest of each row
  (1 - alpha_self) / (T - 1).  Shared: columns and alphas; task: towers."""
  stitch = stage_option('cross_stitch', 'stitch', stitch, backbone)
  check(granularity in ('channel', 'scalar'), 'cross_stitch.granularity',
        "must be 'channel' or 'scalar'", granularity)
  check(isinstance(alpha_self, (int, float)) and not isinstance(alpha_self, bool)
        and 0.0 <= alpha_self <= 1.0, 'cross_stitch.alpha_self', 'must be a number in [0, 1]',
        alpha_self)
  num = len(tasks)
  column = CrossStitchColumn(backbone.clone(), num, stitch, granularity, float(alpha_self))
  return ColumnModel(shared=Stacked(column, num, axis_name=AXIS),
                     task=TaskHeads(tasks, tuple(tower_hidden), dropout), num_tasks=num,
                     per_task_inputs=check_per_task_inputs('cross_stitch', per_task_inputs),
                     model_name='cross_stitch')


@registry.MODELS.register('residual')
def residual(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, links='all',
             shared_stream=True, detach=False, direction='all'):
  """Task columns with lateral residual links after the linked stages (every stage by default):
  h_t <- u_t + sum_{s != t} gamma_ts u_s + beta_t u_shared, gamma = beta = 0 at init.

  Shared: all columns (task columns feed each other through the links, the shared stream feeds
  every task), gamma and beta; task: towers.  The split is static, so the task columns sit
  under 'shared' even when they are task-specific in fact: with ``detach=True`` (no gradient
  through the task-to-task links) column t gets gradient from task t only, and gradient
  methods see its other rows of the Jacobian as zero."""
  links = stage_option('residual', 'links', links, backbone)
  check(isinstance(shared_stream, bool), 'residual.shared_stream', 'must be a bool',
        shared_stream)
  check(isinstance(detach, bool), 'residual.detach', 'must be a bool', detach)
  check(direction in ('all', 'previous'), 'residual.direction', "must be 'all' or 'previous'",
        direction)
  num_tasks = len(tasks)
  num = num_tasks + int(shared_stream)
  column = ResidualColumn(backbone.clone(), num_tasks, num, links, detach, direction)
  return ColumnModel(shared=Stacked(column, num, axis_name=AXIS),
                     task=TaskHeads(tasks, tuple(tower_hidden), dropout), num_tasks=num_tasks,
                     per_task_inputs=check_per_task_inputs('residual', per_task_inputs),
                     model_name='residual')
