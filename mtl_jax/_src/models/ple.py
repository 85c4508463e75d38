"""CGC and PLE (Tang et al., RecSys 2020), DeepCTR semantics (with the shared gate).

Level j = 1..N keeps one output per task g^{k,j} and one shared output g^{s,j};
g^{k,0} = g^{s,0} = x.  Task k has m_k experts E^{(j)}_{k,.} reading g^{k,j-1}; the m_s shared
experts E^{(j)}_{s,.} read g^{s,j-1}:

    g^{k,j} = softmax(W^{k,j} g^{k,j-1})^T [E^{(j)}_{k,.}(g^{k,j-1}); E^{(j)}_{s,.}(g^{s,j-1})]
    g^{s,j} = softmax(W^{s,j} g^{s,j-1})^T [E^{(j)}_{1,.}; ...; E^{(j)}_{T,.}; E^{(j)}_{s,.}]
              (the shared gate: every level but the last)
    y_k     = t^k(g^{k,N})

CGC is the one-level case (no shared gate).  Level-1 experts are copies of the backbone;
experts of levels >= 2 read the previous level's outputs and are MLPs of widths
``expert_hidden`` (ReLU after every layer, the model's ``dropout``).  Gates: optional MLP
(``gate_hidden``) then ``Dense(., use_bias=gate_bias)`` + softmax, on the flattened gate input;
``gate_dropout`` drops gate outputs in training.  Task experts are stacked [T, m_k, ...], task
gates [T, d_j, m_k+m_s].

Split (a parameter is shared iff more than one task's loss depends on it): the task-k experts
of a level j < N feed that level's shared gate, hence every task, and so do the task-k gates
of levels j < N-1 (through g^{k,j} -> level j+1's task experts -> its shared gate).  Shared:
all shared experts and shared gates, task experts of levels < N, task gates of levels < N-1.
Task-specific: task gates of levels N-1 and N, task experts of level N, towers.  For CGC
(N = 1): shared experts only are shared.

Representation split: z = {level N-1's task experts [T, m_k, B, ...] and shared experts
[m_s, B, ...], level N-1's task-gate inputs g^{k,N-2} [T, B, ...] (N >= 3), level N's shared
experts [m_s, B, ...]}; the heads run the rest, reading ``inputs`` where a gate or expert reads
x (N <= 2).  With ``stacked``, task t reads copy t (and its own task row of copy t).

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]).  The network
above, run on x_t, gives y_t:  g^{k,0} = g^{s,0} = x_t on "chain" t, so every level's shared
gate keeps its meaning (it mixes every task's and the shared experts' outputs on ONE example,
x_t) and y_t depends on x_t only.  The trunk runs on all T B inputs at once (every chain:
T times the shared-input trunk's compute and activation memory, as ``SharedBottom``'s trunk);
the heads run task t's part on chain t only, so their cost is the shared-input heads'.  Of the
trunk's outputs z keeps task t's chain: task t's leaves (its own row) as above, the shared
leaves gain a task axis, [T, m_s, B, ...] (level N's shared experts on x_t for task t), so z
stays T times the shared-input z at most (the copies the heads never read are not kept).  The
parameters are the shared-input model's: equal inputs give its predictions.  (Dropping the
shared gate, as LibMTL's PLE does, would change the model; it is kept.)
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.experts import (GateOptions, check_count, check_gate_options,
                                         check_per_task_inputs, fold_tasks, mix, mix_per_task,
                                         stack, tasks_first, unfold_tasks)
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.shared_bottom import diagonal


class _Levels(GateOptions):
  """The building blocks of PLE levels (shared by the trunk and the heads)."""
  backbone: nn.Module
  num_tasks: int
  num_levels: int
  num_task_experts: int
  num_shared_experts: int
  expert_hidden: Sequence[int]
  dropout: float
  gate_hidden: Sequence[int]
  gate_bias: bool
  gate_dropout: float

  def _expert(self, level):
    if level == 1:
      return self.backbone
    return MLP(tuple(self.expert_hidden), dropout=self.dropout, parent=None)

  def task_experts(self, level, x, per_task, train):
    """[T, m_k, B, ...]; task t's experts read x[t] if ``per_task`` else x."""
    inner = stack(self._expert(level), self.num_task_experts, axis_name='expert', parent=None)
    outer = stack(inner, self.num_tasks, in_axis=0 if per_task else None, axis_name='task',
                  name=f'level{level}_task_experts')
    return outer(x, train=train)

  def shared_experts(self, level, x, train):
    """[m_s, B, ...]."""
    return stack(self._expert(level), self.num_shared_experts,
                 name=f'level{level}_shared_experts')(x, train=train)

  def task_gates(self, level, x, per_task, train):
    """[T, B, m_k + m_s]; gate t reads x[t] if ``per_task`` else x."""
    gate = self.gate(self.num_task_experts + self.num_shared_experts, parent=None)
    g = stack(gate, self.num_tasks, in_axis=0 if per_task else None,
              name=f'level{level}_task_gates')(x, train=train)
    self.sow('intermediates', f'gates_level{level}_task', g)
    return self.drop(g, train)

  def shared_gate(self, level, x, train):
    """[B, T m_k + m_s]."""
    num = self.num_tasks * self.num_task_experts + self.num_shared_experts
    g = self.gate(num, name=f'level{level}_shared_gate')(x, train)
    self.sow('intermediates', f'gates_level{level}_shared', g)
    return self.drop(g, train)

  def task_outputs(self, g, task_experts, shared_experts, shared_per_task=False):
    """g^{k} = g[k]^T [task_experts[k]; shared_experts] for every task k: [T, B, ...]."""
    if not shared_per_task:
      shared_experts = jnp.broadcast_to(shared_experts[None],
                                        (self.num_tasks,) + shared_experts.shape)
    return mix_per_task(g, jnp.concatenate([task_experts, shared_experts], axis=1))


