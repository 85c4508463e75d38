"""RLW: random loss weighting."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('rlw')
def rlw(match_sum: bool = True) -> Weighting:
  """Random loss weighting: alpha = softmax(xi), xi ~ N(0, I_T), drawn at every update.

  Lin, Ye, Zhang and Tsang (2022), "Reasonable Effectiveness of Random Weighting: A Litmus
  Test for Multi-Task Learning", Transactions on Machine Learning Research (TMLR).

  xi is drawn from the update's PRNG key, so the method is ``random`` (a key is required).

  Args:
    match_sum: multiply alpha by T, so that E[alpha_t] = 1 and the weights compare with the
      sum of losses (``ew``); False keeps sum_t alpha_t = 1, as in the authors' code.

  Returns:
    The ``Weighting`` (stateless).
  """
  match_sum = checks.check_bool('rlw', 'match_sum', match_sum)

  def update(inputs, state, key):
    num = inputs.losses.shape[0]
    weights = jax.nn.softmax(jax.random.normal(key, (num,), jnp.float32))
    return WeightingResult(checks.match_sum(weights, match_sum), state)

  return Weighting('rlw', Needs.LOSSES, init=lambda num_tasks: (), update=update, random=True)
