"""DSelect-k (Hazimeh et al., NeurIPS 2021): one DSelect-k gate per task over shared experts.

n experts (copies of the backbone, [n, B, ...]), m = ceil(log2 n) binary variables, k
single-expert selectors with logits z_i in R^m:

    S_gamma(t) = 0 if t <= -gamma/2,  1 if t >= gamma/2,
                 else -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2
    r(z_i)_l   = prod_b [S_gamma(z_ib) if bit_b(l) = 1 else 1 - S_gamma(z_ib)],   l = 0..n-1
                 (binary code of l, most-significant bit first)
    q^t        = sum_i softmax(w)_i r(z_i),     y_t = h_t( sum_l q^t_l f_l(x) )

Per-example gates (``per_example=True``): z = Dense(k m)(x), w = Dense(k)(x) on the flattened
input; static gates: z in R^{k x m}, w in R^k.  Init as google-research ``dselect_k_moe.py``:
z ~ U(-gamma/100, gamma/100) (kernel and bias), w ~ U(-0.05, 0.05).  Once the smooth-steps
saturate (|z| >= gamma/2) each r(z_i) is one-hot, so at most k experts have non-zero weight.
When n is not a power of 2 the codes l >= n are unreachable and q sums to <= 1.

Auxiliary losses, sown in training (``aux_loss/entropy``, ``aux_loss/reachability``), summed
over tasks, selectors and (per-example gates) examples, as in google-research's ``add_loss``:
    entropy      = entropy_reg * sum -r_l log(r_l + 1e-6)
    reachability = sum 1 / sum_{l<n} r_l          (only when n is not a power of 2)

One input per task (``per_task_inputs``; inputs [B, T, ...], task t's at [:, t]): the experts
run on all T B inputs at once (as ``SharedBottom``'s trunk, T times the cost) and gate t reads
x_t and mixes the experts' outputs on x_t, y_t = h_t( sum_l q^t(x_t)_l f_l(x_t) ); the
parameters and the regularisers' shapes are those of the shared-input model (equal inputs give
its predictions and losses).

Split: experts shared; gates and towers task-specific.  No representation split (the model
sows auxiliary losses).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.models.common import check
from mtl_jax._src.models.experts import (Experts, check_count, check_per_task_inputs, flatten,
                                         fold_tasks, mix_per_task, stack, tasks_first, unfold_tasks)
from mtl_jax._src.models.heads import TaskHeads

EPSILON = 1e-6


def num_bits(num_experts: int) -> int:
  """m = ceil(log2 n): binary variables that encode n experts."""
  return math.ceil(math.log2(num_experts)) if num_experts > 1 else 0


def binary_codes(num_experts: int) -> np.ndarray:
  """[n, m] bool: row l is the binary code of l, most-significant bit first."""
  m = num_bits(num_experts)
  return np.array([[(l >> (m - 1 - b)) & 1 for b in range(m)] for l in range(num_experts)],
                  dtype=bool).reshape(num_experts, m)


def smooth_step(t, gamma: float):
  """S_gamma(t): 0 below -gamma/2, 1 above gamma/2, the cubic -2t^3/gamma^3 + 3t/(2gamma) + 1/2
  between."""
  cubic = -2.0 / gamma ** 3 * t ** 3 + 1.5 / gamma * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def selector_outputs(z, num_experts: int, gamma: float):
  """r(z): z [..., m] -> [..., n], r_l = prod_b (S(z_b) if bit_b(l) else 1 - S(z_b))."""
  s = smooth_step(z, gamma)[..., None, :]                          # [..., 1, m]
  return jnp.prod(jnp.where(binary_codes(num_experts), s, 1.0 - s), axis=-1)


def _uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class DSelectKGate(nn.Module):
  """One task's gate: (q [B, n], r [B or 1, k, n])."""
  num_experts: int
  k: int
  gamma: float
  per_example: bool = True

  @nn.compact
  def __call__(self, x):
    n, k, m = self.num_experts, self.k, num_bits(self.num_experts)
    z_init, w_init = _uniform(self.gamma / 100), _uniform(0.05)
    if self.per_example:
      h = flatten(x)
      w = nn.Dense(k, kernel_init=w_init, bias_init=w_init, name='w')(h)        # [B, k]
      z = (nn.Dense(k * m, kernel_init=z_init, bias_init=z_init, name='z')(h)
           if m else jnp.zeros((h.shape[0], k * m), h.dtype))
      z = z.reshape(h.shape[0], k, m)
    else:
      w = self.param('w', w_init, (k,))[None]                                   # [1, k]
      z = self.param('z', z_init, (k, m))[None]                                 # [1, k, m]
    r = selector_outputs(z, n, self.gamma)                                      # [., k, n]
    q = jnp.einsum('bk,bkn->bn', nn.softmax(w, axis=-1), r)
    return jnp.broadcast_to(q, (jax.tree_util.tree_leaves(x)[0].shape[0], n)), r


