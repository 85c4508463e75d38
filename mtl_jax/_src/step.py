"""The pure, jit-compiled multi-task train step and the evaluation step.

    state, metrics = train_step(state, batch)

computes all per-task losses in one vectorised pass, combines them with a ``Weighting``,
and applies an optax update.  An update whose losses or gradients are not finite is
rejected (as is one whose update overflows): params, model, optimizer and weighting state
stay as they were, ``num_rejected`` grows.
"""

import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax._src.tasks import TaskSet
from mtl_jax._src.weighting import Weighting
from mtl_jax._src.weighting import engine

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (a pytree).

  ``step`` counts batches consumed; ``step - num_rejected`` updates were applied.
  ``model_state`` holds non-parameter collections (e.g. ``batch_stats``), ``{}`` if none.
  ``rng`` is a raw ``uint32[2]`` PRNG key.
  """
  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  weighting_state: PyTree
  rng: jax.Array
  num_rejected: jax.Array


def init_train_state(model: nn.Module, tasks: TaskSet, optimizer: optax.GradientTransformation,
                     weighting: Weighting, sample_inputs, rng) -> TrainState:
  """Initialises params from ``sample_inputs`` (a batch's inputs) and every other state."""
  if len(tasks) < weighting.min_tasks:
    raise ValueError(f'weighting {weighting.name!r} needs at least {weighting.min_tasks} '
                     f'tasks, got {len(tasks)}')
  init_rng, rng = jax.random.split(rng)
  init = jax.jit(model.init, static_argnames='train')
  variables = init({'params': init_rng, 'dropout': init_rng}, sample_inputs, train=False)
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  params.setdefault('shared', {})    # a model without shared parameters (``independent``)
  if set(params) != {'shared', 'task'}:
    raise ValueError("a multi-task model's params must have exactly the top-level subtrees "
                     f"'shared' and 'task', got {sorted(params)}")
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=optimizer.init(params),
      weighting_state=weighting.init(len(tasks)),
      rng=rng,
      num_rejected=jnp.zeros((), jnp.int32))
  # Every leaf its own buffer: an init that reuses one array for two fields would otherwise
  # make the donated step donate that buffer twice.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


AUX_LOSS = 'aux_loss'


def _apply(model, params, model_state, inputs, train, rng=None, method=None):
  """``model.apply`` (or one of its methods), the updated ``model_state`` and the auxiliary
  losses the model sowed (``self.sow('aux_loss', name, value)``, training only) as a flat
  ``{name: scalar}``."""
  variables = {'params': params, **model_state}
  rngs = {'dropout': rng} if rng is not None else None
  if not train:
    return model.apply(variables, inputs, train=False, rngs=rngs, method=method), model_state, {}
  out, new_state = model.apply(variables, inputs, train=True, rngs=rngs,
                               mutable=list(model_state) + [AUX_LOSS], method=method)
  new_state = flax.core.unfreeze(new_state)
  sown = new_state.pop(AUX_LOSS, {})
  aux_losses = {name: sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(values))
                for name, values in flax.traverse_util.flatten_dict(sown, sep='/').items()}
  return out, new_state, aux_losses


def _merge_model_state(from_shared, from_task):
  """Model state whose 'shared' entries come from the trunk pass, the rest from the heads."""
  return {c: {**from_task[c], **({'shared': from_shared[c]['shared']}
                                 if 'shared' in from_shared.get(c, {}) else {})}
          for c in from_task}


