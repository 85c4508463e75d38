"""COSMOS: linear scalarisation with a cosine-similarity penalty towards a preference."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.methods.stch import check_length, check_vector

_NORM_EPS = 1e-8  # norms in the cosine are clamped to this, as in torch's cosine_similarity


def check_preference(method: str, weights, concentration):
  """The checked ``(weights, concentration)``: a given preference is finite, >= 0, with a
  positive entry; a concentration is > 0; not both."""
  pref = check_vector(method, 'weights', weights, nonneg=True)
  if pref is not None and not np.any(pref > 0):
    raise ValueError(f'{method}: weights must have a positive entry, got {pref.tolist()}')
  if concentration is not None:
    concentration = checks.check_finite(method, 'concentration', concentration, minimum=0.0,
                                        strict=True)
    if pref is not None:
      raise ValueError(f'{method}: give weights (a fixed preference) or concentration (one '
                       'drawn at every update), not both')
  return pref, concentration


def preference(method: str, pref: Optional[np.ndarray], concentration: Optional[float],
               num: int, key):
  """The given preference; else one drawn from Dirichlet(concentration 1_T) with ``key`` if
  ``concentration`` is set; else 1/T each."""
  if pref is not None:
    check_length(method, 'weights', pref, num)
    return jnp.asarray(pref)
  if concentration is not None:
    return jax.random.dirichlet(key, jnp.full((num,), concentration, jnp.float32),
                                dtype=jnp.float32)
  return jnp.full((num,), 1.0 / num, jnp.float32)


@registry.WEIGHTINGS.register('cosmos')
def cosmos(lambda_: float = 2.0, weights: Optional[tuple] = None,
           concentration: Optional[float] = None) -> Weighting:
  """COSMOS scalarisation: preference-weighted sum minus a cosine-similarity bonus.

  Ruchte and Grabocka (2021), "Scalable Pareto Front Approximation for Deep Multi-Objective
  Learning", ICDM 2021.

  With preference r (``weights``) and penalty lambda,

      S(L) = r . L - lambda cos(r, L),   cos(r, L) = r . L / (max(|r|, eps) max(|L|, eps)),

  eps = 1e-8 (torch's ``cosine_similarity``, which TorchJD's ``COSMOS`` uses), so
  alpha = dS/dL = r - lambda (r / (|r|_e |L|_e) - [|L| > eps] (r . L) L / (|r|_e |L|^3)),
  |x|_e = max(|x|, eps).  The cosine term pulls the loss vector towards the preference ray.
  With all losses 0 (|L| <= eps) the norm is clamped and alpha = r - lambda r / (|r|_e eps),
  large but finite, as in torch.

  The preference: ``weights`` as given, or 1/T each (None, the default); or, with
  ``concentration`` c, one drawn at every update from Dirichlet(c 1_T) with the update's PRNG
  key (the method is then ``random``), as the paper trains (its authors' code: c = 1.2).  The
  paper also feeds r to the model as an input, so that one model covers the Pareto front:
  that is the model's business, not the weighting's; without it a drawn preference only
  randomises the scalarisation.  lambda = 2 is the authors' code's default (its Multi-MNIST
  setting); TorchJD's ``COSMOS(lambda_, weights)`` has no defaults and leaves the drawing to
  the user.  ``aux``: ``objective`` S and ``cosine`` cos(r, L).

  Args:
    lambda_: cosine-similarity penalty coefficient lambda (>= 0; 0 is linear scalarisation).
    weights: preference r, one finite value >= 0 per task (not all 0), or None for 1/T each
      (or a drawn one, see ``concentration``).
    concentration: None (no drawing), or c > 0 to draw r from Dirichlet(c 1_T) at every
      update (1 is uniform on the simplex, smaller spreads the draws towards its corners);
      not together with ``weights``.

  Returns:
    The ``Weighting`` (stateless; ``random`` when ``concentration`` is set).
  """
  lambda_ = checks.check_finite('cosmos', 'lambda_', lambda_, minimum=0.0)
  pref, concentration = check_preference('cosmos', weights, concentration)

  def init(num_tasks):
    check_length('cosmos', 'weights', pref, num_tasks)
    return ()

  def update(inputs, state, key):
    losses = inputs.losses.astype(jnp.float32)
    r = preference('cosmos', pref, concentration, losses.shape[0], key)
    norm_r = jnp.maximum(jnp.linalg.norm(r), _NORM_EPS)
    norm_l = jnp.linalg.norm(losses)
    clamped_l = jnp.maximum(norm_l, _NORM_EPS)
    dot = jnp.dot(r, losses)
    cosine = dot / (norm_r * clamped_l)
    radial = jnp.where(norm_l > _NORM_EPS, dot / (norm_r * clamped_l**3), 0.0) * losses
    weights_out = r - lambda_ * (r / (norm_r * clamped_l) - radial)
    return WeightingResult(weights_out, state,
                           aux={'objective': dot - lambda_ * cosine, 'cosine': cosine})

  return Weighting('cosmos', Needs.LOSSES, init=init, update=update,
                   random=concentration is not None)
