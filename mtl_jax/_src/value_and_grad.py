"""``mtl_value_and_grad``: the multi-task counterpart of ``jax.value_and_grad``, for any JAX
model (flax.linen, flax.nnx through ``nnx.split``, Equinox, plain functions).

    vg = mtl_value_and_grad(losses_fn, method, shared=mask)
    losses, grads, weights, state = vg(params, state, key, *args, **kwargs)

It runs the engine of the train step (``weighting.task_gradients``) on the user's function:
the parameters marked ``shared`` get the method's combination of the per-task gradients
(one VJP with cotangent alpha for loss-only methods; the Jacobian rows from one vmapped VJP,
or chunks of it, for gradient methods); every other parameter is task-specific and gets
sum_t alpha_t grad L_t ('weighted') or sum_t grad L_t ('unweighted'), as the method says.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mtl_jax._src import precision
from mtl_jax._src.weighting import apply, combine, engine
from mtl_jax._src.weighting.base import Weighting

PyTree = Any


def _mask_leaves(shared, params) -> list:
  """The bool per leaf of ``params`` from ``shared`` (a bool pytree like ``params``, or a
  function of ``params`` returning one); raises if the structures differ."""
  mask = shared(params) if callable(shared) else shared
  structure, mask_structure = jax.tree.structure(params), jax.tree.structure(mask)
  if structure != mask_structure:
    short = lambda s: str(s) if len(str(s)) < 300 else str(s)[:300] + '...'
    raise ValueError('mtl_value_and_grad: shared must be a bool pytree with the structure of '
                     f'params (or a function returning one, e.g. jax.tree_util.'
                     f'tree_map_with_path of params); params are {short(structure)}, shared '
                     f'is {short(mask_structure)}')
  leaves = jax.tree_util.tree_leaves(mask)
  if not all(isinstance(m, bool) or getattr(m, 'dtype', None) == bool for m in leaves):
    raise TypeError('mtl_value_and_grad: every leaf of shared must be a Python bool')
  return [bool(m) for m in leaves]


def _split(params, mask):
  leaves, treedef = jax.tree.flatten(params)
  shared = [leaf for leaf, m in zip(leaves, mask) if m]
  task = [leaf for leaf, m in zip(leaves, mask) if not m]

  def merge(shared_leaves, task_leaves):
    s, t = iter(shared_leaves), iter(task_leaves)
    return jax.tree.unflatten(treedef, [next(s) if m else next(t) for m in mask])

  return {'shared': shared, 'task': task}, merge


def _checked_losses(out, has_aux: bool):
  losses, aux = out if has_aux else (out, None)
  losses = jnp.asarray(losses)
  if losses.ndim != 1:
    raise ValueError('mtl_value_and_grad: losses_fn must return the [T] per-task losses'
                     f'{" (as the first element of its (losses, aux) pair)" if has_aux else ""}'
                     f', got shape {losses.shape}')
  return losses, aux


def _check_functions(mode, losses_fn, representation_fn, heads_fn, has_aux, stacked_heads):
  """Raises ``ValueError`` for a combination of functions ``mtl_value_and_grad`` can't use."""
  split = representation_fn is not None and heads_fn is not None
  if mode == 'rep' and (not split or has_aux):
    raise ValueError("mtl_value_and_grad: mode='rep' needs representation_fn and heads_fn "
                     '(and no has_aux)')
  if (representation_fn is None) != (heads_fn is None):
    raise ValueError('mtl_value_and_grad: representation_fn and heads_fn go together')
  if losses_fn is None and (not split or stacked_heads):
    raise ValueError('mtl_value_and_grad: losses_fn is required'
                     f'{" with stacked_heads" if split else ""} (mode {mode!r})')


