"""What the bilevel task-weighting methods (Auto-Lambda, MOML, FORUM) share.

Each learns logits w of task weights lambda = softmax(w) from two independent half-batches:
an inner one, on which a *virtual* parameter step theta' = step(theta; sum_t lambda_t
L_t^in) is taken, and an outer one, whose losses at theta' judge the weights.  The engine
gives such a method (``Weighting.bilevel``, ``sub_batches=2``) the batch's loss function
``loss_fn(params) -> [2 T]`` (inner half's T losses, then the outer half's) and the params;
the virtual step is an optax update, differentiated exactly with ``jax.grad`` inside the
jitted train step (LibMTL approximates it by finite differences on a deep copy of the model).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks

PyTree = Any


class LogitState(NamedTuple):
  """The learned logits w [T] of lambda = softmax(w) and their optimizer's state."""
  logits: jax.Array
  opt_state: optax.OptState


def optimizer(method: str, field: str, name: str, learning_rate: float):
  """``optax.<name>(learning_rate)``; a ValueError naming the method and field otherwise."""
  learning_rate = checks.check_finite(method, field.replace('optimizer', 'lr'), learning_rate,
                                      minimum=0.0, strict=True)
  try:
    return registry.optimizer(name, learning_rate)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{method}: {field}: {e}') from None


def init_logits(outer: optax.GradientTransformation, num_tasks: int) -> LogitState:
  """Uniform weights (w = 0) and a fresh optimizer state, in the default float dtype
  (float64 under ``jax_enable_x64``)."""
  logits = jnp.zeros((num_tasks,), float)
  return LogitState(logits, outer.init(logits))


def step_logits(outer: optax.GradientTransformation, state: LogitState, grad) -> LogitState:
  """One optimizer step of the logits along the gradient ``grad`` [T]."""
  updates, opt_state = outer.update(grad.astype(state.logits.dtype), state.opt_state,
                                    state.logits)
  return LogitState(optax.apply_updates(state.logits, updates), opt_state)


def virtual_step(inner: optax.GradientTransformation, params: PyTree, loss_fn: Callable,
                 weights: jax.Array) -> PyTree:
  """theta' = theta + inner-update(grad_theta sum_t weights_t L_t^in(theta)), with a fresh
  state of ``inner`` (one step of it); differentiable in ``weights``."""
  num = weights.shape[0]
  grads = jax.grad(lambda p: jnp.dot(weights, loss_fn(p)[:num]))(params)
  updates, _ = inner.update(grads, inner.init(params), params)
  return optax.apply_updates(params, updates)


def halves(weights: jax.Array) -> jax.Array:
  """The [2 T] row weights of a step on the whole batch (both halves) with task weights
  ``weights`` [T]: the batch's task gradient is the mean of the halves'."""
  return jnp.concatenate([weights, weights]) / 2
