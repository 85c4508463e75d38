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


def check_num_tasks(method: Weighting, num: int, losses_shape) -> int:
  """The number of tasks T of ``num`` rows (k * T for a method reading k sub-batches).

  Raises ``ValueError`` unless there are ``num`` losses, a multiple of k, and T >=
  ``method.min_tasks``."""
  if tuple(losses_shape) != (num,):
    raise ValueError(f'weighting {method.name!r}: the Jacobian has {num} task rows but the '
                     f'losses have shape {tuple(losses_shape)}')
  k = method.sub_batches
  if num % k:
    raise ValueError(f'weighting {method.name!r} reads {k} sub-batches: pass k * T rows '
                     f'(row b * T + t: task t on sub-batch b), got {num} rows')
  if num // k < method.min_tasks:
    raise ValueError(f'weighting {method.name!r} needs at least {method.min_tasks} tasks, '
                     f'got {num // k}')
  return num // k


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


def check_state(method: Weighting, state, num: int, where: str, shared=None):
  """``state``, or ``method.init(num)`` for a stateless method given None.

  ``shared``: the shared parameters (or one task row of the Jacobian), for a method whose state
  is sized by them (``state_like_params``).  Raises ``ValueError`` if a stateful method
  (``init`` has leaves) gets None, or if the state's structure or shapes differ from
  ``method.init(num)``'s."""
  init = lambda n: apply.init_state(method, n, shared)
  call = f'method.init({num}{", shared" if method.state_like_params else ""})'
  if method.state_like_params and shared is None and state is not None:
    return state                     # no shapes to compare it with
  expected = jax.eval_shape(lambda: init(num))
  if state is None:
    if jax.tree_util.tree_leaves(expected):
      raise ValueError(f'{where}: weighting {method.name!r} keeps state across updates; pass '
                       f'state={call} on the first call and the returned state '
                       'afterwards (state=None would restart it at every call)')
    return init(num)
  if (jax.tree.structure(state) == jax.tree.structure(expected)
      and _shapes(state) == _shapes(expected)):
    return state
  made_for = sorted({jnp.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(state)
                     if jnp.ndim(leaf)} - {num})
  for other in made_for:
    try:
      guess = jax.eval_shape(lambda: init(other))  # pylint: disable=cell-var-from-loop
    except (ValueError, TypeError):
      continue
    if jax.tree.structure(state) == jax.tree.structure(guess) and _shapes(state) == _shapes(
        guess):
      raise ValueError(f'{where}: the state of weighting {method.name!r} was made for {other} '
                       f'tasks but there are {num}; pass state={call}')
  raise ValueError(f'{where}: the state of weighting {method.name!r} does not match '
                   f'{call} for {num} tasks: expected shapes {_shapes(expected)}, '
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
    jacobian: a ``[T, P]`` array or a task-stacked pytree (every leaf ``[T, ...]``); for a
      method reading k sub-batches (``sub_batches``), k * T rows, sub-batch major (row
      b * T + t: task t's gradient on sub-batch b), and k * T losses.
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
  tasks = check_num_tasks(method, num, losses.shape)
  row = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), jacobian)
  state = check_state(method, state, tasks, 'combine', row)
  weights, new_state, _, _, direction = apply.run_method(method, losses, step, jacobian, state,
                                                         key, num)
  direction = weighted_sum(jacobian, weights) if direction is None else direction
  # A direct method's weights are only reported (NaN where it has none).
  finite = apply.all_finite(losses, jacobian, direction, () if method.direct else weights)
  direction = jax.tree.map(lambda leaf: jnp.where(finite, leaf, jnp.nan), direction)
  return Combined(direction, weights, apply.keep_if(finite, new_state, state), finite)
