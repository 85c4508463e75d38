"""A weighting method as an ``optax.GradientTransformationExtraArgs``.

The transformation takes *task-stacked* updates (every leaf [T, ...], e.g. from
``jax.jacrev`` of a loss vector) and returns the combined update d = ``combine(...).direction``,
so it chains in front of any optimizer; put ``optax.apply_if_finite`` around the optimizer
after it, so that a non-finite update (d is then NaN) is skipped, as the train step does:

    tx = optax.chain(as_optax(weighting.get('upgrad'), num_tasks=3),
                     optax.apply_if_finite(optax.adam(1e-3), max_consecutive_errors=10))
    updates, state = tx.update(per_task_grads, state, params, losses=losses)

A method with a post-update hook (FAMO) needs ``after_step='manual'`` (then call
``optax_after_step`` after each update) or ``after_step='next_batch'``.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src.weighting import apply
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.combine import check_after_step, check_key, check_state, combine
from mtl_jax._src.weighting.jacobian import num_tasks as task_rows

AFTER_STEP_MODES = ('manual', 'next_batch')


class WeightingState(NamedTuple):
  """``as_optax``'s state.

  Attributes:
    method_state: the method's state (unchanged by a non-finite update).
    key: the PRNG key of the next update.
    count: the number of finite updates (the ``step`` the method sees).
    weights: the last update's coefficients alpha [T] (float32), for logging.
    losses: the last update's losses [T] (float32), the ``losses_before`` of its pending
      ``after_step``; NaN before the first update, after a non-finite one and once consumed.
    num_nonfinite: the number of non-finite updates.
  """
  method_state: object
  key: jax.Array
  count: jax.Array
  weights: jax.Array
  losses: jax.Array
  num_nonfinite: jax.Array


def as_optax(method: Weighting, num_tasks: int, key: Optional[jax.Array] = None, *,
             after_step: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """``method`` over task-stacked updates; ``update`` needs the keyword argument ``losses``.

  ``update(updates, state, params, losses=L)`` returns d = alpha^T J (``combine``).  If L or
  an update entry is non-finite, d is all NaN and the method state is kept (``num_nonfinite``
  counts it): wrap the optimizer after it in ``optax.apply_if_finite`` to skip the step (not
  the whole chain: that checks the task-stacked gradients only, not the losses).

  Args:
    method: the weighting method.
    num_tasks: T, the leading axis of every update leaf and the length of ``losses``.
    key: the first PRNG key (split at every update); required if ``method.random``, else
      defaults to ``PRNGKey(0)``.
    after_step: for a method with ``after_step`` (FAMO) 'manual' or 'next_batch' (None
      raises); for any other method every choice does the same.  'manual': after applying
      the updates, call ``opt_state = optax_after_step(method, opt_state, losses_after)``
      with the losses at the new params on the same batch; exact, as the train step.
      'next_batch': the adapter runs ``after_step`` at the start of the next update, with
      the previous update's losses as before and this update's (new params, next batch) as
      after; no extra forward pass, exact for a deterministic (full-batch)
      objective (then the method state lags one ``after_step`` behind 'manual', the weights
      and updates are the same), an approximation for minibatches.

  Raises:
    ValueError: if ``num_tasks < method.min_tasks``, a random method has no key,
      ``after_step`` is missing or unknown; at trace time, if the updates do not have T task
      rows or the losses are not [T].
  """
  if method.bilevel:
    raise ValueError(f'weighting {method.name!r} is bilevel: it steps the parameters on the '
                     "batch's loss function, which as_optax does not see: use the train step "
                     'or mtl_value_and_grad')
  if method.sub_batches > 1:
    raise ValueError(f'weighting {method.name!r} reads the gradients of {method.sub_batches} '
                     'sub-batches per update; as_optax sees one task-stacked update: use '
                     'combine with the k * T rows, or the train step')
  if type(num_tasks) is not int or num_tasks < method.min_tasks:
    raise ValueError(f'weighting {method.name!r} needs at least {method.min_tasks} tasks, '
                     f'got num_tasks={num_tasks!r}')
  check_key(method, key, 'as_optax')
  check_after_step(method, after_step, 'as_optax', AFTER_STEP_MODES)
  where = f'as_optax(weighting {method.name!r}, num_tasks={num_tasks})'

  def init_fn(params):
    nan = jnp.full((num_tasks,), jnp.nan, jnp.float32)
    method_state = apply.init_state(method, num_tasks, params)
    return WeightingState(method_state, jax.random.PRNGKey(0) if key is None else key,
                          jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,), jnp.float32), nan,
                          jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, *, losses, **extra_args):
    del params, extra_args
    losses = jnp.asarray(losses)
    rows = task_rows(updates)
    if rows != num_tasks or losses.shape != (num_tasks,):
      raise ValueError(f'{where}: got updates with {rows} task rows and losses of shape '
                       f'{losses.shape}, expected {num_tasks} and ({num_tasks},)')
    row = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), updates)
    method_state = check_state(method, state.method_state, num_tasks, where, row)
    if after_step == 'next_batch':
      method_state = apply.after_step(method, method_state, state.losses, losses)
    step_key, next_key = jax.random.split(state.key)
    out = combine(method, updates, losses, state=method_state, key=step_key, step=state.count,
                  after_step='manual')
    nonfinite = (~out.finite).astype(jnp.int32)
    stored = jnp.where(out.finite, losses.astype(jnp.float32), jnp.nan)
    return out.direction, WeightingState(out.state, next_key, state.count + 1 - nonfinite,
                                         out.weights.astype(jnp.float32), stored,
                                         state.num_nonfinite + nonfinite)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def optax_after_step(method: Weighting, opt_state, losses_after) -> optax.OptState:
  """Runs ``method``'s ``after_step`` on the ``as_optax`` state inside ``opt_state``.

  For ``as_optax(method, T, after_step='manual')``: after applying an update computed on batch
  B, ``opt_state = optax_after_step(method, opt_state, losses_fn(new_params, B))``.  The
  losses stored at that update are ``losses_before``, so this is exactly the train step's
  ``after_step``.  They are then marked consumed (NaN): calling it twice, after a non-finite
  update, or before any update does nothing.  Jittable; a no-op for a method without one.

  Args:
    method: the method given to ``as_optax``.
    opt_state: a state holding exactly one ``WeightingState`` (the chain's, any nesting).
    losses_after: the ``[T]`` losses at the updated parameters, on the same batch.

  Returns:
    ``opt_state`` with that ``WeightingState``'s method state stepped.

  Raises:
    ValueError: if ``opt_state`` holds no or several ``WeightingState``, or the losses or
      the method state do not fit.
  """
  is_ours = lambda node: isinstance(node, WeightingState)
  found = [n for n in jax.tree_util.tree_leaves(opt_state, is_leaf=is_ours) if is_ours(n)]
  if len(found) != 1:
    raise ValueError(f'optax_after_step of weighting {method.name!r}: opt_state must hold '
                     f'exactly one as_optax WeightingState, found {len(found)}')
  after = jnp.asarray(losses_after)
  num = found[0].losses.shape[0]
  if after.shape != (num,):
    raise ValueError(f'optax_after_step of weighting {method.name!r}: losses_after must have '
                     f'shape ({num},), got {after.shape}')

  def step(node):
    if not is_ours(node):
      return node
    method_state = check_state(method, node.method_state, num, 'optax_after_step')
    method_state = apply.after_step(method, method_state, node.losses, after)
    return node._replace(method_state=method_state, losses=jnp.full_like(node.losses, jnp.nan))

  return jax.tree.map(step, opt_state, is_leaf=is_ours)
