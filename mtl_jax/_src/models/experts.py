"""Mixture-of-experts models: OMoE and MMoE (Ma et al., KDD 2018), and the expert, gate and
per-task-input helpers that DSelect-k (``dselect_k.py``) and CGC/PLE (``ple.py``) build on.

Experts f_1..f_n are copies of the backbone with parameters stacked on an expert axis
(``Stacked``): one vmapped network, output [n, B, ...].  Gates read the flattened input:

    OMoE:  g(x)   = softmax(W_g x),      y_t = h_t( sum_i g(x)_i f_i(x) )
    MMoE:  g^t(x) = softmax(W_{g,t} x),  y_t = h_t( sum_i g^t(x)_i f_i(x) )

``W_g x`` is ``Dense(n, use_bias=gate_bias)`` after an optional gate MLP (``gate_hidden``,
ReLU); ``gate_dropout`` drops gate outputs in training (Zhao et al., RecSys 2019).  Per-task
gates have parameters stacked on a task axis ([T, d, n]) and run as one vmapped gate.

Split: OMoE shares the experts and the gate (every task reads it), towers are task-specific;
MMoE shares the experts only, gate t and tower t are task t's.  Both define the representation
split: OMoE's z is the mixture [B, ...]; MMoE's z is the expert outputs [n, B, ...], its heads
read ``inputs`` for the gates.  Gate weights are sown as ``intermediates/.../gates``.

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): the shared
part runs on all T B inputs at once (``fold_tasks``, as ``SharedBottom``'s trunk) and task t
reads what it computes on x_t, so y_t depends on x_t only and equal inputs give the shared-input
model's predictions with the same parameters (the parameter tree does not change):

    OMoE:  y_t = h_t( sum_i g(x_t)_i f_i(x_t) )          (z: the mixtures [T, B, ...])
    MMoE:  y_t = h_t( sum_i g^t(x_t)_i f_i(x_t) )        (z: the expert outputs [T, n, B, ...],
                                                          gate t reads ``inputs[:, t]``)

The experts cost T times the shared-input model's (T B examples); with ``stacked`` heads,
task t reads row t of copy t.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.shared_bottom import SharedBottom, diagonal
from mtl_jax._src.models.stacked import Stacked


def flatten(x):
  """What the gates read: an array [B, ...] as [B, prod(...)]; a pytree of them (a padded
  graph) as its floating-point and boolean leaves, each flattened, concatenated in the tree's
  order (integer leaves, such as a graph's node indices, are left out)."""
  if not isinstance(x, (dict, list, tuple)):
    return jnp.reshape(x, (x.shape[0], -1))
  leaves = [jnp.reshape(v, (v.shape[0], -1)) for v in jax.tree_util.tree_leaves(x)
            if not jnp.issubdtype(v.dtype, jnp.integer)]
  if not leaves:
    raise ValueError('gate inputs: the input pytree has no floating-point or boolean leaf')
  floating = [v.dtype for v in leaves if jnp.issubdtype(v.dtype, jnp.floating)]
  dtype = floating[0] if floating else jnp.float32
  return jnp.concatenate([v.astype(dtype) for v in leaves], axis=1)


def mix(g, experts):
  """sum_i g[b, i] experts[i, b, ...]: g [B, n], experts [n, B, ...] -> [B, ...]."""
  return jnp.einsum('bn,nb...->b...', g, experts)


def mix_per_task(g, experts):
  """Per-task mixtures: g [T, B, n], experts [T, n, B, ...] -> [T, B, ...]."""
  return jnp.einsum('tbn,tnb...->tb...', g, experts)


def tasks_first(model: str, x, num_tasks: int):
  """Per-task inputs x [B, T, ...] as [T, B, ...]; other shapes raise an error naming
  ``<model>.per_task_inputs``."""
  if x.ndim < 3 or x.shape[1] != num_tasks:
    raise ValueError(f'{model}.per_task_inputs: inputs must be [B, T={num_tasks}, ...] (task t '
                     f'at [:, t]), got shape {tuple(x.shape)}')
  return jnp.swapaxes(x, 0, 1)


def fold_tasks(model: str, x, num_tasks: int):
  """Per-task inputs x [B, T, ...] as one batch [T B, ...], task-major (row t B + b = x[b, t]):
  a shared part run on it computes on every task's input at once."""
  x = tasks_first(model, x, num_tasks)
  return jnp.reshape(x, (-1,) + x.shape[2:])


def unfold_tasks(a, num_tasks: int, axis: int = 0):
  """Undoes ``fold_tasks`` on ``axis`` of ``a``: [..., T B, ...] -> [..., T, B, ...]."""
  return jnp.reshape(a, a.shape[:axis] + (num_tasks, -1) + a.shape[axis + 1:])


def stack(module: nn.Module, num: int, in_axis=None, axis_name='copy', **kwargs):
  """``num`` copies of ``module`` (an unbound clone, so one backbone can be stacked in several
  places) as one vmapped ``Stacked`` module; ``kwargs``: ``name`` or ``parent``."""
  return Stacked(module.clone(parent=None), num, in_axis=in_axis, axis_name=axis_name, **kwargs)


class SoftmaxGate(nn.Module):
  """g(x) = softmax(Dense(num)(MLP(flatten(x)))) over ``num`` experts: [B, num]."""
  num: int
  hidden: Sequence[int] = ()
  use_bias: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = flatten(x)
    if self.hidden:
      h = MLP(tuple(self.hidden), name='mlp')(h, train)
    return nn.softmax(nn.Dense(self.num, use_bias=self.use_bias, name='logits')(h), axis=-1)


class GateOptions(nn.Module):
  """Mixin fields for softmax gates; ``gate`` builds one, ``drop`` applies gate dropout."""

  def gate(self, num, **kwargs):
    return SoftmaxGate(num, tuple(self.gate_hidden), self.gate_bias, **kwargs)

  def drop(self, g, train):
    if self.gate_dropout > 0:
      g = nn.Dropout(self.gate_dropout, deterministic=not train)(g)
    return g


def check_gate_options(model: str, gate_bias, gate_hidden, gate_dropout) -> tuple:
  check(isinstance(gate_bias, bool), f'{model}.gate_bias', 'must be a bool', gate_bias)
  check(isinstance(gate_dropout, (int, float)) and 0 <= gate_dropout < 1,
        f'{model}.gate_dropout', 'must be in [0, 1)', gate_dropout)
  return check_widths(f'{model}.gate_hidden', gate_hidden)


def check_count(field: str, value) -> int:
  check(type(value) is int and value >= 1, field, 'must be >= 1', value)
  return value


def check_per_task_inputs(model: str, per_task_inputs) -> bool:
  check(isinstance(per_task_inputs, bool), f'{model}.per_task_inputs', 'must be a bool',
        per_task_inputs)
  return per_task_inputs


class Experts(nn.Module):
  """n copies of the backbone on the same input: [n, B, ...]."""
  backbone: nn.Module
  num: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return stack(self.backbone, self.num, name='experts')(x, train=train)


class OneGateMixture(GateOptions):
  """OMoE's shared part: sum_i g(x)_i f_i(x) with one softmax gate: [B, ...]."""
  backbone: nn.Module
  num: int
  gate_hidden: Sequence[int] = ()
  gate_bias: bool = False
  gate_dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    e = stack(self.backbone, self.num, name='experts')(x, train=train)     # [n, B, ...]
    g = self.gate(self.num, name='gate')(x, train)          # [B, n]
    self.sow('intermediates', 'gates', g)
    return mix(self.drop(g, train), e)


class PerTaskGatedHeads(GateOptions):
  """MMoE's task part: per-task gates over the expert outputs, then the towers.

  ``e``: expert outputs [n, B, ...] (or with ``stacked`` one copy per task, [T, n, B, ...]);
  ``x``: the inputs the gates read ([B, ...], or with ``per_task_inputs`` [T, B, ...], gate t
  reading x[t])."""
  heads: TaskHeads
  num: int
  gate_hidden: Sequence[int] = ()
  gate_bias: bool = False
  gate_dropout: float = 0.0
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, e, x, train: bool = False, stacked_z: bool = False):
    num_tasks = len(self.heads.tasks)
    gates = stack(self.gate(self.num, parent=None), num_tasks,
                  in_axis=0 if self.per_task_inputs else None, name='gate')
    g = gates(x, train=train)                                       # [T, B, n]
    self.sow('intermediates', 'gates', g)
    g = self.drop(g, train)
    if not stacked_z:
      e = jnp.broadcast_to(e[None], (num_tasks,) + e.shape)
    return self.heads(mix_per_task(g, e), train, stacked=True)