class DSelectKHeads(nn.Module):
  """Per-task DSelect-k gates over the expert outputs e [n, B, ...], then the towers (with
  ``per_task_inputs``: e [T, n, B, ...] and x [T, B, ...], gate t reading x[t] and mixing
  e[t])."""
  heads: TaskHeads
  num_experts: int
  k: int
  gamma: float
  per_example: bool = True
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, e, x, train: bool = False):
    num_tasks = len(self.heads.tasks)
    gate = DSelectKGate(self.num_experts, self.k, self.gamma, self.per_example, parent=None)
    q, r = stack(gate, num_tasks, in_axis=0 if self.per_task_inputs else None,
                 name='gate')(x)                               # [T, B, n], [T, ., k, n]
    self.sow('intermediates', 'gates', q)
    if not self.per_task_inputs:
      e = jnp.broadcast_to(e[None], (num_tasks,) + e.shape)
    return self.heads(mix_per_task(q, e), train, stacked=True), r


class DSelectK(nn.Module):
  """Experts ``shared``; DSelect-k gates + towers ``task``; regularisers as aux losses."""
  shared: Experts
  task: DSelectKHeads
  entropy_reg: float = 1e-6
  per_task_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.per_task_inputs:
      num = len(self.task.heads.tasks)
      e = unfold_tasks(self.shared(fold_tasks('dselect_k', x, num), train), num, 1)
      e, x = jnp.swapaxes(e, 0, 1), tasks_first('dselect_k', x, num)  # [T, n, B, ...], [T, B, ...]
    else:
      e = self.shared(x, train)
    predictions, r = self.task(e, x, train)
    if train:
      if self.entropy_reg:
        self.sow('aux_loss', 'entropy',
                 self.entropy_reg * jnp.sum(-r * jnp.log(r + EPSILON)))
      n = self.task.num_experts
      if n != 2 ** num_bits(n):
        self.sow('aux_loss', 'reachability', jnp.sum(1.0 / jnp.sum(r, axis=-1)))
    return predictions


@registry.MODELS.register('dselect_k')
def dselect_k(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
              num_experts=8, k=2, gamma=1.0, entropy_reg=1e-6, per_example=True):
  """Per-task DSelect-k gates over shared experts (see the module docstring)."""
  n = check_count('dselect_k.num_experts', num_experts)
  check(type(k) is int and k >= 1, 'dselect_k.k', 'must be >= 1', k)
  check(k <= n, 'dselect_k.k', f'must be <= num_experts ({n})', k)
  check(isinstance(gamma, (int, float)) and gamma > 0, 'dselect_k.gamma', 'must be > 0', gamma)
  check(isinstance(entropy_reg, (int, float)) and entropy_reg >= 0, 'dselect_k.entropy_reg',
        'must be >= 0', entropy_reg)
  check(isinstance(per_example, bool), 'dselect_k.per_example', 'must be a bool', per_example)
  per_task_inputs = check_per_task_inputs('dselect_k', per_task_inputs)
  heads = TaskHeads(tasks, tuple(tower_hidden), dropout)
  return DSelectK(shared=Experts(backbone, n),
                  task=DSelectKHeads(heads, n, k, float(gamma), per_example, per_task_inputs),
                  entropy_reg=float(entropy_reg), per_task_inputs=per_task_inputs)
