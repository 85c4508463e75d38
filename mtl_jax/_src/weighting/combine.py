"""``combine``: apply a weighting method to a given stacked per-task gradient.

This is the contract for other JAX code: no trainer, no model, just

    state = method.init(T)                                 # once
    out = combine(method, jacobian, losses, state=state, key=key)
    direction, state = out.direction, out.state            # pass out.state back next call

with ``jacobian`` a ``[T, P]`` array or a task-stacked pytree.  Pure and jittable.  It runs
the same code as the train step (``apply.run_method``) and keeps its guarantees: a non-finite
loss or Jacobian entry leaves the method's state unchanged (``out.finite`` is False), a state
made for another number of tasks is an error, and a method with a post-update hook (FAMO)
needs an explicit ``after_step='manual'``.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting import apply
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.jacobian import num_tasks, weighted_sum

PyTree = Any


class Combined(NamedTuple):
  """``combine``'s result.

  Attributes:
    direction: d = alpha^T J, shaped like one row of the Jacobian; all NaN when ``finite`` is
      False, so that a non-finite check downstream (``optax.apply_if_finite``) skips it.
    weights: the per-task coefficients alpha [T].
    state: the method's new state; the input state (bitwise) when ``finite`` is False.
    finite: scalar bool: the losses, every Jacobian entry, alpha and d are finite.
  """
  direction: PyTree
  weights: jax.Array
  state: PyTree
  finite: jax.Array


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


def check_after_step(method: Weighting, mode, where: str, allowed) -> None:
  """Raises ``ValueError`` unless ``mode`` is in ``allowed`` (None or a string), and unless a
  method with an ``after_step`` (FAMO) gets an explicit non-None ``mode``."""
  if mode is not None and mode not in allowed:
    raise ValueError(f'{where} of weighting {method.name!r}: after_step must be one of '
                     f'{[None, *allowed]}, got {mode!r}')
  if mode is None and method.after_step is not None:
    hint = ("after_step='manual' and call mtl_jax.weighting.after_step(method, state, losses, "
            'losses_after) after each parameter update' if where != 'as_optax' else
            "after_step='manual' and call mtl_jax.weighting.optax_after_step(method, "
            "opt_state, losses_after) after each update, or after_step='next_batch'")
    raise ValueError(f'weighting {method.name!r} updates its state after the parameter step '
                     'from the losses recomputed on the same batch (Weighting.after_step); '
                     f'{where} cannot see the new parameters, so without it the method never '
                     f'adapts: pass {hint}')


def _shapes(tree):
  return jax.tree.map(lambda leaf: tuple(jnp.shape(leaf)), tree)


def check_state(method: Weighting, state, num: int, where: str):
  """``state``, or ``method.init(num)`` for a stateless method given None.

  Raises ``ValueError`` if a stateful method (``init`` has leaves) gets None, or if the
  state's structure or shapes differ from ``method.init(num)``'s."""
  expected = jax.eval_shape(lambda: method.init(num))
  if state is None:
    if jax.tree_util.tree_leaves(expected):
      raise ValueError(f'{where}: weighting {method.name!r} keeps state across updates; pass '
                       f'state=method.init({num}) on the first call and the returned state '
                       'afterwards (state=None would restart it at every call)')
    return method.init(num)
  if (jax.tree.structure(state) == jax.tree.structure(expected)
      and _shapes(state) == _shapes(expected)):
    return state
  made_for = sorted({jnp.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(state)
                     if jnp.ndim(leaf)} - {num})
  for other in made_for:
    try:
      guess = jax.eval_shape(lambda: method.init(other))  # pylint: disable=cell-var-from-loop
    except (ValueError, TypeError):
      continue
    if jax.tree.structure(state) == jax.tree.structure(guess) and _shapes(state) == _shapes(
        guess):
      raise ValueError(f'{where}: the state of weighting {method.name!r} was made for {other} '
                       f'tasks but there are {num}; pass state=method.init({num})')
  raise ValueError(f'{where}: the state of weighting {method.name!r} does not match '
                   f'method.init({num}) for {num} tasks: expected shapes {_shapes(expected)}, '
                   f'got {_shapes(state)}')


def combine(method: Weighting, jacobian, losses, *, state=None,
            key: Optional[jax.Array] = None, step=0, after_step: Optional[str] = None
            ) -> Combined:
  """The method's combined direction d = alpha^T J, weights alpha and new state.

  A non-finite loss or Jacobian entry (or non-finite alpha, d) gives ``finite=False``, the
  input state back unchanged, as the train step rejects such an update, and d filled with NaN,
  so that a non-finite check downstream (``optax.apply_if_finite``) skips it whatever caused it.

  Args:
    method: the weighting method.
    jacobian: a ``[T, P]`` array or a task-stacked pytree (every leaf ``[T, ...]``).
    losses: the ``[T]`` per-task losses.
    state: the method's state: ``method.init(T)`` on the first call, then the returned
      ``state``.  May be None only for a stateless method (``init`` has no leaves).
    key: a PRNG key; required if ``method.random`` (PCGrad, RLW), else may be omitted.
    step: the number of updates so far (methods that count steps read it).
    after_step: None, or 'manual' (required for a method with ``after_step``, i.e. FAMO):
      after updating the parameters, call ``mtl_jax.weighting.after_step(method, out.state,
      losses, losses_after)`` with the losses at the new parameters on the same batch (skip
      it, or pass non-finite losses, when ``out.finite`` is False).

  Returns:
    ``Combined(direction, weights, state, finite)``.

  Raises:
    ValueError: if the shapes disagree, there are too few tasks, the state is None for a
      stateful method or made for another number of tasks, a random method has no key, or a
      method with ``after_step`` gets ``after_step=None``.
  """
  check_key(method, key, 'combine')
  check_after_step(method, after_step, 'combine', ('manual',))
  losses = jnp.asarray(losses)
  jacobian = jax.tree.map(jnp.asarray, jacobian)    # NumPy input: methods index with tracers
  num = num_tasks(jacobian)
  check_num_tasks(method, num, losses.shape)
  state = check_state(method, state, num, 'combine')
  weights, new_state, _, _ = apply.run_method(method, losses, step, jacobian, state, key, num)
  direction = weighted_sum(jacobian, weights)
  finite = apply.all_finite(losses, jacobian, weights, direction)
  direction = jax.tree.map(lambda leaf: jnp.where(finite, leaf, jnp.nan), direction)
  return Combined(direction, weights, apply.keep_if(finite, new_state, state), finite)
