"""Fixed linear scalarisation: L = sum_t w_t L_t.

* ``ew``: equal weights, w = 1 (``reduction='sum'``, the library convention) or
  w = 1/T (``reduction='mean'``).
* ``static``: user weights w, used as given (no renormalisation).

Both need loss values only, so a step costs one ordinary backward pass.
"""

import jax.numpy as jnp
import numpy as np

from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def ew(reduction: str = 'sum') -> Weighting:
  """Equal weighting: alpha_t = 1 (sum) or 1/T (mean)."""
  if reduction not in ('sum', 'mean'):
    raise ValueError(f"ew: reduction must be 'sum' or 'mean', got {reduction!r}")

  def update(inputs, state, key):
    del key
    num = inputs.losses.shape[0]
    value = 1.0 if reduction == 'sum' else 1.0 / num
    return WeightingResult(jnp.full((num,), value, inputs.losses.dtype), state)

  return Weighting('ew', Needs.LOSSES, init=lambda num_tasks: (), update=update)


def static(weights) -> Weighting:
  """Static weights: alpha = w, as given."""
  w = np.asarray(weights, dtype=np.float32)
  if w.ndim != 1 or w.size == 0:
    raise ValueError(f'static: weights must be a non-empty vector, got shape {w.shape}')
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError(f'static: weights must be finite and >= 0, got {w.tolist()}')

  def init(num_tasks):
    if num_tasks != w.size:
      raise ValueError(f'static: {w.size} weights given for {num_tasks} tasks')
    return ()

  def update(inputs, state, key):
    del key
    if inputs.losses.shape != w.shape:
      raise ValueError(f'static: {w.size} weights for losses of shape {inputs.losses.shape}')
    return WeightingResult(jnp.asarray(w, inputs.losses.dtype), state)

  return Weighting('static', Needs.LOSSES, init=init, update=update)
