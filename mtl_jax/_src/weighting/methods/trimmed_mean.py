"""Trimmed mean: the coordinate-wise mean of the task gradients without their extremes."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.jacobian import task_sum


def _masked_mean(leaf: jax.Array, k: int) -> jax.Array:
  """The trimmed mean along axis 0 by k rounds that each drop the largest and the smallest
  of the values still kept (one occurrence of a tied value per round): 2k arg-reductions,
  O(k T) per coordinate, against a sort's O(T log T) with a far larger constant on the CPU
  (24x faster at T = 8, k = 1, 266k coordinates).  The kept values are summed as they are,
  not as the total minus the extremes, which would cancel catastrophically."""
  num = leaf.shape[0]
  wide = jnp.result_type(jnp.float32, leaf.dtype)
  x = leaf.astype(wide)
  index = jnp.arange(num).reshape((num,) + (1,) * (leaf.ndim - 1))
  keep = jnp.ones(leaf.shape, bool)
  for _ in range(k):
    high = jnp.argmax(jnp.where(keep, x, -jnp.inf), axis=0)
    keep = keep & (index != high[None])
    low = jnp.argmin(jnp.where(keep, x, jnp.inf), axis=0)
    keep = keep & (index != low[None])
  return task_sum(jnp.where(keep, x, 0)) / (num - 2 * k)


@registry.WEIGHTINGS.register('trimmed_mean')
def trimmed_mean(trim_number: int = 1) -> Weighting:
  """Coordinate-wise trimmed mean of the task gradients (a Byzantine-robust aggregator).

  Yin, Chen, Ramchandran and Bartlett (2018), "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018.

  For each coordinate j, order the T values g_1j, ..., g_Tj, drop the k = ``trim_number``
  largest and the k smallest and average the T - 2k others (by k rounds of arg-max/arg-min
  when k <= max(1, T / 4), else by a sort):

      d_j = (1 / (T - 2k)) sum_{i = k+1}^{T-k} g_(i)j      (g_(1)j <= ... <= g_(T)j).

  It needs T >= 2k + 1 tasks (a ``ValueError`` naming ``trim_number`` otherwise, when the
  method is initialised or traced).  k = 0 is the mean of the rows.  d is not a combination
  alpha^T J (``direct``: the reported weights are NaN).  Task-specific parameters get
  unweighted gradients.  Stateless.  The name is TorchJD's, which has no default; the default
  k = 1 is the least trimming that discards anything.

  Args:
    trim_number: k, the number of largest and of smallest values dropped per coordinate
      (an integer >= 0).

  Returns:
    The ``Weighting`` (direct, stateless).
  """
  if type(trim_number) is not int or trim_number < 0:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f'trimmed_mean: trim_number must be an integer >= 0, got '
                     f'{trim_number!r}')

  def check(num):
    if num < 2 * trim_number + 1:
      raise ValueError(f'trimmed_mean: trim_number={trim_number} needs at least '
                       f'{2 * trim_number + 1} tasks (2 * trim_number + 1), got {num}')

  def init(num_tasks):
    check(num_tasks)
    return ()

  def update(inputs, state, key):
    del key
    num = inputs.losses.shape[0]
    check(num)

    def trim(leaf):
      wide = jnp.result_type(jnp.float32, leaf.dtype)
      if trim_number > max(1, num // 4):            # much trimming: one sort is cheaper
        kept = jnp.sort(leaf, axis=0)[trim_number:num - trim_number]
        return jnp.mean(kept.astype(wide), axis=0).astype(leaf.dtype)
      return _masked_mean(leaf, trim_number).astype(leaf.dtype)

    direction = jax.tree.map(trim, inputs.jacobian)
    return WeightingResult(jnp.full((num,), jnp.nan, jnp.float32), state, direction=direction)

  return Weighting('trimmed_mean', Needs.JACOBIAN, init=init, update=update,
                   head_grads='unweighted', direct=True)
