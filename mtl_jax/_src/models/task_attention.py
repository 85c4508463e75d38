"""Multi-head attention across task subspaces (a design of this library, not a published
model).

Backbone output h.

(B) Cross-task attention (always).  For a vector h [B, d] (rank > 2 outputs are flattened when
``token_attention=False``), one token per task in a ``d_s``-dimensional subspace,

    z_t = W^P_t h + b_t            (W^P: [T, d, d_s], one einsum),    Z: [B, T, d_s],

then ``num_blocks`` pre-LN transformer blocks over the T task tokens,

    Z' = Z + MHA(LN(Z); mask),     Z'' = Z' + FFN(LN(Z')),
    FFN = Dense(4 d_s) -> ReLU -> Dense(d_s),

with ``num_heads`` heads (no dropout) and an optional T x T attention mask: 'none' (every task
reads every task), 'self' (task t reads only itself: no exchange) or 'previous' (causal: task t
reads tasks s <= t, for ordered tasks).  Token t of Z'' feeds tower t.

(A) Per-task subspace attention (``token_attention=True``; h are tokens [B, N, d], or a feature
map [B, H, W, C] whose positions are the tokens).  For each task t, a multi-head self-attention
with its own W^Q_t, W^K_t, W^V_t [d, d_s] and W^O_t [d_s, d_s] (parameters stacked on the task
axis, vmapped), mean-pooled over the tokens:

    z_t = mean_n( softmax(Q_t K_t^T / sqrt(d_s / H)) V_t W^O_t ),

then (B) over these T task vectors (in place of the projections W^P).

Shared/task split (a parameter is shared iff more than one task's loss depends on it):
'shared' = backbone, the projections W^P, b (their tokens enter the shared attention, so every
task's loss depends on every projection; only with mask='self' would W^P_t reach task t alone),
the attention blocks, and with (A) the per-task subspace attention (it feeds the shared blocks
that mix the tasks, so it is shared too); 'task' = the towers.

Representation split: ``representation(x) = Z''`` [B, T, d_s]; ``heads`` sends token t to tower
t (with ``stacked=True``, z is [T, B, T, d_s] and task t reads only z[t][:, t]).

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): the trunk runs
on all T B inputs at once (as ``SharedBottom``'s trunk, T times the cost); on x_t it forms all
T task tokens of x_t and attends across them, and tower t reads token t of x_t:
z[:, t] = Z''(x_t)[:, t] (z keeps the layout [B, T, d_s], the other tokens are dropped), so y_t
depends on x_t only and the heads are unchanged.  The cross-task exchange stays within one
example (the tasks' subspaces of x_t), never between the unrelated examples that share a batch
position.  The parameters are the shared-input model's (equal inputs give its predictions).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.models.common import check
from mtl_jax._src.models.experts import check_per_task_inputs, fold_tasks, unfold_tasks
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.stacked import Stacked

MASKS = ('none', 'self', 'previous')


def task_mask(kind: str, num_tasks: int):
  """The T x T boolean mask (query task, key task) of ``kind``, or None for 'none'."""
  if kind == 'none':
    return None
  if kind == 'self':
    return np.eye(num_tasks, dtype=bool)
  return np.tril(np.ones((num_tasks, num_tasks), dtype=bool))


class TaskBlock(nn.Module):
  """One pre-LN transformer block over the task tokens Z [B, T, d_s]."""
  num_heads: int
  mask: str = 'none'

  @nn.compact
  def __call__(self, z):
    width = z.shape[-1]
    mask = task_mask(self.mask, z.shape[-2])
    h = nn.LayerNorm(name='ln_attention')(z)
    z = z + nn.MultiHeadDotProductAttention(
        self.num_heads, qkv_features=width, out_features=width, name='attention')(
            h, h, mask=None if mask is None else jnp.asarray(mask)[None, None])
    h = nn.LayerNorm(name='ln_ffn')(z)
    h = nn.Dense(width, name='ffn_out')(nn.relu(nn.Dense(4 * width, name='ffn_in')(h)))
    return z + h


class TaskAttentionTrunk(nn.Module):
  """The shared part: backbone, task tokens (projections, or (A) per-task attention) and
  the cross-task blocks.  Returns Z'' [B, T, d_s]."""
  backbone: nn.Module
  num_tasks: int
  subspace_dim: int
  num_heads: int
  num_blocks: int
  mask: str
  token_attention: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = self.backbone(x, train=train)
    if self.token_attention:
      if h.ndim not in (3, 4):
        raise ValueError('task_attention.token_attention: needs a backbone with token or '
                         f'spatial outputs (rank 3 or 4), got rank {h.ndim}')
      tokens = jnp.reshape(h, (h.shape[0], -1, h.shape[-1]))          # [B, N, d]
      attention = nn.MultiHeadDotProductAttention(
          self.num_heads, qkv_features=self.subspace_dim, out_features=self.subspace_dim,
          name='subspace_attention')                                   # params [T, ...]
      out = Stacked(attention, self.num_tasks, name='per_task')(tokens)  # [T, B, N, d_s]
      z = jnp.swapaxes(jnp.mean(out, axis=2), 0, 1)                   # [B, T, d_s]
    else:
      h = jnp.reshape(h, (h.shape[0], -1))
      kernel = self.param('proj_kernel', nn.initializers.lecun_normal(batch_axis=(0,)),
                          (self.num_tasks, h.shape[-1], self.subspace_dim), h.dtype)
      bias = self.param('proj_bias', nn.initializers.zeros_init(),
                        (self.num_tasks, self.subspace_dim), h.dtype)
      z = jnp.einsum('bd,tds->bts', h, kernel) + bias                  # [B, T, d_s]
    for i in range(self.num_blocks):
      z = TaskBlock(self.num_heads, self.mask, name=f'block{i}')(z)
    return z


class TaskAttention(nn.Module):
  """``shared``: a ``TaskAttentionTrunk``; ``task``: ``TaskHeads`` (tower t reads token t)."""
  shared: TaskAttentionTrunk
  task: TaskHeads
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """Z'' [B, T, d_s] (shared parameters only; per-task inputs: token t of Z''(x_t) at
    [:, t])."""
    if not self.per_task_inputs:
      return self.shared(x, train)
    num = self.shared.num_tasks
    z = unfold_tasks(self.shared(fold_tasks('task_attention', x, num), train), num)
    index = np.arange(num)
    return jnp.swapaxes(z[index, :, index], 0, 1)            # [T, B, T, d_s] -> [B, T, d_s]

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions from Z'' [B, T, d_s], or with ``stacked`` from one copy per task
    [T, B, T, d_s] of which task t reads only copy t, token t."""
    if stacked:
      index = np.arange(z.shape[0])
      per_task = z[index, :, index]                                    # [T, B, d_s]
    else:
      per_task = jnp.swapaxes(z, 0, 1)
    return self.task(per_task, train, stacked=True)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train)


