"""IMTL-G: impartial multi-task learning, gradient part."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('imtl_g')
def imtl_g(match_sum: bool = True) -> Weighting:
  """IMTL-G: the direction with equal projections on every unit gradient g_t / ||g_t||.

  Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang (2021), "Towards Impartial Multi-task
  Learning", ICLR 2021.

  In Gram form: alpha proportional to G^+ sqrt(diag G) (G^+ the pseudo-inverse), normalised
  to sum_t alpha_t = 1 (alpha = 0 if that sum vanishes to rounding: |sum_t a_t| <=
  T eps sum_t |a_t|, a = G^+ sqrt(diag G), eps that of G's dtype), x T under ``match_sum``.  Then
  u_t . d is the same for every t.  Task-specific parameters get unweighted gradients.

  Args:
    match_sum: multiply alpha by T to compare with the sum of losses; False gives
      sum_t alpha_t = 1, as in the paper.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """

  def update(inputs, state, key):
    del key
    g = inputs.gram
    raw = jnp.linalg.pinv(g, hermitian=True) @ jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    total = raw.sum()
    vanishes = jnp.abs(total) <= g.shape[0] * jnp.finfo(g.dtype).eps * jnp.sum(jnp.abs(raw))
    alpha = jnp.where(vanishes, 0, raw / jnp.where(vanishes, 1, total))
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('imtl_g', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
