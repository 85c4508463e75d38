"""The one implementation of a weighting step, shared by the train step and the library path.

``run_method`` turns losses (and Jacobian rows) into coefficients alpha and a new state; the
engine (hence the train step), ``combine`` and ``as_optax`` all call it.  ``after_step`` is a
method's post-update hook (FAMO), called by the train step and by users of ``combine`` /
``as_optax``.  ``all_finite`` and ``keep_if`` implement the non-finite rule: a state computed
from non-finite numbers is dropped and the previous state kept.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting.base import Needs, Weighting, WeightingInputs
from mtl_jax._src.weighting.jacobian import gram

PyTree = Any


class MethodOutput(NamedTuple):
  """What ``run_method`` returns."""
  weights: jax.Array              # [num] coefficients alpha (gradients stopped)
  state: PyTree                   # the method's new state
  aux: dict                       # the method's own diagnostics ({name: scalar})
  gram: Optional[jax.Array]       # [num, num] G = J J^T for GRAM/JACOBIAN methods, else None
  direction: Optional[PyTree] = None  # a ``direct`` method's direction, else None


def init_state(method: Weighting, num: int, shared: PyTree = None) -> PyTree:
  """``method.init(num)``, or ``method.init(num, shared)`` for a method whose state is sized
  by the shared parameters (``shared``: their pytree, arrays or ``jax.ShapeDtypeStruct``).

  Raises:
    ValueError: if such a method gets ``shared=None``.
  """
  if not method.state_like_params:
    return method.init(num)
  if shared is None:
    raise ValueError(f'weighting {method.name!r} keeps vectors the size of the shared '
                     'parameters: its state is method.init(num_tasks, shared) with shared '
                     'the shared parameters (or one task row of the Jacobian)')
  return method.init(num, shared)


def run_method(method: Weighting, losses: jax.Array, step, jacobian: Optional[PyTree], state,
               key: Optional[jax.Array], num: int, gram_matrix: Optional[jax.Array] = None,
               representation: Optional[PyTree] = None, params: Optional[PyTree] = None,
               loss_fn=None):
  """The method on ``num`` tasks: ``MethodOutput(weights [num], state, aux, gram,
  direction)``.

  Builds ``WeightingInputs`` (losses as constants, G = J J^T for GRAM/JACOBIAN methods, J for
  JACOBIAN methods), runs ``method.update`` and stops gradients through alpha.

  Args:
    method: the weighting method.
    losses: the ``[num]`` per-task losses.
    step: the number of updates so far (scalar int).
    jacobian: the task-stacked Jacobian (leaves ``[num, ...]``), or None for a loss-only
      method; a Jacobian with no leaves is allowed (G = 0).
    state: the method's state; ``key``: its PRNG key (None for a method that is not random).
    num: the number of tasks.
    gram_matrix: G when the caller has it without a Jacobian (the engine's Gramian mode;
      ``jacobian`` is then None and the method a GRAM method).
    representation: z, when the rows are gradients of the representation (mode 'rep').
    params, loss_fn: for a ``bilevel`` method, the params and ``params -> losses [num]``.

  Raises:
    ValueError: if the method returns weights that are not ``[num]``, or a ``direct`` method
      no direction.
  """
  if method.bilevel and loss_fn is None:
    raise ValueError(f'weighting {method.name!r} is bilevel: it steps the parameters on the '
                     "batch's loss function, which only the train step, task_gradients and "
                     'mtl_value_and_grad can give it (not combine or as_optax)')
  needs_grads = method.needs in (Needs.GRAM, Needs.JACOBIAN)
  g = gram_matrix
  if g is None and needs_grads:
    g = gram(jacobian, num)
  inputs = WeightingInputs(losses=jax.lax.stop_gradient(losses),
                           step=jnp.asarray(step, jnp.int32), gram=g,
                           jacobian=jacobian if method.needs is Needs.JACOBIAN else None,
                           representation=representation, params=params, loss_fn=loss_fn)
  result = method.update(inputs, state, key)
  weights = jax.lax.stop_gradient(result.weights)
  if weights.shape != (num,):
    raise ValueError(f'weighting {method.name!r} returned weights of shape {weights.shape} '
                     f'for {num} tasks')
  if method.direct and result.direction is None:
    raise ValueError(f'weighting {method.name!r} is direct but returned no direction')
  direction = None
  if method.direct:
    direction = jax.tree.map(jax.lax.stop_gradient, result.direction)
  return MethodOutput(weights, result.state, dict(result.aux or {}), g, direction)


def all_finite(*trees) -> jax.Array:
  """A scalar bool: every entry of every leaf of ``trees`` is finite (True for no leaves)."""
  leaves = [leaf for tree in trees for leaf in jax.tree_util.tree_leaves(tree)]
  checks = [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """``new`` where the scalar ``ok`` holds, else ``old`` (bitwise), leaf by leaf; jittable."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def after_step(method: Weighting, state, losses_before, losses_after):
  """The method's post-update state change (FAMO's logit step); the identity without one.

  ``state = after_step(method, state, L(theta_k; B), L(theta_{k+1}; B))``: the losses on the
  same batch B before and after the parameter update theta_k -> theta_{k+1}, as the train
  step does (one extra forward pass).  Call it after every update, with the state the update
  returned.  Gradients do not flow through the losses.

  Args:
    method: the weighting method.
    state: its state, as returned by the update (``combine(...).state``).
    losses_before: the ``[T]`` losses the update was computed from.
    losses_after: the ``[T]`` losses at the updated parameters, on the same batch.

  Returns:
    The new state; ``state`` itself (bitwise) if either loss vector has a non-finite entry,
    and for a method without ``after_step``.  Jittable.

  Raises:
    ValueError: if the loss vectors' shapes differ.
  """
  if method.after_step is None:
    return state
  before = jax.lax.stop_gradient(jnp.asarray(losses_before))
  after = jax.lax.stop_gradient(jnp.asarray(losses_after))
  if before.ndim != 1 or before.shape != after.shape:
    raise ValueError(f'after_step of weighting {method.name!r}: losses_before and '
                     f'losses_after must be [T] vectors of one shape, got {before.shape} and '
                     f'{after.shape}')
  return keep_if(all_finite(before, after), method.after_step(state, before, after), state)
