"""Mixture-of-experts models: OMoE and MMoE (Ma et al., KDD 2018); DSelect-k, CGC and PLE live
in ``dselect_k.py`` and ``ple.py`` and are registered here too (``BUILDERS``).

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
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax.models.common import check, check_widths
from mtl_jax.models.heads import TaskHeads
from mtl_jax.models.mlp import MLP
from mtl_jax.models.shared_bottom import SharedBottom
from mtl_jax.models.stacked import Stacked


def flatten(x):
  """[B, ...] -> [B, prod(...)]: what the gates read."""
  return jnp.reshape(x, (x.shape[0], -1))


def mix(g, experts):
  """sum_i g[b, i] experts[i, b, ...]: g [B, n], experts [n, B, ...] -> [B, ...]."""
  return jnp.einsum('bn,nb...->b...', g, experts)


def mix_per_task(g, experts):
  """Per-task mixtures: g [T, B, n], experts [T, n, B, ...] -> [T, B, ...]."""
  return jnp.einsum('tbn,tnb...->tb...', g, experts)


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
  ``x``: the inputs the gates read."""
  heads: TaskHeads
  num: int
  gate_hidden: Sequence[int] = ()
  gate_bias: bool = False
  gate_dropout: float = 0.0

  @nn.compact
  def __call__(self, e, x, train: bool = False, stacked_z: bool = False):
    num_tasks = len(self.heads.tasks)
    gates = stack(self.gate(self.num, parent=None), num_tasks, name='gate')
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

  def representation(self, x, train: bool = False):
    """The expert outputs z = [f_1(x); ...; f_n(x)]: [n, B, ...]."""
    return self.shared(x, train)

  def heads(self, z, train: bool = False, stacked: bool = False, inputs=None):
    """Predictions from expert outputs z ([T, n, B, ...] with ``stacked``) and the inputs."""
    return self.task(z, _needs_inputs('mmoe', inputs), train, stacked)

  def __call__(self, x, train: bool = False):
    return self.heads(self.representation(x, train), train, inputs=x)


def _omoe(tasks, backbone, tower_hidden=(), dropout=0.0, num_experts=8, gate_bias=False,
          gate_hidden=(), gate_dropout=0.0):
  """OMoE: y_t = h_t(sum_i softmax(W_g x)_i f_i(x)); shared: experts + gate."""
  num = check_count('omoe.num_experts', num_experts)
  hidden = check_gate_options('omoe', gate_bias, gate_hidden, gate_dropout)
  return SharedBottom(
      shared=OneGateMixture(backbone, num, hidden, gate_bias, float(gate_dropout)),
      task=TaskHeads(tasks, tuple(tower_hidden), dropout))


def _mmoe(tasks, backbone, tower_hidden=(), dropout=0.0, num_experts=8, gate_bias=False,
          gate_hidden=(), gate_dropout=0.0):
  """MMoE: y_t = h_t(sum_i softmax(W_{g,t} x)_i f_i(x)); shared: experts."""
  num = check_count('mmoe.num_experts', num_experts)
  hidden = check_gate_options('mmoe', gate_bias, gate_hidden, gate_dropout)
  return MMoE(shared=Experts(backbone, num),
              task=PerTaskGatedHeads(TaskHeads(tasks, tuple(tower_hidden), dropout), num,
                                     hidden, gate_bias, float(gate_dropout)))


# Defined after the helpers above, which dselect_k and ple import.
from mtl_jax.models import dselect_k, ple  # noqa: E402  pylint: disable=g-import-not-at-top

BUILDERS = {'omoe': _omoe, 'mmoe': _mmoe, **dselect_k.BUILDERS, **ple.BUILDERS}
