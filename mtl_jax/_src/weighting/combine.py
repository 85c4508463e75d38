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
  """Raises ``ValueError`` unless there are ``num`` >= ``method.min_tasks`` losses."""
  if tuple(losses_shape) != (num,):
    raise ValueError(f'weighting {method.name!r}: the Jacobian has {num} task rows but the '
                     f'losses have shape {tuple(losses_shape)}')
  if num < method.min_tasks:
    raise ValueError(f'weighting {method.name!r} needs at least {method.min_tasks} tasks, '
                     f'got {num}')


def check_key(method: Weighting, key: Optional[jax.Array], where: str) -> None:
  """Raises ``ValueError`` if ``method`` is random and ``key`` is None."""
  if method.random and key is None:
    raise ValueError(f'weighting {method.name!r} is random: {where} needs a PRNG key '
                     '(key=jax.random.PRNGKey(...))')


def combine(method: Weighting, jacobian, losses, *, state=None,
            key: Optional[jax.Array] = None, step=0):
  """The method's combined direction, weights and new state for one task-stacked gradient.

  Args:
    method: the weighting method.
    jacobian: a ``[T, P]`` array or a task-stacked pytree (every leaf ``[T, ...]``).
    losses: the ``[T]`` per-task losses.
    state: the method's state; defaults to ``method.init(T)``.
    key: a PRNG key; required if ``method.random`` (PCGrad, RLW), else may be omitted.
    step: the number of updates so far.

  Returns:
    ``(direction, weights, new_state)``: ``direction = alpha^T J`` is shaped like one row of
    ``jacobian``, ``weights`` are the per-task coefficients alpha [T].

  Raises:
    ValueError: if the shapes disagree, there are too few tasks, or a random method has no
      key.
  """
  check_key(method, key, 'combine')
  losses = jnp.asarray(losses)
  jacobian = jax.tree.map(jnp.asarray, jacobian)    # NumPy input: methods index with tracers
  num = num_tasks(jacobian)
  check_num_tasks(method, num, losses.shape)
  if state is None:
    state = method.init(num)
  needs_grads = method.needs in (Needs.GRAM, Needs.JACOBIAN)
  inputs = WeightingInputs(
      losses=jax.lax.stop_gradient(losses), step=jnp.asarray(step, jnp.int32),
      gram=gram(jacobian) if needs_grads else None,
      jacobian=jacobian if method.needs is Needs.JACOBIAN else None)
  result = method.update(inputs, state, key)
  weights = jax.lax.stop_gradient(result.weights)
  return weighted_sum(jacobian, weights), weights, result.state
