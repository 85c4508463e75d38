"""From per-task losses to parameter gradients, inside the train step.

Loss-only methods: one forward pass and one VJP with cotangent alpha,

    L, vjp = jax.vjp(losses_fn, params);   grads = vjp(alpha) = sum_t alpha_t grad L_t.

Gradient methods, ``mode='param'``: the rows of J (per-task gradients of the shared
parameters) come from ``vmap`` over pullbacks; G = J J^T and d = alpha^T J (a contraction of
the J already in hand, cheaper than another backward pass).  When the model's heads can read
one copy of the representation z per task, a single backward pass through the heads gives
every dL_t/dz, and only the trunk is pulled back T times: forward + 1 head backward + T trunk
backward passes.  Otherwise each row is a pullback through the whole network.

``mode='rep'``: the rows are the per-task gradients dL_t/dz of the shared representation; the
method's combined cotangent sum_t alpha_t dL_t/dz (or its own direction in z-space) is pushed
through the trunk exactly, in one VJP.  Cheaper when z is smaller than the shared parameters.

Task-specific parameters get grad L_t ('unweighted', default for gradient methods) or
alpha_t grad L_t ('weighted').

Auxiliary losses (a model's regularisers, an adversarial discriminator's loss): when
``losses_fn`` returns T + K values, the last K are added to the objective with weight 1,
outside the weighting: grads = (method's combination of the T task gradients) +
grad sum_k R_k.  The method never sees them.  Loss-only methods fold them into the same VJP;
gradient methods pull them back as one extra row of the vmapped VJP.

Task sampling (``subset``, k task indices drawn per step): the method sees the k sampled
tasks only (their losses, Gram matrix, Jacobian rows) and returns k weights, scattered
into [T] with 0 for the others; gradient methods pull back k rows instead of T.  Only
stateless methods qualify (a per-task state has no meaning for a varying subset).
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting.base import Needs, Weighting, WeightingInputs, WeightingResult
from mtl_jax._src.weighting.jacobian import gram, rows, weighted_sum

MODES = ('param', 'rep')
HEAD_GRADS = ('weighted', 'unweighted')


class EngineOutput(NamedTuple):
  losses: jax.Array        # [T]
  grads: dict              # {'shared': ..., 'task': ...}
  result: WeightingResult  # weights (stop-gradient) and the method's new state
  aux: object              # the loss function's aux, or (trunk aux, heads aux) if split
  split: bool = False      # True when computed through rep_fn and the heads separately
  extra: Optional[jax.Array] = None  # [K] auxiliary losses (weight 1, unseen by the method)


def _with_extra(weights, num_extra):
  """The cotangent (weights, 1, ..., 1) for task losses followed by K auxiliary losses."""
  return jnp.concatenate([weights, jnp.ones((num_extra,), weights.dtype)])


def _scatter(weights, subset, num):
  """k weights of the tasks ``subset`` as a [T] vector (0 elsewhere); identity if no subset."""
  if subset is None:
    return weights
  return jnp.zeros((num,), weights.dtype).at[subset].set(weights)


def _active(subset, num, dtype):
  """[T] ones on the sampled tasks (all tasks without a subset)."""
  return _scatter(jnp.ones((num if subset is None else subset.shape[0],), dtype), subset, num)


def _inputs(method, losses, step, jac, num=None):
  needs_grads = method.needs in (Needs.GRAM, Needs.JACOBIAN)
  return WeightingInputs(losses=jax.lax.stop_gradient(losses), step=step,
                         gram=gram(jac, num) if needs_grads else None,
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
                   stacked_head_fn: Optional[Callable] = None, num_tasks: Optional[int] = None,
                   mode: str = 'param', chunk_size: Optional[int] = None,
                   head_grads: Optional[str] = None,
                   subset: Optional[jax.Array] = None) -> EngineOutput:
  """Per-task losses, combined gradients and the method's result for one batch.

  Args:
    method: the weighting method.
    params: ``{'shared': ..., 'task': ...}``.
    losses_fn: ``params -> ([T] losses, aux)``.
    rep_fn, head_fn: ``shared -> (z, aux)`` and ``(z, task_params) -> ([T] losses, aux)``;
      their composition equals ``losses_fn``.  Needed for ``mode='rep'``.
    stacked_head_fn: optional ``(z_T, task_params) -> ([T] losses, aux)`` where task t reads
      only ``z_T[t]`` (a per-task copy of z).  With it, one backward pass through the heads
      gives all dL_t/dz, and only the trunk is pulled back T times (``num_tasks`` needed).
    num_tasks: T; ``losses_fn`` may return T + K values, the last K auxiliary losses.
    mode: 'param' or 'rep' (ignored by loss-only methods).
    chunk_size: pull back this many tasks at a time (``lax.map``), to bound memory.
    head_grads: overrides ``method.head_grads``.
    subset: optional [k] int indices of the tasks trained this step (task sampling); the
      others get weight 0 and no gradient.  The method must be stateless.
  """
  head_grads = head_grads or method.head_grads
  if mode not in MODES or head_grads not in HEAD_GRADS:
    raise ValueError(f'mode must be one of {MODES} and head_grads one of {HEAD_GRADS}, got '
                     f'{mode!r}, {head_grads!r}')

  if subset is not None and jax.tree_util.tree_leaves(state):
    raise ValueError(f'task sampling needs a stateless weighting; {method.name!r} keeps '
                     'per-task state')
  pick = (lambda x: x) if subset is None else (lambda x: x[subset])

  if method.needs is Needs.LOSSES:
    all_losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
    num = num_tasks or all_losses.shape[0]
    losses, extra = all_losses[:num], all_losses[num:]
    picked = pick(losses)
    result = _run(method, _inputs(method, picked, step, None), state, key, picked.shape[0])
    if result.direction is not None:
      raise ValueError(f'weighting {method.name!r} needs loss values only but returned a '
                       'direction')
    result = result._replace(weights=_scatter(result.weights, subset, num))
    (grads,) = vjp_fn(_with_extra(result.weights.astype(losses.dtype), extra.shape[0]))
    if head_grads == 'unweighted':
      active = _active(subset, num, losses.dtype)
      grads = dict(grads, task=vjp_fn(_with_extra(active, extra.shape[0]))[0]['task'])
    return EngineOutput(losses, grads, result, aux, extra=extra)

  if stacked_head_fn is not None and rep_fn is not None:
    return _through_representation(method, params, state, key, step, rep_fn, stacked_head_fn,
                                   num_tasks, mode, chunk_size, head_grads, subset)
  if mode == 'rep':
    raise ValueError("mode='rep' needs a model with a shared representation "
                     '(representation/heads methods)')

  # Generic path: rows of J from vmapped pullbacks through the whole network.
  split = lambda shared, task: losses_fn({'shared': shared, 'task': task})
  all_losses, vjp_fn, aux = jax.vjp(split, params['shared'], params['task'], has_aux=True)
  num = num_tasks or all_losses.shape[0]
  losses, num_extra = all_losses[:num], all_losses.shape[0] - num
  # Rows e_1..e_T (or the sampled tasks' e_t), plus (0, 1_K) for the auxiliary losses'
  # summed gradient.
  cotangents = pick(jnp.eye(num, num + num_extra, dtype=losses.dtype))
  rows_used = cotangents.shape[0]
  if num_extra:
    cotangents = jnp.concatenate([cotangents, _with_extra(jnp.zeros_like(losses),
                                                          num_extra)[None]])
  jac = rows(vjp_fn, cotangents, chunk_size=chunk_size, argnum=0)
  extra_grad = None
  if num_extra:
    extra_grad = jax.tree.map(lambda leaf: leaf[rows_used], jac)
    jac = jax.tree.map(lambda leaf: leaf[:rows_used], jac)
  result = _run(method, _inputs(method, pick(losses), step, jac, rows_used), state, key,
                rows_used)
  alpha = result.weights.astype(losses.dtype)
  shared = result.direction if result.direction is not None else weighted_sum(jac, alpha)
  if extra_grad is not None:
    shared = jax.tree.map(jnp.add, shared, extra_grad)
  result = result._replace(weights=_scatter(result.weights, subset, num))
  head_cotangent = (result.weights.astype(losses.dtype) if head_grads == 'weighted'
                    else _active(subset, num, losses.dtype))
  task = vjp_fn(_with_extra(head_cotangent, num_extra))[1]
  return EngineOutput(losses, {'shared': shared, 'task': task}, result, aux,
                      extra=all_losses[num:])


def _through_representation(method, params, state, key, step, rep_fn, stacked_head_fn,
                            num_tasks, mode, chunk_size, head_grads, subset=None):
  """Gradient methods via z: dL_t/dz for all t in one head backward pass, then the trunk."""
  z, trunk_vjp, rep_aux = jax.vjp(rep_fn, params['shared'], has_aux=True)
  z_stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_tasks,) + a.shape), z)
  losses, head_vjp, head_aux = jax.vjp(stacked_head_fn, z_stacked, params['task'],
                                       has_aux=True)
  if losses.shape[0] != num_tasks:
    raise ValueError(f'the heads returned {losses.shape[0]} losses for {num_tasks} tasks: a '
                     'model with auxiliary losses cannot use the representation split')
  # Rows dL_t/dz [T, *z.shape] (zero for tasks not sampled), then the sampled rows [k, ...].
  rep_jac, unweighted_task = head_vjp(_active(subset, num_tasks, losses.dtype))
  if subset is not None:
    rep_jac = jax.tree.map(lambda leaf: leaf[subset], rep_jac)
  rows_used = num_tasks if subset is None else subset.shape[0]
  pull = lambda cotangent: trunk_vjp(cotangent)[0]
  if mode == 'param':
    if chunk_size is None or chunk_size >= rows_used:
      jac = jax.vmap(pull)(rep_jac)
    else:
      jac = jax.lax.map(pull, rep_jac, batch_size=chunk_size)
  else:
    jac = rep_jac
  picked = losses if subset is None else losses[subset]
  result = _run(method, _inputs(method, picked, step, jac, rows_used), state, key, rows_used)
  alpha = result.weights.astype(losses.dtype)
  combined = result.direction if result.direction is not None else weighted_sum(jac, alpha)
  shared = combined if mode == 'param' else pull(combined)
  result = result._replace(weights=_scatter(result.weights, subset, num_tasks))
  task = (head_vjp(result.weights.astype(losses.dtype))[1] if head_grads == 'weighted'
          else unweighted_task)
  return EngineOutput(losses, {'shared': shared, 'task': task}, result, (rep_aux, head_aux),
                      split=True)
