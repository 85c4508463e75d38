"""A weighting method as an ``optax.GradientTransformationExtraArgs``.

The transformation takes *task-stacked* updates (every leaf [T, ...], e.g. from
``jax.jacrev`` of a loss vector) and returns the combined update d = ``combine(...)``, so it
chains in front of any optimizer:

    tx = optax.chain(as_optax(weighting.get('upgrad'), num_tasks=3), optax.adam(1e-3))
    updates, state = tx.update(per_task_grads, state, params, losses=losses)
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.combine import check_key, combine


class WeightingState(NamedTuple):
  method_state: object
  key: jax.Array
  count: jax.Array
  weights: jax.Array  # the last coefficients, for logging


def as_optax(method: Weighting, num_tasks: int,
             key: Optional[jax.Array] = None) -> optax.GradientTransformationExtraArgs:
  """``method`` over task-stacked updates; ``update`` needs the keyword argument ``losses``.

  Args:
    method: the weighting method.
    num_tasks: T, the leading axis of every update leaf.
    key: the first PRNG key (split at every update); required if ``method.random``, else
      defaults to ``PRNGKey(0)``.

  Raises:
    ValueError: if ``num_tasks < method.min_tasks`` or a random method has no key.
  """
  if num_tasks < method.min_tasks:
    raise ValueError(f'weighting {method.name!r} needs at least {method.min_tasks} tasks, '
                     f'got {num_tasks}')
  check_key(method, key, 'as_optax')

  def init_fn(params):
    del params
    return WeightingState(method.init(num_tasks),
                          jax.random.PRNGKey(0) if key is None else key,
                          jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,), jnp.float32))

  def update_fn(updates, state, params=None, *, losses, **extra_args):
    del params, extra_args
    step_key, next_key = jax.random.split(state.key)
    direction, weights, method_state = combine(method, updates, losses, state=state.method_state,
                                               key=step_key, step=state.count)
    return direction, WeightingState(method_state, next_key, state.count + 1,
                                     weights.astype(jnp.float32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