class PLETrunk(_Levels):
  """The shared part: levels 1..N-1 (but level N-1's task gates) and level N's shared experts."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = self.num_levels
    tasks_in, shared_in = None, x          # g^{k,j-1} [T, B, ...] (None: x), g^{s,j-1}
    z = {}
    for j in range(1, n):
      per_task = tasks_in is not None
      te = self.task_experts(j, tasks_in if per_task else x, per_task, train)
      se = self.shared_experts(j, shared_in, train)
      if j == n - 1:
        z = {'task_experts': te, 'shared_experts': se}
        if per_task:
          z['task_inputs'] = tasks_in
      else:
        g = self.task_gates(j, tasks_in if per_task else x, per_task, train)
        tasks_in = self.task_outputs(g, te, se)
      every = jnp.concatenate([te.reshape((-1,) + te.shape[2:]), se], axis=0)
      shared_in = mix(self.shared_gate(j, shared_in, train), every)
    z['last_shared_experts'] = self.shared_experts(n, shared_in, train)
    return z


def own_chain(key: str, a, num_tasks: int):
  """Task t's part of a trunk output computed on all T B inputs (``fold_tasks``): task
  leaves [T, (m_k,) T B, ...] -> row t on chain t [T, (m_k,) B, ...]; shared leaves
  [m_s, T B, ...] -> [T, m_s, B, ...] (chain t at [t])."""
  if key in ('task_experts', 'task_inputs'):
    axis = 2 if key == 'task_experts' else 1                        # the batch axis
    return diagonal(jnp.moveaxis(unfold_tasks(a, num_tasks, axis), axis, 1))
  return jnp.moveaxis(unfold_tasks(a, num_tasks, 1), 1, 0)


class PLEHeads(_Levels):
  """The task part: level N-1's task gates, level N's task experts and gates, the towers.

  With ``per_task_inputs`` the shared leaves of z have a task axis too and x (if read) is
  [T, B, ...], task t's gates and experts reading x[t]."""
  heads: TaskHeads
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, z, x, train: bool = False, stacked: bool = False):
    n, t = self.num_levels, jnp.arange(self.num_tasks)
    own = (lambda a: a[t, t]) if stacked else (lambda a: a)    # task k's row of copy k
    per_input = self.per_task_inputs
    shared = own if per_input else (lambda a: a)               # shared leaves
    shared_per_task = stacked or per_input
    tasks_in = None
    if n >= 2:
      prev = own(z['task_inputs']) if 'task_inputs' in z else None
      g = self.task_gates(n - 1, x if prev is None else prev, per_input or prev is not None,
                          train)
      tasks_in = self.task_outputs(g, own(z['task_experts']), shared(z['shared_experts']),
                                   shared_per_task)
    per_task = per_input or tasks_in is not None
    inputs = x if tasks_in is None else tasks_in
    te = self.task_experts(n, inputs, per_task, train)
    g = self.task_gates(n, inputs, per_task, train)
    out = self.task_outputs(g, te, shared(z['last_shared_experts']),
                            shared_per_task)                              # [T, B, ...]
    return self.heads(out, train, stacked=True)


