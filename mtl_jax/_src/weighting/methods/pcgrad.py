"""PCGrad: projecting conflicting gradients."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def pcgrad_orders(key: jax.Array, num_tasks: int) -> jax.Array:
  """For each task i, a random order of the tasks it is projected against ([T, T])."""
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
      jax.random.split(key, num_tasks))


@registry.WEIGHTINGS.register('pcgrad')
def pcgrad(reduction: str = 'sum') -> Weighting:
  """PCGrad ("gradient surgery"), in Gram form.

  Yu, Kumar, Gupta, Levine, Hausman and Finn (2020), "Gradient Surgery for Multi-Task
  Learning", NeurIPS 2020.

  For each task i, g_i^PC starts at g_i; for every j != i, in a random order: if
  g_i^PC . g_j < 0, g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 g_j (projection onto the normal plane
  of the original g_j).  d = sum_i g_i^PC ('sum') or its mean ('mean').  Each g_i^PC = J^T c_i
  is tracked by its coefficients c_i (from c_i = e_i, c_i -= (G c_i)_j / G_jj e_j), so
  alpha = sum_i c_i.  The orders (``pcgrad_orders``) are drawn from the update's PRNG key: the
  method is ``random``.  Task-specific parameters get unweighted gradients.

  Args:
    reduction: 'sum' (the paper) or 'mean' of the projected gradients.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  checks.choice('pcgrad', 'reduction', reduction, ('sum', 'mean'))

  def update(inputs, state, key):
    g = inputs.gram
    num = g.shape[0]
    orders = pcgrad_orders(key, num)

    def project(i, order):
      def body(k, c):
        j = order[k]
        dot = g[j] @ c
        # dot < 0 implies g_j != 0, so G_jj > 0: the exact ratio, in G's dtype
        step = jnp.where((j != i) & (dot < 0), dot / jnp.where(g[j, j] > 0, g[j, j], 1), 0)
        return c.at[j].add(-step)
      return jax.lax.fori_loop(0, num, body, jax.nn.one_hot(i, num, dtype=g.dtype))

    alpha = jax.vmap(project)(jnp.arange(num), orders).sum(0)
    return WeightingResult(alpha / num if reduction == 'mean' else alpha, state)

  return Weighting('pcgrad', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2, random=True)