def _needs_inputs(model, inputs):
  if inputs is None:
    raise ValueError(f'{model}.heads: the gates read the batch inputs; pass inputs=')
  return inputs


class MMoE(nn.Module):
  """Experts ``shared`` ([n, B, ...]), per-task gates + towers ``task``."""
  shared: Experts
  task: PerTaskGatedHeads
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """The expert outputs z = [f_1(x); ...; f_n(x)]: [n, B, ...] (per-task inputs: on every
    task's input, [T, n, B, ...] with f_i(x_t) at [t, i])."""
    if not self.per_task_inputs:
      return self.shared(x, train)
    num = len(self.task.heads.tasks)
    e = self.shared(fold_tasks('mmoe', x, num), train)               # [n, T B, ...]
    return jnp.swapaxes(unfold_tasks(e, num, 1), 0, 1)

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions from expert outputs z (one copy per task with ``stacked``) and the inputs."""
    inputs = _needs_inputs('mmoe', inputs)
    if self.per_task_inputs:
      num = len(self.task.heads.tasks)
      return self.task(diagonal(z) if stacked else z, tasks_first('mmoe', inputs, num), train,
                       stacked_z=True)
    return self.task(z, inputs, train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train, inputs=x)


@registry.MODELS.register('omoe')
def omoe(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, num_experts=8,
         gate_bias=False, gate_hidden=(), gate_dropout=0.0):
  """OMoE: y_t = h_t(sum_i softmax(W_g x)_i f_i(x)); shared: experts + gate."""
  num = check_count('omoe.num_experts', num_experts)
  hidden = check_gate_options('omoe', gate_bias, gate_hidden, gate_dropout)
  return SharedBottom(
      shared=OneGateMixture(backbone, num, hidden, gate_bias, float(gate_dropout)),
      task=TaskHeads(tasks, tuple(tower_hidden), dropout),
      per_task_inputs=check_per_task_inputs('omoe', per_task_inputs))


@registry.MODELS.register('mmoe')
def mmoe(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, num_experts=8,
         gate_bias=False, gate_hidden=(), gate_dropout=0.0):
  """MMoE: y_t = h_t(sum_i softmax(W_{g,t} x)_i f_i(x)); shared: experts."""
  num = check_count('mmoe.num_experts', num_experts)
  hidden = check_gate_options('mmoe', gate_bias, gate_hidden, gate_dropout)
  per_task_inputs = check_per_task_inputs('mmoe', per_task_inputs)
  return MMoE(shared=Experts(backbone, num),
              task=PerTaskGatedHeads(TaskHeads(tasks, tuple(tower_hidden), dropout), num,
                                     hidden, gate_bias, float(gate_dropout), per_task_inputs),
              per_task_inputs=per_task_inputs)