@registry.MODELS.register('task_attention')
def task_attention(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
                   subspace_dim=32, num_heads=4, num_blocks=1, mask='none',
                   token_attention=False):
  """Cross-task attention over per-task subspace tokens (optionally per-task token attention
  first); see the module docstring."""
  check(type(subspace_dim) is int and subspace_dim >= 1, 'task_attention.subspace_dim',
        'must be an integer >= 1', subspace_dim)
  check(type(num_heads) is int and num_heads >= 1, 'task_attention.num_heads',
        'must be an integer >= 1', num_heads)
  check(subspace_dim % num_heads == 0, 'task_attention.num_heads',
        f'must divide subspace_dim={subspace_dim}', num_heads)
  check(type(num_blocks) is int and num_blocks >= 1, 'task_attention.num_blocks',
        'must be an integer >= 1', num_blocks)
  check(mask in MASKS, 'task_attention.mask', f'must be one of {MASKS}', mask)
  check(isinstance(token_attention, bool), 'task_attention.token_attention',
        'must be a bool', token_attention)
  trunk = TaskAttentionTrunk(backbone, len(tasks), subspace_dim, num_heads, num_blocks, mask,
                             token_attention)
  return TaskAttention(shared=trunk, task=TaskHeads(tasks, tuple(tower_hidden), dropout),
                       per_task_inputs=check_per_task_inputs('task_attention', per_task_inputs))
