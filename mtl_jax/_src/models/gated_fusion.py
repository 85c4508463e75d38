"""Gated fusion of task outputs (a design of this library, not a published model).

A shared trunk (the backbone) gives z; T task networks ("columns": MLPs of widths
``tower_hidden`` on z, stacked on the task axis and vmapped) give features H_i, and every column
predicts *every* task through its own output layer: Y_{i->t} = H_i V_{t,i} + v_{t,i}.  Task t's
prediction fuses the T columns' predictions with learned sigmoid gates,

    w_{t,i} = sigmoid(a_{t,i}),   a_t = U_t^T c + b_t   (context='representation', c = flat z)
                                  a_t = b_t             (context='static'),
    y_t = sum_i w_{t,i} Y_{i->t} / (sum_i w_{t,i} + eps),

a convex combination of the columns' outputs whatever the gate scale.  b = 0 (uniform fusion at
init), U ~ N(0, 0.01^2), eps = 1e-6.  The raw outputs are fused (regression values, or logits
for classification tasks: simple and general, though fusing probabilities would be the more
principled choice for classifiers).  ``detach_predictions``: fuse stop_gradient(Y) so the task
losses train only the gates (and, through c, the trunk); the columns and output layers then
get no gradient (for columns trained or restored elsewhere).

Shared/task split (shared iff more than one task's loss depends on it): the trunk and the
columns' hidden layers feed every task -> 'shared'; the output layers V_{t,i} (stacked
[T_g, T_cols, w, o] per task group, slice t read only by task t) and the gates (U_t, b_t;
stacked [T, d_c, T] and [T, T]) -> 'task'.

Representation split: ``representation(x) = {'context': c [B, d_c], 'columns': H [B, T, w]}``;
``heads`` = output layers, gates and fusion (with ``stacked=True`` every leaf has a leading
task axis and task t reads only copy t).

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): the trunk and
the columns run on all T B inputs at once (as ``SharedBottom``'s trunk, T times the cost) and
task t fuses every column's prediction of task t on x_t, with its gates reading c(x_t):
y_t(x_t) as above, so y_t depends on x_t only.  z = {'context': [T, B, d_c], 'columns':
[T, B, T_cols, w]} (x_t's at [t]), which the heads read as they read a stacked z.  The
parameters are the shared-input model's (equal inputs give its predictions).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.models.common import check
from mtl_jax._src.models.experts import check_per_task_inputs, fold_tasks, unfold_tasks
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.shared_bottom import diagonal
from mtl_jax._src.models.stacked import Stacked

CONTEXTS = ('representation', 'static')


class FusionTrunk(nn.Module):
  """The shared part: backbone and the T columns' hidden layers."""
  backbone: nn.Module
  num_tasks: int
  hidden: tuple
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = self.backbone(x, train=train)
    column = MLP(self.hidden, dropout=self.dropout, name='columns')   # params [T, ...]
    h = Stacked(column, self.num_tasks, name='stack')(z, train=train)  # [T, B, w]
    return {'context': jnp.reshape(z, (z.shape[0], -1)), 'columns': jnp.swapaxes(h, 0, 1)}


class FusionHeads(nn.Module):
  """Every column's output layer for every task, the gates and the fusion.  z as
  ``FusionTrunk`` returns it; with ``stacked`` every leaf has a leading task axis and task t
  reads only copy t."""
  tasks: object       # TaskSet
  context: str = 'representation'
  detach_predictions: bool = False
  eps: float = 1e-6

  @nn.compact
  def __call__(self, z, stacked: bool = False):
    num = len(self.tasks)
    c, h = z['context'], z['columns']                     # [(T,) B, d_c], [(T,) B, T_cols, w]
    bias = self.param('gate_bias', nn.initializers.zeros_init(), (num, num), c.dtype)
    logits = bias[:, None]                                # [T, 1, T_cols]
    if self.context == 'representation':
      kernel = self.param('gate_kernel', nn.initializers.normal(0.01),
                          (num, c.shape[-1], num), c.dtype)
      logits = jnp.einsum('tbd,tdi->tbi' if stacked else 'bd,tdi->tbi', c, kernel) + logits
    gates = nn.sigmoid(logits)                            # [T, B or 1, T_cols]
    predictions = {}
    for g, group in enumerate(self.tasks.groups):
      index = np.asarray(group.indices)
      size, dim = len(index), group.prototype.out_dim
      out_kernel = self.param(f'out{g}_kernel', nn.initializers.lecun_normal(batch_axis=(0, 1)),
                              (size, num, h.shape[-1], dim), h.dtype)
      out_bias = self.param(f'out{g}_bias', nn.initializers.zeros_init(), (size, num, dim),
                            h.dtype)
      if stacked:                                         # task t reads copy t
        y = jnp.einsum('gbiw,giwo->gbio', h[index], out_kernel)
      else:
        y = jnp.einsum('biw,giwo->gbio', h, out_kernel)
      y = y + out_bias[:, None]                           # Y_{i->t}: [T_g, B, T_cols, o]
      if self.detach_predictions:
        y = jax.lax.stop_gradient(y)
      w = gates[index]                                    # [T_g, B or 1, T_cols]
      fused = (jnp.sum(w[..., None] * y, axis=-2)
               / (jnp.sum(w, axis=-1)[..., None] + self.eps))      # [T_g, B, o]
      predictions.update({name: fused[j] for j, name in enumerate(group.names)})
    return self.tasks.ordered(predictions)


class GatedFusion(nn.Module):
  """``shared``: a ``FusionTrunk``; ``task``: the ``FusionHeads``."""
  shared: FusionTrunk
  task: FusionHeads
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """{'context': c, 'columns': every column's features} (shared parameters only; per-task
    inputs: on every task's input, each leaf [T, B, ...])."""
    if not self.per_task_inputs:
      return self.shared(x, train)
    num = self.shared.num_tasks
    z = self.shared(fold_tasks('gated_fusion', x, num), train)
    return jax.tree.map(lambda a: unfold_tasks(a, num), z)

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Every column's prediction of every task, gated and fused (``inputs`` unused)."""
    if self.per_task_inputs:                      # task t reads x_t's z (of copy t)
      return self.task(jax.tree.map(diagonal, z) if stacked else z, stacked=True)
    return self.task(z, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)


@registry.MODELS.register('gated_fusion')
def gated_fusion(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
                 context='representation', detach_predictions=False):
  """T columns predicting every task, fused per task by sigmoid gates; see the module
  docstring."""
  check(context in CONTEXTS, 'gated_fusion.context', f'must be one of {CONTEXTS}', context)
  check(isinstance(detach_predictions, bool), 'gated_fusion.detach_predictions',
        'must be a bool', detach_predictions)
  return GatedFusion(shared=FusionTrunk(backbone, len(tasks), tuple(tower_hidden), dropout),
                     task=FusionHeads(tasks, context, detach_predictions),
                     per_task_inputs=check_per_task_inputs('gated_fusion', per_task_inputs))
