"""``combine``: apply a weighting method to a given stacked per-task gradient.

This is the contract for other JAX code: no trainer, no model, just

    direction, weights, state = combine(method, jacobian, losses, state=state, key=key)

with ``jacobian`` a ``[T, P]`` array or a task-stacked pytree.  Pure and jittable.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting.base import Needs, Weighting, WeightingInputs
from mtl_jax._src.weighting.jacobian import gram, num_tasks, weighted_sum


def check_num_tasks(method: Weighting, num: int, losses_shape) -> None:
  if tuple(losses_shape) != (num,):
    raise ValueError(f'weighting {method.name!r}: the Jacobian has {num} task rows but the '
                     f'losses have shape {tuple(losses_shape)}')
  if num < method.min_tasks:
    raise ValueError(f'weighting {method.name!r} needs at least {method.min_tasks} tasks, '
                     f'got {num}')


def combine(method: Weighting, jacobian, losses, *, state=None,
            key: Optional[jax.Array] = None, step=0):
  """Returns ``(direction, weights, new_state)``.

  ``direction`` is the combined update direction (shaped like one row of ``jacobian``),
  ``weights`` the per-task coefficients alpha (``direction = alpha^T J`` for every method that
  is linear in the gradients, NaN otherwise).  ``state`` defaults to ``method.init(T)`` and
  ``key`` to ``PRNGKey(0)``.
  """
  losses = jnp.asarray(losses)
  num = num_tasks(jacobian)
  check_num_tasks(method, num, losses.shape)
  if state is None:
    state = method.init(num)
  if key is None:
    key = jax.random.PRNGKey(0)
  needs_grads = method.needs in (Needs.GRAM, Needs.JACOBIAN)
  inputs = WeightingInputs(
      losses=jax.lax.stop_gradient(losses), step=jnp.asarray(step, jnp.int32),
      gram=gram(jacobian) if needs_grads else None,
      jacobian=jacobian if method.needs is Needs.JACOBIAN else None)
  result = method.update(inputs, state, key)
  weights = jax.lax.stop_gradient(result.weights)
  direction = result.direction if result.direction is not None else weighted_sum(jacobian,
                                                                                 weights)
  return direction, weights, result.state
