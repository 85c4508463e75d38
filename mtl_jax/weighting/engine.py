"""From per-task losses to parameter gradients, inside the train step.

Loss-only methods: one forward pass and one VJP with cotangent alpha,

    L, vjp = jax.vjp(losses_fn, params);   grads = vjp(alpha) = sum_t alpha_t grad L_t.

Gradient methods, ``mode='param'``: the rows of J (per-task gradients of the shared
parameters) come from ``vmap`` over one-hot cotangents of the same VJP; G = J J^T.  The
shared direction is d = alpha^T J, formed as one more VJP with cotangent alpha for Gram-only
methods (so J is not kept), or from J directly for methods that read J.

``mode='rep'``: the rows are per-task gradients of the shared representation z = f(x); the
method's combined cotangent sum_t alpha_t dL_t/dz (or its own direction in z-space) is pushed
through the trunk exactly, in one VJP.  Cheaper when z is smaller than the shared parameters.

Task-specific parameters get grad L_t ('unweighted', default for gradient methods) or
alpha_t grad L_t ('weighted').
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtl_jax.weighting.base import Needs, Weighting, WeightingInputs, WeightingResult
from mtl_jax.weighting.jacobian import gram, rows, weighted_sum

MODES = ('param', 'rep')
HEAD_GRADS = ('weighted', 'unweighted')


class EngineOutput(NamedTuple):
  losses: jax.Array        # [T]
  grads: dict              # {'shared': ..., 'task': ...}
  result: WeightingResult  # weights (stop-gradient) and the method's new state
  aux: object              # whatever the loss functions returned as aux


def _inputs(method, losses, step, jac):
  needs_grads = method.needs in (Needs.GRAM, Needs.JACOBIAN)
  return WeightingInputs(losses=jax.lax.stop_gradient(losses), step=step,
                         gram=gram(jac) if needs_grads else None,
                         jacobian=jac if method.needs is Needs.JACOBIAN else None)


def _run(method, inputs, state, key, num):
  result = method.update(inputs, state, key)
  weights = jax.lax.stop_gradient(result.weights)
  if weights.shape != (num,):
    raise ValueError(f'weighting {method.name!r} returned weights of shape {weights.shape} '
                     f'for {num} tasks')
  return result._replace(weights=weights)


def task_gradients(method: Weighting, params, state, key, step, *, losses_fn: Callable,
                   rep_fn: Optional[Callable] = None, head_fn: Optional[Callable] = None,
                   mode: str = 'param', chunk_size: Optional[int] = None,
                   head_grads: Optional[str] = None) -> EngineOutput:
  """Per-task losses, combined gradients and the method's result for one batch.

  Args:
    method: the weighting method.
    params: ``{'shared': ..., 'task': ...}``.
    losses_fn: ``params -> ([T] losses, aux)``.
    rep_fn, head_fn: for ``mode='rep'``: ``shared -> (z, aux)`` and
      ``(z, task_params) -> ([T] losses, aux)``; their composition must equal ``losses_fn``.
    mode: 'param' or 'rep' (ignored by loss-only methods).
    chunk_size: compute Jacobian rows ``chunk_size`` tasks at a time (``lax.map``).
    head_grads: overrides ``method.head_grads``.
  """
  head_grads = head_grads or method.head_grads
  if mode not in MODES or head_grads not in HEAD_GRADS:
    raise ValueError(f'mode must be one of {MODES} and head_grads one of {HEAD_GRADS}, got '
                     f'{mode!r}, {head_grads!r}')

  if method.needs is Needs.LOSSES:
    losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
    result = _run(method, _inputs(method, losses, step, None), state, key, losses.shape[0])
    if result.direction is not None:
      raise ValueError(f'weighting {method.name!r} needs loss values only but returned a '
                       'direction')
    (grads,) = vjp_fn(result.weights.astype(losses.dtype))
    if head_grads == 'unweighted':
      grads = dict(grads, task=vjp_fn(jnp.ones_like(losses))[0]['task'])
    return EngineOutput(losses, grads, result, aux)

  if mode == 'param':
    split = lambda shared, task: losses_fn({'shared': shared, 'task': task})
    losses, vjp_fn, aux = jax.vjp(split, params['shared'], params['task'], has_aux=True)
    jac = rows(vjp_fn, losses, chunk_size=chunk_size, argnum=0)
    result = _run(method, _inputs(method, losses, step, jac), state, key, losses.shape[0])
    alpha = result.weights.astype(losses.dtype)
    if result.direction is not None:
      shared = result.direction
    elif method.needs is Needs.JACOBIAN:
      shared = weighted_sum(jac, alpha)
    else:
      shared = vjp_fn(alpha)[0]
    head_cotangent = alpha if head_grads == 'weighted' else jnp.ones_like(losses)
    task = vjp_fn(head_cotangent)[1]
    return EngineOutput(losses, {'shared': shared, 'task': task}, result, aux)

  if rep_fn is None or head_fn is None:
    raise ValueError("mode='rep' needs a model with a shared representation "
                     '(representation/heads methods)')
  z, rep_vjp, rep_aux = jax.vjp(rep_fn, params['shared'], has_aux=True)
  losses, head_vjp, head_aux = jax.vjp(head_fn, z, params['task'], has_aux=True)
  jac = rows(head_vjp, losses, chunk_size=chunk_size, argnum=0)
  result = _run(method, _inputs(method, losses, step, jac), state, key, losses.shape[0])
  alpha = result.weights.astype(losses.dtype)
  z_cotangent = result.direction if result.direction is not None else weighted_sum(jac, alpha)
  (shared,) = rep_vjp(z_cotangent)
  head_cotangent = alpha if head_grads == 'weighted' else jnp.ones_like(losses)
  task = head_vjp(head_cotangent)[1]
  return EngineOutput(losses, {'shared': shared, 'task': task}, result, (rep_aux, head_aux))