def make_train_step(model: nn.Module, tasks: TaskSet, optimizer: optax.GradientTransformation,
                    weighting: Weighting, *, schedule: Optional[Callable] = None,
                    mode: str = 'param', chunk_size: Optional[int] = None,
                    head_grads: Optional[str] = None,
                    mesh: Optional[jax.sharding.Mesh] = None, jit: bool = True,
                    donate: bool = True, frozen: Optional[PyTree] = None,
                    task_sampling: int = 0):
  """Returns a pure ``(state, batch) -> (state, metrics)``.

  Args:
    model: a multi-task flax module returning ``{task: prediction}``.
    tasks: the task collection; fixes the order of every ``[T]`` array.
    optimizer: an optax transformation (its learning rate may follow ``schedule``).
    weighting: how per-task losses are combined.
    schedule: the learning-rate schedule, only to report ``lr`` in the metrics.
    mode: per-task gradients of the shared parameters ('param') or of the shared
      representation ('rep', needs ``model.representation`` and ``model.heads``).
    chunk_size: compute per-task gradients this many tasks at a time (None: all at once).
    head_grads: 'weighted' or 'unweighted' task-specific gradients (None: the method's).
    mesh: if given, the batch is sharded over its ``'data'`` axis and the state replicated.
    jit: return the jit-compiled step (state donated) rather than the Python function.
    donate: donate the input state's buffers to the output.
    frozen: a bool pytree like the params: True leaves get no gradient (``stop_gradient``),
      so per-task Jacobians and Gram matrices cover the trainable parameters only.
    task_sampling: k > 0 trains k tasks drawn uniformly without replacement each step (from
      the state's rng; the draw is data, so nothing recompiles): the others get weight 0
      and no gradient, and gradient methods pull back k rows only.  Needs a stateless
      weighting with ``min_tasks <= k``.  0 (or T): every task, every step.

  Metrics: ``losses`` [T], ``weights`` [T], ``loss`` (= sum_t w_t L_t + auxiliary losses),
  ``grad_norm``, ``param_norm`` (of the params the step returns), ``lr``,
  ``rejected`` (1 if this update was rejected as non-finite), ``aux_loss/<name>`` (each
  auxiliary loss the model sowed).
  """

  num_tasks = len(tasks)
  if type(task_sampling) is not int or not 0 <= task_sampling <= num_tasks:
    raise ValueError(f'task_sampling must be an integer in [0, {num_tasks}] (0: off), got '
                     f'{task_sampling!r}')
  sampling = 0 < task_sampling < num_tasks
  if sampling and (task_sampling < weighting.min_tasks
                   or jax.tree_util.tree_leaves(weighting.init(num_tasks))
                   or weighting.after_step is not None):
    raise ValueError(f'task_sampling={task_sampling} needs a stateless weighting for at least '
                     f'{task_sampling} tasks; {weighting.name!r} keeps per-task state or needs '
                     f'{weighting.min_tasks} tasks')

  if mode == 'rep' and not (hasattr(model, 'representation') and hasattr(model, 'heads')):
    raise ValueError(f"mode='rep' needs a model with representation() and heads() methods; "
                     f'{type(model).__name__} has none')

  def freeze(params):
    if frozen is None:
      return params
    return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)

  def train_step(state: TrainState, batch):
    rng, dropout_rng, weighting_rng = jax.random.split(state.rng, 3)
    applied = state.step - state.num_rejected
    inputs = batch['inputs']

    def losses_fn(params):
      params = freeze(params)
      # [T] task losses, then the model's auxiliary losses (added with weight 1).
      preds, new_model_state, aux_losses = _apply(model, params, state.model_state, inputs,
                                                  True, dropout_rng)
      extra = jnp.stack([aux_losses[k] for k in aux_names]) if aux_names else None
      losses = tasks.losses(preds, batch)
      return (losses if extra is None else jnp.concatenate([losses, extra.astype(losses.dtype)]),
              new_model_state)

    def rep_fn(shared):
      params = freeze({'shared': shared, 'task': state.params['task']})
      z, new_model_state, aux_losses = _apply(model, params, state.model_state, inputs, True,
                                              dropout_rng, method='representation')
      _no_aux_losses(aux_losses, model)
      return z, new_model_state

    def head_fn(z, task, stacked=False):
      params = freeze({'shared': state.params['shared'], 'task': task})
      heads = lambda module, z, train: module.heads(z, train, stacked=stacked, inputs=inputs)
      preds, new_model_state, aux_losses = _apply(model, params, state.model_state, z, True,
                                                  dropout_rng, method=heads)
      _no_aux_losses(aux_losses, model)
      return tasks.losses(preds, batch), new_model_state

    # The names of the model's auxiliary losses, from an abstract evaluation (no FLOPs).
    aux_names = sorted(jax.eval_shape(
        lambda p: _apply(model, p, state.model_state, inputs, True, dropout_rng)[2],
        state.params))
    has_rep = (hasattr(model, 'representation') and hasattr(model, 'heads')
               and not aux_names)
    subset = None
    if sampling:
      draw = jax.random.choice(jax.random.fold_in(weighting_rng, 1), num_tasks,
                               (task_sampling,), replace=False)
      subset = jnp.sort(draw)
    out = engine.task_gradients(
        weighting, state.params, state.weighting_state, weighting_rng, applied,
        losses_fn=losses_fn, rep_fn=rep_fn if has_rep else None,
        head_fn=head_fn if has_rep else None,
        stacked_head_fn=functools.partial(head_fn, stacked=True) if has_rep else None,
        num_tasks=num_tasks, mode=mode, chunk_size=chunk_size, head_grads=head_grads,
        subset=subset)
    losses, grads, result = out.losses, out.grads, out.result
    new_model_state = _merge_model_state(*out.aux) if out.split else out.aux
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # A non-finite or overflowing update makes the new params non-finite, so their norm
    # (a logged metric anyway) detects it without a pass over the updates.
    param_norm = optax.tree.norm(params)
    finite = (jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)
              & jnp.isfinite(param_norm))
    weighting_state = result.state
    if weighting.after_step is not None:
      # The method's own update from the losses after the step, on the same batch.
      new_losses = losses_fn(params)[0][:len(tasks)]
      finite &= jnp.all(jnp.isfinite(new_losses))
      weighting_state = weighting.after_step(weighting_state, jax.lax.stop_gradient(losses),
                                             jax.lax.stop_gradient(new_losses))

    # Keep the new state only if finite: one select of whole buffers (lax.cond), cheaper
    # than an elementwise where over every leaf.
    # The old params' norm is computed only when the update is rejected.
    new = (params, new_model_state, opt_state, weighting_state, param_norm)
    old = lambda: (state.params, state.model_state, state.opt_state, state.weighting_state,
                   optax.tree.norm(state.params))
    params, new_model_state, opt_state, weighting_state, param_norm = jax.lax.cond(
        finite, lambda: new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        model_state=new_model_state,
        opt_state=opt_state,
        weighting_state=weighting_state,
        rng=rng,
        num_rejected=state.num_rejected + (~finite).astype(jnp.int32))
    metrics = {
        'losses': losses,
        'weights': result.weights,
        'loss': jnp.sum(result.weights * losses) + (jnp.sum(out.extra) if aux_names else 0.0),
        'grad_norm': grad_norm,
        'param_norm': param_norm,
        'lr': jnp.asarray(schedule(applied) if schedule is not None else jnp.nan, jnp.float32),
        'rejected': (~finite).astype(jnp.int32),
        **{f'weighting/{k}': v for k, v in result.aux.items()},
        **{f'aux_loss/{k}': out.extra[i] for i, k in enumerate(aux_names)},
    }
    return new_state, metrics

  return jit_train_step(train_step, mesh=mesh, donate=donate) if jit else train_step


