"""Static weighting: fixed user-given weights."""

from typing import Optional

import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('static')
def static(weights: Optional[tuple] = None) -> Weighting:
  """Static (fixed linear) scalarisation: L = sum_t w_t L_t, alpha = w as given.

  The classical weighted sum of task losses; Caruana (1997), "Multitask Learning", Machine
  Learning 28(1).  The weights are used as given (no renormalisation).  Needs loss values
  only: a step costs one ordinary backward pass.

  Args:
    weights: one finite weight >= 0 per task (a sequence of length T), or None for w_t = 1
      for every task (then equal to ``ew()``).

  Returns:
    The ``Weighting``; its ``init(T)`` raises if ``weights`` does not have T entries.
  """
  w = None
  if weights is not None:
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 1 or w.size == 0:
      raise ValueError(f'static: weights must be a non-empty vector, got shape {w.shape}')
    if not np.all(np.isfinite(w)) or np.any(w < 0):
      raise ValueError(f'static: weights must be finite and >= 0, got {w.tolist()}')

  def init(num_tasks):
    if w is not None and num_tasks != w.size:
      raise ValueError(f'static: {w.size} weights given for {num_tasks} tasks')
    return ()

  def update(inputs, state, key):
    del key
    losses = inputs.losses
    if w is None:
      return WeightingResult(jnp.ones(losses.shape, losses.dtype), state)
    if losses.shape != w.shape:
      raise ValueError(f'static: {w.size} weights for losses of shape {losses.shape}')
    return WeightingResult(jnp.asarray(w, losses.dtype), state)

  return Weighting('static', Needs.LOSSES, init=init, update=update)