def _representation_fns(representation_fn, heads_fn, merge, num, args, kwargs,
                        stacked_heads=False):
  """``LossFns.trunk``/``heads`` from a user's ``z = representation_fn(params, ...)`` and
  ``losses = heads_fn(z, params, ...)``: task t's loss reads copy t of z (the heads run once
  per copy, vmapped; with ``stacked_heads``, once on all copies)."""
  def trunk(shared_leaves, task_leaves):
    return representation_fn(merge(shared_leaves, task_leaves), *args, **kwargs), None

  def heads(z_copies, shared_leaves, task_leaves):
    params = merge(shared_leaves, task_leaves)
    if stacked_heads:
      return _checked_losses(heads_fn(z_copies, params, *args, **kwargs), False)[0], None

    def one(z, t):
      losses, _ = _checked_losses(heads_fn(z, params, *args, **kwargs), False)
      return losses[t]

    return jax.vmap(one)(z_copies, jnp.arange(num)), None

  return trunk, heads


def mtl_value_and_grad(losses_fn: Optional[Callable], method: Weighting, *, shared,
                       has_aux: bool = False, mode: str = 'auto',
                       chunk_size: Optional[int] = None, head_grads: Optional[str] = None,
                       representation_fn: Optional[Callable] = None,
                       heads_fn: Optional[Callable] = None,
                       stacked_heads: bool = False,
                       after_step: Optional[str] = None,
                       compute_dtype=None, grad_dtype=None) -> Callable:
  """The per-task losses and the method's combined gradient of any JAX model.

  Returns ``vg(params, state, key, *args, step=0, **kwargs) -> (losses, grads, weights,
  new_state)``
  (``((losses, aux), grads, weights, new_state)`` with ``has_aux``), pure and jittable:
  ``losses`` [T] = ``losses_fn(params, *args, **kwargs)``; ``grads`` like ``params``: the
  shared leaves get d = sum_t alpha_t grad L_t with alpha the method's weights (for gradient
  methods computed from the per-task gradients J of the shared leaves, G = J J^T), the others
  sum_t alpha_t grad L_t or sum_t grad L_t (``head_grads``); ``weights`` alpha [T];
  ``new_state`` the method's.  As in the train step, a non-finite loss or gradient returns the
  input ``state`` unchanged (the grads are then not finite: skip the update).

  Args:
    losses_fn: ``(params, *args, **kwargs) -> losses [T]`` (or ``(losses, aux)`` with
      ``has_aux``).  Unused in mode 'rep' (may be None there).
    method: a weighting method (``weighting.get(name)``).
    shared: a bool pytree with the structure of ``params`` (True: shared) or a function of
      ``params`` returning one, e.g. ``lambda p: {'trunk': True_tree, 'heads': False_tree}``.
    has_aux: ``losses_fn`` returns ``(losses, aux)`` (not in mode 'rep').
    mode: 'auto' (default: 'gram' for methods that read only the Gram matrix, else
      'param'), 'param' (per-task gradients of the shared parameters), 'gram' (their Gram
      matrix from each layer's inputs and output cotangents, never forming them: see
      ``mtl_jax/_src/weighting/gramian.py``) or 'rep' (of the shared representation z,
      MGDA-UB of Sener & Koltun 2018: needs ``representation_fn`` and ``heads_fn``; the
      combined cotangent goes through the representation in one VJP).
    chunk_size: mode 'param': pull back this many tasks at a time (bounds memory); None:
      all at once.
    head_grads: 'weighted' or 'unweighted' for the task-specific leaves; None: the method's.
    representation_fn: mode 'rep': ``(params, *args, **kwargs) -> z``, reading only the
      shared parameters.
    heads_fn: ``(z, params, *args, **kwargs) -> losses [T]``, reading only z and the
      task-specific parameters (with ``representation_fn``: the representation split, used
      by modes 'rep', 'param' and 'gram': one backward pass through the heads gives every
      dL_t/dz).  The heads run once per task on a copy of z (T^2 head evaluations), unless
      ``stacked_heads``.
    stacked_heads: ``heads_fn`` takes ``z_T`` with a leading task axis (T copies of z) and
      task t's loss reads only ``z_T[t]`` (e.g. ``einsum('tbd,tdc->tbc', z_T, w)``): one
      evaluation of the heads instead of T.
    after_step: as for ``combine``: a method with a post-update hook (FAMO) needs 'manual',
      and then ``weighting.after_step(method, state, losses, losses_after)`` after each
      update.
    compute_dtype: 'bfloat16' runs ``losses_fn`` (and ``representation_fn``, ``heads_fn``)
      on bfloat16 copies of the floating leaves of its positional arguments (params and
      batch; keyword arguments, e.g. labels, pass unchanged) and returns its outputs in
      float32: losses, Gram matrix, solver and grads stay float32 (mixed precision).
    grad_dtype: 'bfloat16' takes and stores the per-task gradients of the shared leaves
      (Jacobian rows, mode 'rep' cotangents) in bfloat16, half their memory; the Gram matrix
      still accumulates in float32 and ``grads`` return in the params' dtypes.

  ``vg``'s ``state`` is the method's (``method.init(T)`` first, None for a stateless method),
  ``key`` a PRNG key (required by random methods, else may be None), ``step`` the number of
  updates so far (read by ``dwa`` and ``nash_mtl``; not passed to ``losses_fn``).

  Raises:
    ValueError: ``shared`` not shaped like ``params``, losses that are not a [T] vector or of
      the wrong T for ``state``, a random method without a key, a bad option.
  """
  options = engine.Options(mode, chunk_size, head_grads, 0)
  combine.check_after_step(method, after_step, 'mtl_value_and_grad', ('manual',))
  _check_functions(mode, losses_fn, representation_fn, heads_fn, has_aux, stacked_heads)
  low = precision.resolve(compute_dtype, 'compute_dtype')
  grad_dtype = precision.resolve(grad_dtype, 'grad_dtype')
  losses_fn, heads_fn = (precision.in_compute_dtype(f, low) if f is not None else None
                         for f in (losses_fn, heads_fn))
  if representation_fn is not None:
    trunk_fn = precision.in_compute_dtype(representation_fn, low)
    representation_fn = lambda *a, **k: precision.cast(trunk_fn(*a, **k), grad_dtype)
  uses_split = representation_fn is not None and heads_fn is not None and not has_aux

  def vg(params, state, key, *args, step=0, **kwargs):
    combine.check_key(method, key, 'mtl_value_and_grad')
    split, merge = _split(params, _mask_leaves(shared, params))
    split = precision.cast(split, grad_dtype)      # what the per-task gradients are of

    def all_losses(p, batch_args=args):
      if losses_fn is not None:
        return _checked_losses(losses_fn(p, *batch_args, **kwargs), has_aux)
      return _checked_losses(heads_fn(representation_fn(p, *batch_args, **kwargs), p,
                                      *batch_args, **kwargs), False)

    num = jax.eval_shape(lambda p: all_losses(p)[0], params).shape[0]
    engine.check(method, num, options, splits=uses_split)
    state = combine.check_state(method, state, num, 'mtl_value_and_grad', split['shared'])

    def full_of(batch_args):
      def full(p):
        losses, aux = all_losses(merge(p['shared'], p['task']), batch_args)
        return losses, {}, aux
      return full

    def part_fns(part):
      if not uses_split:
        return engine.LossFns(full_of(part))
      trunk, heads = _representation_fns(representation_fn, heads_fn, merge, num, part, kwargs,
                                         stacked_heads)
      return engine.LossFns(full_of(part), trunk=lambda s: trunk(s, split['task']),
                            heads=lambda z, t: heads(z, split['shared'], t),
                            merge=lambda a, b: None, num_tasks=num)

    fns = engine.LossFns(full_of(args))
    if method.sub_batches > 1:   # k sub-batches: every positional argument split on axis 0
      fns = engine.sub_batch_fns(lambda part, rng: part_fns(part), args, method.sub_batches)
    elif uses_split:
      fns = part_fns(args)
    out = engine.task_gradients(method, split, state, key, jnp.asarray(step, jnp.int32), fns,
                                options)
    grads = precision.like(merge(out.grads['shared'], out.grads['task']), params)
    new_state = apply.keep_if(apply.all_finite(out.losses, out.grads),
                              precision.like(out.state, state), state)
    value = (out.losses, out.model_state) if has_aux else out.losses
    return value, grads, out.weights, new_state

  return vg
