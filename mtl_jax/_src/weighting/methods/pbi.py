"""PBI: penalty-based boundary intersection scalarisation."""

from typing import Optional

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.methods.cosmos import check_preference, preference
from mtl_jax._src.weighting.methods.stch import check_length, check_vector

_SQRT_EPS = 1e-12  # added under the square root of d2, as in TorchJD's PBI


@registry.WEIGHTINGS.register('pbi')
def pbi(theta: float = 5.0, weights: Optional[tuple] = None,
        ideal_point: Optional[tuple] = None, concentration: Optional[float] = None) -> Weighting:
  """Penalty-based boundary intersection: distance along a preference ray plus a penalty on
  the distance to it.

  Zhang and Li (2007), "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
  Decomposition", IEEE Transactions on Evolutionary Computation 11(6).

  With f = L - z* (z* the ideal point), unit preference direction w^ = w / |w|,

      d1 = f . w^,   d2 = sqrt(|f - d1 w^|^2 + 1e-12),   S = d1 + theta d2,

  so alpha = dS/dL = w^ + theta (f - d1 w^) / d2.  The 1e-12 (TorchJD's) keeps alpha finite
  when f lies on the preference ray (d2 = 0; always so for one task) and shifts S by at most
  about 1e-6 there.

  The preference: ``weights`` as given, or 1/T each (None, the default); or, with
  ``concentration`` c, one drawn at every update from Dirichlet(c 1_T) with the update's PRNG
  key (the method is then ``random``), the re-sampling TorchJD's ``PBI`` documents (c = 1)
  for covering the Pareto front with a preference-conditioned model; MOEA/D itself uses a
  fixed set of weight vectors, one per subproblem.  theta = 5 is the paper's setting
  (TorchJD's ``PBI(theta, weights, ...)`` has no defaults).  TorchJD's third argument, the
  ideal point z*, is ``ideal_point`` here.  ``aux['objective']`` is S.

  Args:
    theta: penalty coefficient of the perpendicular distance d2 (>= 0; 0 is the projection
      d1 alone).
    weights: preference w, one finite value >= 0 per task (not all 0), or None for 1/T each
      (or a drawn one, see ``concentration``).
    ideal_point: z*, one finite value per task (a lower bound of the losses), or None for the
      origin (losses assumed >= 0).
    concentration: None (no drawing), or c > 0 to draw w from Dirichlet(c 1_T) at every
      update (1 is uniform on the simplex); not together with ``weights``.

  Returns:
    The ``Weighting`` (stateless; ``random`` when ``concentration`` is set).
  """
  theta = checks.check_finite('pbi', 'theta', theta, minimum=0.0)
  pref, concentration = check_preference('pbi', weights, concentration)
  ideal = check_vector('pbi', 'ideal_point', ideal_point, nonneg=False)

  def init(num_tasks):
    check_length('pbi', 'weights', pref, num_tasks)
    check_length('pbi', 'ideal_point', ideal, num_tasks)
    return ()

  def update(inputs, state, key):
    losses = inputs.losses.astype(jnp.float32)
    num = losses.shape[0]
    check_length('pbi', 'ideal_point', ideal, num)
    w = preference('pbi', pref, concentration, num, key)
    direction = w / jnp.maximum(jnp.linalg.norm(w), 1e-30)
    f = losses if ideal is None else losses - ideal
    d1 = jnp.dot(f, direction)
    perpendicular = f - d1 * direction
    d2 = jnp.sqrt(jnp.dot(perpendicular, perpendicular) + _SQRT_EPS)
    weights_out = direction + theta * perpendicular / d2
    return WeightingResult(weights_out, state, aux={'objective': d1 + theta * d2})

  return Weighting('pbi', Needs.LOSSES, init=init, update=update,
                   random=concentration is not None)
