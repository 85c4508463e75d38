"""SI: the scale-invariant baseline, sum_t log L_t."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('si')
def si(eps: float = 1e-8) -> Weighting:
  """Scale-invariant loss: the objective S = sum_t log L_t.

  The scale-invariant baseline of Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and
  Fetaya (2022), "Multi-Task Learning as a Bargaining Game", ICML 2022.  Multiplying a task's
  loss by c > 0 only adds log c to S, so its gradient is unchanged.

  alpha_t = dS/dL_t = 1 / max(L_t, eps): d = sum_t g_t / L_t.  ``aux['objective']`` is S.

  Args:
    eps: floor of the losses (> 0), so that a zero loss gives a finite weight.

  Returns:
    The ``Weighting`` (stateless).
  """
  eps = checks.check_finite('si', 'eps', eps, minimum=0.0, strict=True)

  def update(inputs, state, key):
    del key
    losses = jnp.maximum(inputs.losses.astype(jnp.float32), eps)
    return WeightingResult(1.0 / losses, state, aux={'objective': jnp.sum(jnp.log(losses))})

  return Weighting('si', Needs.LOSSES, init=lambda num_tasks: (), update=update)
