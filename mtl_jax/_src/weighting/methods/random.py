"""Random: TorchJD's random weighting (RLW with weights summing to 1)."""

import dataclasses

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.methods.rlw import rlw


@registry.WEIGHTINGS.register('random')
def random(match_sum: bool = False) -> Weighting:
  """Random weights at every update: alpha = softmax(xi), xi ~ N(0, I_T), sum_t alpha_t = 1.

  Lin, Ye, Zhang and Tsang (2022), "Reasonable Effectiveness of Random Weighting: A Litmus
  Test for Multi-Task Learning", Transactions on Machine Learning Research (TMLR),
  Algorithm 2.

  TorchJD's ``Random`` (the scalarizer and the aggregator's ``RandomWeighting``): positive
  weights, the softmax of a standard normal vector, drawn from the update's PRNG key (the
  method is ``random``).  This is ``rlw`` with TorchJD's normalisation as the default: the
  same draw for the same key, weights summing to 1 (``rlw`` defaults to a sum of T).

  Args:
    match_sum: multiply alpha by T (then identical to ``rlw()``); False, the default, keeps
      sum_t alpha_t = 1, as TorchJD.

  Returns:
    The ``Weighting`` (stateless).
  """
  match_sum = checks.check_bool('random', 'match_sum', match_sum)
  return dataclasses.replace(rlw(match_sum=match_sum), name='random')
