"""The pure, jit-compiled multi-task train step and the evaluation step.

    state, metrics = train_step(state, batch)

computes all per-task losses in one vectorised pass, combines them with a ``Weighting``,
and applies an optax update.  An update whose losses or gradient are not finite (the
gradient's sum of squares included, so no squared entry overflows) is rejected: params,
model, optimizer and weighting state stay bitwise as they were, ``num_rejected`` grows.
The check comes before the optimizer runs, which then updates the state in place (see
``guard``); an optimizer update that overflows from finite gradients is therefore applied,
and shows as a non-finite ``param_norm`` and a rejected next step.
"""

from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtl_jax._src import precision
from mtl_jax._src.tasks import TaskSet
from mtl_jax._src.objective import Objective, apply_model
from mtl_jax._src.weighting import engine
from mtl_jax._src.weighting.apply import init_state
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.diagnostics import gradient_diagnostics

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
  engine.check(weighting, len(tasks), engine.Options(), splits=True)
  init_rng, rng = jax.random.split(rng)
  # Init runs once: on the CPU, compile it fast rather than well (LeNet: 6.8 s -> 1.1 s); the
  # params then differ from a fully optimised compile's by at most about an ulp.  (Under an
  # outer jit or vmap the call is inlined and the options do not apply.)
  traced = any(isinstance(x, jax.core.Tracer)
               for x in jax.tree_util.tree_leaves((init_rng, sample_inputs)))
  fast = ({'xla_backend_optimization_level': 0}
          if jax.default_backend() == 'cpu' and not traced else None)
  init = jax.jit(model.init, static_argnames='train', compiler_options=fast)
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
      weighting_state=init_state(weighting, len(tasks), params['shared']),
      rng=rng,
      num_rejected=jnp.zeros((), jnp.int32))
  # Every leaf its own buffer: an init that reuses one array for two fields would otherwise
  # make the donated step donate that buffer twice.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def make_train_step(model: nn.Module, tasks: TaskSet, optimizer: optax.GradientTransformation,
                    weighting: Weighting, *, schedule: Optional[Callable] = None,
                    mode: str = 'auto', chunk_size: Optional[int] = None,
                    head_grads: Optional[str] = None,
                    mesh: Optional[jax.sharding.Mesh] = None, sharding: Any = None,
                    jit: bool = True, donate: bool = True, frozen: Optional[PyTree] = None,
                    task_sampling: int = 0, diagnostics_every: int = 0,
                    compute_dtype=None, grad_dtype=None):
  """Returns a pure ``(state, batch) -> (state, metrics)``.

  Args:
    model: a multi-task flax module returning ``{task: prediction}``.
    tasks: the task collection; fixes the order of every ``[T]`` array.
    optimizer: an optax transformation (its learning rate may follow ``schedule``).
    weighting: how per-task losses are combined.
    schedule: the learning-rate schedule, only to report ``lr`` in the metrics.
    mode: 'auto' (the exact mode for the method and model: the Gramian mode for Gram methods
      where its layer rules pay off, else 'param'),
      per-task gradients of the shared parameters ('param'), their Gram matrix from layer
      inputs and output cotangents ('gram') or per-task gradients of the shared
      representation ('rep', needs ``model.representation`` and ``model.heads``).
    chunk_size: compute per-task gradients this many tasks at a time (None: all at once).
    head_grads: 'weighted' or 'unweighted' task-specific gradients (None: the method's).
    mesh: if given, the batch is sharded over its ``'data'`` axis and the state replicated.
    sharding: a ``parallel.StateSharding`` (``parallel.state_sharding``): the state's
      shardings on a ('data', 'model') mesh (FSDP, task parallelism), instead of ``mesh``'s
      replication, and the per-task Jacobian's task axis split over 'model' (its
      ``task_rows``).
    jit: return the jit-compiled step (state donated) rather than the Python function.
    donate: donate the input state's buffers to the output.
    frozen: a bool pytree like the params: True leaves get no gradient (``stop_gradient``),
      so per-task Jacobians and Gram matrices cover the trainable parameters only.
    task_sampling: k > 0 trains k tasks drawn uniformly without replacement each step (from
      the state's rng; the draw is data, so nothing recompiles): the others get weight 0
      and no gradient, and gradient methods pull back k rows only.  Needs a stateless
      weighting with ``min_tasks <= k``.  0 (or T): every task, every step.
    diagnostics_every: N > 0 logs the gradient diagnostics of a loss-only method every N-th
      update, at the cost of one Jacobian of the shared parameters on those steps (gradient
      methods log them every step, free: they compute the Gram matrix anyway).
    compute_dtype: 'bfloat16' runs the model in bfloat16 on a copy of the float32 params and
      inputs (mixed precision, ``mtl_jax/_src/precision.py``): losses, Gram matrix, solvers,
      optimizer and state stay float32.  None or 'float32': all float32.
    grad_dtype: 'bfloat16' takes and stores the per-task gradients (Jacobian rows, mode 'rep'
      cotangents) in bfloat16, half their memory; G and the solvers still accumulate in
      float32 and the combined gradient returns to float32 before the optimizer.

  Metrics: ``losses`` [T], ``weights`` [T], ``loss`` (= sum_t w_t L_t + auxiliary losses),
  ``grad_norm``, ``param_norm`` (of the params the step returns), ``lr``, ``rejected`` (1 if
  this update was rejected: a loss or the gradient not finite, see ``guard``),
  ``invalid_labels`` [T] (labelled samples left out of each task's loss: a label invalid for
  the task, e.g. class -1 or 2.7, or a mask not 0 or 1; see ``TaskSet.invalid_labels``),
  ``nonfinite_inputs`` (samples with a NaN or inf input, which make the update rejected),
  ``aux_loss/<name>`` (each auxiliary loss the model sowed), ``weighting/<name>`` (the
  method's diagnostics).  With a Gram matrix (gradient
  methods; loss-only ones with ``diagnostics_every``): ``grad_norms`` [T] (each task's
  gradient norm), ``grad_cos`` [T, T] (cosines), ``conflicts`` (pairs with a negative cosine),
  NaN where not measured (see ``mtl_jax.weighting.gradient_diagnostics``); in ``mode='rep'``
  of the representation gradients.
  """
  compute_dtype = precision.resolve(compute_dtype, 'compute_dtype')
  grad_dtype = precision.resolve(grad_dtype, 'grad_dtype')
  objective = Objective(model, tasks, frozen, compute_dtype, grad_dtype)
  options = engine.Options(mode, chunk_size, head_grads, task_sampling, diagnostics_every,
                           task_rows=sharding.task_rows if sharding is not None else None)
  engine.check(weighting, len(tasks), options, objective.splits)

  def train_step(state: TrainState, batch):
    rng, dropout_rng, weighting_rng = jax.random.split(state.rng, 3)
    applied = state.step - state.num_rejected
    params = precision.cast(state.params, grad_dtype)   # what the per-task gradients are of
    fns = objective.bind(params, state.model_state, batch, dropout_rng)
    if weighting.sub_batches > 1:     # k independent sub-batches (MoDo, SDMGrad)
      bind = lambda part, r: objective.bind(params, state.model_state, part, r)
      fns = engine.sub_batch_fns(bind, batch, weighting.sub_batches, dropout_rng)
    out = engine.task_gradients(weighting, params, state.weighting_state, weighting_rng,
                                applied, fns, options)
    if grad_dtype is not None:        # back to the dtypes of params and method state
      out = out._replace(grads=precision.like(out.grads, state.params),
                         state=precision.like(out.state, state.weighting_state))

    # a plateau schedule (optax.contrib.reduce_on_plateau) reads the sum of the task losses
    extra = ({'value': jnp.sum(out.losses)}
             if isinstance(optimizer, optax.GradientTransformationExtraArgs) else {})

    def update():
      updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params, **extra)
      params = optax.apply_updates(state.params, updates)
      weighting_state = out.state
      if weighting.after_step is not None:
        # The method's own update from the losses after the step, on the same batch (kept
        # as it was if they are not finite).
        new_losses = fns.full(params)[0]
        weighting_state = engine.after_step(weighting, weighting_state, out.losses, new_losses)
      return state.replace(params=params, model_state=out.model_state, opt_state=opt_state,
                           weighting_state=weighting_state)

    new, norms, rejected = guard(state, update, out.grads, jnp.all(jnp.isfinite(out.losses)))
    aux = [out.aux_losses[k] for k in sorted(out.aux_losses)]
    metrics = {
        'losses': out.losses,
        'weights': out.weights,
        # a direct method without coefficients (NaN weights, e.g. a trimmed mean): sum_t L_t
        'loss': (jnp.sum(jnp.where(jnp.isnan(out.weights), 1, out.weights) * out.losses)
                 + (jnp.sum(jnp.stack(aux)) if aux else 0.0)),
        **norms,
        'lr': jnp.asarray(schedule(applied) if schedule is not None else jnp.nan,
                          jnp.float32) * plateau_scale(new.opt_state),
        'rejected': rejected,
        'invalid_labels': tasks.invalid_labels(batch),
        'nonfinite_inputs': tasks.nonfinite_inputs(batch),
        **{f'weighting/{k}': v for k, v in out.diagnostics.items()},
        **{f'aux_loss/{k}': v for k, v in out.aux_losses.items()},
        **(gradient_diagnostics(out.gram) if out.gram is not None else {}),
    }
    return new.replace(step=state.step + 1, rng=rng), metrics

  if not jit:
    return train_step
  return jit_train_step(train_step, mesh=mesh, sharding=sharding, donate=donate)