def _no_aux_losses(aux_losses, model):
  if aux_losses:
    raise ValueError(f'{type(model).__name__} sowed auxiliary losses {sorted(aux_losses)} '
                     'inside representation()/heads(); such a model must not define them')


def jit_train_step(train_step, *, mesh: Optional[jax.sharding.Mesh] = None, donate: bool = True):
  """``jax.jit`` of a ``(state, batch) -> (state, metrics)`` function; with a ``mesh``, the
  batch is sharded over its ``'data'`` axis and state and metrics are replicated."""
  shardings = {}
  if mesh is not None:
    replicated, data = _shardings(mesh)
    shardings = dict(in_shardings=(replicated, data), out_shardings=(replicated, replicated))
  return jax.jit(train_step, donate_argnums=(0,) if donate else (), **shardings)


def make_eval_step(model: nn.Module, tasks: TaskSet, *,
                   mesh: Optional[jax.sharding.Mesh] = None, jit: bool = True):
  """Returns ``(params, model_state, batch) -> metric sums`` (see ``TaskSet.metric_sums``)."""

  def eval_step(params, model_state, batch):
    preds, _, _ = _apply(model, params, model_state, batch['inputs'], False)
    return tasks.metric_sums(preds, batch)

  if not jit:
    return eval_step
  shardings = {}
  if mesh is not None:
    replicated, data = _shardings(mesh)
    shardings = dict(in_shardings=(replicated, replicated, data), out_shardings=replicated)
  return jax.jit(eval_step, **shardings)


def evaluate(eval_step, state: TrainState, tasks: TaskSet, batches) -> dict:
  """Per-task metrics ``{task: {metric: value}}`` over an iterable of batches."""
  total = None
  for batch in batches:
    sums = eval_step(state.params, state.model_state, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    raise ValueError('evaluate: no batches')
  return tasks.finalize_metrics(total)


def _shardings(mesh):
  P = jax.sharding.PartitionSpec
  return (jax.sharding.NamedSharding(mesh, P()), jax.sharding.NamedSharding(mesh, P('data')))
