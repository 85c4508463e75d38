"""GradDrop: gradient sign dropout."""

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.jacobian import task_sum

PURITY_EPS = 1e-7  # under the sum of |S_t| of the representation form


def graddrop_uniform(key: jax.Array, purity):
  """U ~ Uniform[0, 1), one draw per coordinate of the pytree ``purity`` (arrays or
  ``jax.ShapeDtypeStruct``: the shapes of one task's row, without the batch axis in the
  representation form), from the update's key: leaf i uses the i-th of ``split(key, n)``."""
  leaves, treedef = jax.tree.flatten(purity)
  keys = jax.random.split(key, max(len(leaves), 1))
  draws = [jax.random.uniform(k, leaf.shape, jnp.result_type(jnp.float32, leaf.dtype))
           for k, leaf in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, draws)



@registry.WEIGHTINGS.register('graddrop')
def graddrop(leak: Union[float, Sequence[float]] = 0.0,
             f: Optional[Callable[[jax.Array], jax.Array]] = None) -> Weighting:
  """GradDrop: keep, per coordinate, the gradients of one randomly chosen sign.

  Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov (2020), "Just Pick a Sign:
  Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

  From per-coordinate statistics S_t of the task rows: the positive sign purity
  P = (1 + sum_t S_t / sum_t |S_t|) / 2, U ~ Uniform[0, 1) per coordinate (from the update's
  key: ``graddrop_uniform``), the masks M_t = [f(P) > U] [S_t > 0] + [f(P) < U] [S_t < 0] and

      d = sum_t (leak_t + (1 - leak_t) M_t) * row_t        (element-wise).

  On representation gradients (engine mode 'rep', ``inputs.representation`` = z, rows
  dL_t/dz with z's shape, batch first) this is the paper's form, as in LibMTL: S_t is the
  sign-corrected batch sum, S_t = sum_b sign(z_b) * dL_t/dz_b, the purity has 1e-7 added
  under sum_t |S_t|, and each mask is broadcast over the batch; d is the cotangent of z that
  the engine pushes through the trunk.  On parameter gradients (any other mode) it is
  TorchJD's form: S_t = g_t itself (no sign correction), P exact (1/2 where every g_t is 0).
  d is not a combination alpha^T J (``direct``; the reported weights are NaN).  Task-specific
  parameters get unweighted gradients.  Stateless, ``random`` (a key is required).

  Args:
    leak: how much of each gradient always passes, in [0, 1]: one value for every task or
      one per task (TorchJD's per-row leak); 0 (the default) drops the masked gradients
      entirely, 1 gives the plain sum.
    f: a monotonically increasing map applied to the purity (arrays to arrays, jittable);
      None: the identity (the paper's experiments, LibMTL and TorchJD).

  Returns:
    The ``Weighting`` (direct, random, stateless, at least 2 tasks).
  """
  leak = checks.check_vector('graddrop', 'leak', leak, scalar=True, low=0.0, high=1.0)
  if f is not None and not callable(f):
    raise ValueError(f'graddrop: f must be a callable (purity -> purity) or None, got {f!r}')
  transform = (lambda p: p) if f is None else f

  def leaks(num, dtype):
    if leak.ndim == 1 and leak.shape != (num,):
      raise ValueError(f'graddrop: {leak.size} leak values given for {num} tasks')
    return jnp.broadcast_to(jnp.asarray(leak, dtype), (num,))

  def update(inputs, state, key):
    rows, z = inputs.jacobian, inputs.representation
    leaves, treedef = jax.tree.flatten(rows)
    num = inputs.losses.shape[0]
    if z is None:
      stats = [_upcast(leaf) for leaf in leaves]
      purity = [0.5 * (1 + _safe_ratio(task_sum(s), task_sum(jnp.abs(s)))) for s in stats]
    else:
      z_leaves = jax.tree.leaves(z)
      if len(z_leaves) != len(leaves):
        raise ValueError('graddrop: the representation and its gradient rows differ in '
                         f'structure ({len(z_leaves)} and {len(leaves)} leaves)')
      stats = [_batch_sum(leaf, zl) for leaf, zl in zip(leaves, z_leaves)]
      purity = [0.5 * (1 + task_sum(s) / (task_sum(jnp.abs(s)) + PURITY_EPS)) for s in stats]
    uniform = jax.tree.leaves(graddrop_uniform(key, purity))
    out = []
    for leaf, s, p, u in zip(leaves, stats, purity, uniform):
      fp = transform(p)
      mask = (fp > u) & (s > 0) | (fp < u) & (s < 0)          # [T, ...] without batch
      if z is not None and leaf.ndim > s.ndim:                  # broadcast over the batch
        mask = jnp.expand_dims(mask, 1)
      lk = leaks(num, leaf.dtype).reshape((num,) + (1,) * (leaf.ndim - 1))
      out.append(task_sum((lk + (1 - lk) * mask.astype(leaf.dtype)) * leaf))
    weights = jnp.full((num,), jnp.nan, jnp.float32)
    return WeightingResult(weights, state, direction=jax.tree.unflatten(treedef, out))

  def init(num_tasks):
    leaks(num_tasks, jnp.float32)      # a per-task leak of the wrong length fails here
    return ()

  return Weighting('graddrop', Needs.JACOBIAN, init=init, update=update,
                   head_grads='unweighted', min_tasks=2, random=True, direct=True)


def _upcast(x):
  return x.astype(jnp.result_type(jnp.float32, x.dtype))


def _safe_ratio(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def _batch_sum(rows, z):
  """S_t = sum over the batch (z's leading axis) of sign(z) * rows_t: [T, *z.shape[1:]]
  (a scalar z has no batch axis)."""
  rows = _upcast(rows)
  signed = rows * jnp.sign(z).astype(rows.dtype)[None]
  return signed.sum(1) if z.ndim else signed