def plateau_scale(opt_state) -> jax.Array:
  """The learning-rate scale of the ``optax.contrib.reduce_on_plateau`` in ``opt_state`` (1
  if none)."""
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
  found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
  return found[0].scale.astype(jnp.float32) if found else jnp.ones((), jnp.float32)


def _sumsq(tree) -> jax.Array:
  """sum of x^2 over every leaf, in float32 (one plain reduction per leaf)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
             jnp.zeros((), jnp.float32))


def guard(old: TrainState, update: Callable[[], TrainState], grads, finite):
  """``(state, {'grad_norm', 'param_norm'}, rejected)``: ``update()`` if ``finite`` and the
  gradient's sum of squares are finite, else ``old`` with ``num_rejected + 1``.

  What it guarantees: an update is applied only if every task loss (``finite``) and the
  float32 sum of squares of the gradient (logged as ``grad_norm``) are finite, i.e. every
  gradient entry is finite and so is its square (Adam's moments stay finite).  Otherwise
  params, model, optimizer and weighting state are returned bitwise unchanged and
  ``rejected`` is 1.  The decision comes before the optimizer runs, from what the step
  computes anyway, and the update (``update()``: optimizer, new params, a method's
  ``after_step``) runs inside the accepting branch of one ``lax.cond``: XLA writes it into
  the donated buffers in place, with no copy of params or optimizer state.

  What it does not catch: an optimizer update that overflows from finite gradients (a
  learning rate of 1e30) is applied.  Its params are not finite or their squares overflow,
  so ``param_norm`` is inf or NaN; the next step's losses are then not finite, and that
  update and every later one is rejected (the trainer's rejection policy stops the run, and
  its checkpointer does not save a non-finite state).
  Losses after the step that are not finite (FAMO's ``after_step``) keep the method's state
  (``weighting.after_step``) but do not reject the update.

  ``param_norm`` is that of the params the step returns (the old ones when rejected).
  """
  grad_sq = _sumsq(grads)
  ok = finite & jnp.isfinite(grad_sq)
  fields = lambda s: (s.params, s.model_state, s.opt_state, s.weighting_state)

  def accept():
    new = update()
    return fields(new), _sumsq(new.params)

  kept, param_sq = jax.lax.cond(ok, accept, lambda: (fields(old), _sumsq(old.params)))
  rejected = (~ok).astype(jnp.int32)
  state = old.replace(params=kept[0], model_state=kept[1], opt_state=kept[2],
                      weighting_state=kept[3], num_rejected=old.num_rejected + rejected)
  return state, {'grad_norm': jnp.sqrt(grad_sq), 'param_norm': jnp.sqrt(param_sq)}, rejected


def jit_train_step(train_step, *, mesh: Optional[jax.sharding.Mesh] = None,
                   sharding: Any = None, donate: bool = True):
  """``jax.jit`` of a ``(state, batch) -> (state, metrics)`` function; with a ``mesh``, the
  batch is sharded over its ``'data'`` axis and state and metrics are replicated; with a
  ``sharding`` (a ``parallel.StateSharding``), the state in and out as it says (the batch
  over its mesh's ``'data'`` axis, metrics replicated)."""
  shardings = {}
  if sharding is not None:
    replicated, data = _shardings(sharding.mesh)
    shardings = dict(in_shardings=(sharding.state, data),
                     out_shardings=(sharding.state, replicated))
  elif mesh is not None:
    replicated, data = _shardings(mesh)
    shardings = dict(in_shardings=(replicated, data), out_shardings=(replicated, replicated))
  return jax.jit(train_step, donate_argnums=(0,) if donate else (), **shardings)


def make_eval_step(model: nn.Module, tasks: TaskSet, *,
                   mesh: Optional[jax.sharding.Mesh] = None, jit: bool = True,
                   compute_dtype=None, sharding: Any = None):
  """Returns ``(params, model_state, batch) -> metric sums`` (see ``TaskSet.metric_sums``);
  the model in ``compute_dtype`` (as the train step's), the metrics in float32.  ``mesh``:
  the batch sharded over its ``'data'`` axis, params and model state replicated;
  ``sharding`` (a ``parallel.StateSharding``): params and model state as it places them."""
  compute_dtype = precision.resolve(compute_dtype, 'compute_dtype')

  def eval_step(params, model_state, batch):
    preds, _, _ = apply_model(model, params, model_state, batch['inputs'], False,
                              compute_dtype=compute_dtype)
    return tasks.metric_sums(preds, batch)

  if not jit:
    return eval_step
  shardings = {}
  if sharding is not None:
    replicated, data = _shardings(sharding.mesh)
    shardings = dict(in_shardings=(sharding.state.params, sharding.state.model_state, data),
                     out_shardings=replicated)
  elif mesh is not None:
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
