"""GLS: geometric loss strategy."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('gls')
def gls(eps: float = 1e-8) -> Weighting:
  """Geometric loss strategy: the objective is the geometric mean S = (prod_t L_t)^{1/T}.

  Chennupati, Sistu, Yogamani and Rawashdeh (2019), "MultiNet++: Multi-Stream Feature
  Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

  alpha_t = dS/dL_t = S / (T L_t) = exp(mean_i log L_i - log L_t) / T, computed in log space
  with the losses floored at ``eps``.  ``aux['objective']`` is S.

  Args:
    eps: floor of the losses (> 0), so that zero losses give finite weights.

  Returns:
    The ``Weighting`` (stateless).
  """
  eps = checks.check_finite('gls', 'eps', eps, minimum=0.0, strict=True)

  def update(inputs, state, key):
    del key
    log_losses = jnp.log(jnp.maximum(inputs.losses.astype(jnp.float32), eps))
    mean_log = jnp.mean(log_losses)
    weights = jnp.exp(mean_log - log_losses) / log_losses.shape[0]
    return WeightingResult(weights, state, aux={'objective': jnp.exp(mean_log)})

  return Weighting('gls', Needs.LOSSES, init=lambda num_tasks: (), update=update)