class PLE(nn.Module):
  """``shared``: a ``PLETrunk``; ``task``: a ``PLEHeads``."""
  shared: PLETrunk
  task: PLEHeads
  model_name: str = 'ple'
  per_task_inputs: bool = False

  def representation(self, x, train: bool = False):
    """The shared level outputs (see the module docstring; per-task inputs: task t's chain)."""
    if not self.per_task_inputs:
      return self.shared(x, train)
    num = self.task.num_tasks
    z = self.shared(fold_tasks(self.model_name, x, num), train)
    return {key: own_chain(key, a, num) for key, a in z.items()}

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions from z (one copy per task with ``stacked``) and, for N <= 2, the inputs."""
    if inputs is None and self.task.num_levels <= 2:
      raise ValueError(f'{self.model_name}.heads: the task gates read the batch inputs; '
                       'pass inputs=')
    if self.per_task_inputs and inputs is not None:
      inputs = tasks_first(self.model_name, inputs, self.task.num_tasks)    # [T, B, ...]
    return self.task(z, inputs, train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train, inputs=x)


def _build(model, tasks, backbone, tower_hidden, dropout, per_task_inputs, num_levels,
           num_task_experts, num_shared_experts, expert_hidden, gate_bias, gate_hidden,
           gate_dropout):
  check(type(num_levels) is int and num_levels >= 1, f'{model}.num_levels', 'must be >= 1',
        num_levels)
  options = dict(
      backbone=backbone, num_tasks=len(tasks), num_levels=num_levels,
      num_task_experts=check_count(f'{model}.num_task_experts', num_task_experts),
      num_shared_experts=check_count(f'{model}.num_shared_experts', num_shared_experts),
      expert_hidden=expert_hidden, dropout=dropout,
      gate_hidden=check_gate_options(model, gate_bias, gate_hidden, gate_dropout),
      gate_bias=gate_bias, gate_dropout=float(gate_dropout))
  per_task_inputs = check_per_task_inputs(model, per_task_inputs)
  return PLE(shared=PLETrunk(**options),
             task=PLEHeads(**options, heads=TaskHeads(tasks, tuple(tower_hidden), dropout),
                           per_task_inputs=per_task_inputs),
             model_name=model, per_task_inputs=per_task_inputs)


@registry.MODELS.register('cgc')
def cgc(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
        num_task_experts=1, num_shared_experts=1, gate_bias=False, gate_hidden=(),
        gate_dropout=0.0):
  """CGC: per-task gates over [task k's experts; shared experts]; shared: shared experts."""
  return _build('cgc', tasks, backbone, tower_hidden, dropout, per_task_inputs, 1,
                num_task_experts, num_shared_experts, (), gate_bias, gate_hidden, gate_dropout)


@registry.MODELS.register('ple')
def ple(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, num_levels=2,
        num_task_experts=1, num_shared_experts=1, expert_hidden=(32,), gate_bias=False,
        gate_hidden=(), gate_dropout=0.0):
  """PLE with DeepCTR's shared gate; levels >= 2 use MLP experts of widths expert_hidden."""
  hidden = check_widths('ple.expert_hidden', expert_hidden)
  check(len(hidden) > 0, 'ple.expert_hidden', 'must have at least one layer', expert_hidden)
  return _build('ple', tasks, backbone, tower_hidden, dropout, per_task_inputs, num_levels,
                num_task_experts, num_shared_experts, hidden, gate_bias, gate_hidden,
                gate_dropout)
