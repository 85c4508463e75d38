"""EW: equal weighting, the plain sum (or mean) of the task losses."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('ew')
def ew(reduction: str = 'sum') -> Weighting:
  """Equal weighting: L = sum_t alpha_t L_t with alpha_t = 1 ('sum') or 1/T ('mean').

  The unitary scalarisation baseline; Kurin, De Palma, Kostrikov, Whiteson and Kumar (2022),
  "In Defense of the Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022, show
  that it is hard to beat.  Needs loss values only: a step costs one ordinary backward pass.

  Args:
    reduction: 'sum' (alpha_t = 1, the library convention that the other methods' ``match_sum``
      refers to) or 'mean' (alpha_t = 1/T).

  Returns:
    The ``Weighting``.
  """
  checks.choice('ew', 'reduction', reduction, ('sum', 'mean'))

  def update(inputs, state, key):
    del key
    num = inputs.losses.shape[0]
    value = 1.0 if reduction == 'sum' else 1.0 / num
    return WeightingResult(jnp.full((num,), value, inputs.losses.dtype), state)

  return Weighting('ew', Needs.LOSSES, init=lambda num_tasks: (), update=update)
