"""The engine: from per-task losses to the parameter gradients a weighting method asks for.

Loss-only methods: one forward pass and one VJP with cotangent alpha,

    L, vjp = jax.vjp(losses_fn, params);   grads = vjp(alpha) = sum_t alpha_t grad L_t.

Gradient methods, ``mode='param'``: the rows of J (per-task gradients of the shared
parameters) come from ``vmap`` over pullbacks; G = J J^T and d = alpha^T J (a contraction of
the J already in hand, cheaper than another backward pass).  When the model splits into a
trunk z = f(shared) and heads that can read one copy of z per task, a single backward pass
through the heads gives every dL_t/dz, and only the trunk is pulled back T times: forward +
1 head backward + T trunk backward passes.  Otherwise each row is a pullback through the
whole network.

``mode='gram'`` (the Gramian mode, ``gramian.py``): G from each layer's inputs and the T
per-task cotangents of its output, G_W[s, t] = <Delta_s, (x x^T) Delta_t> for a dense layer
(rules for dense, convolution and embedding layers; the exact per-task gradient for every
other parameter), never forming J; then d = J^T alpha by one more VJP.  For methods that read
only G.

``mode='auto'`` (the default) picks the exact mode for the method and model: GRAM methods get
the Gramian mode where its layer rules save more work than the backward pass it adds for d
(``gramian.pays_off``, decided at trace time from the shapes: dense layers of a batch smaller
than their inputs, embeddings), else 'param' (convolution-heavy models; and with
``chunk_size``); JACOBIAN methods get 'param'; loss-only methods need no mode but for
``diagnostics_every``, whose G the Gramian mode measures.  Methods reading k independent
sub-batches (MoDo, SDMGrad, FORUM) get their k T rows from T pullbacks, the sub-batches
running on k copies of the shared parameters (``_sub_batch_rows``): in modes 'gram' and
'auto' (where a dense layer's copy axis is a dot batch dimension: ``pays_off``), G over
(task, copy) pairs from the same layer rules and d from one VJP; in 'param' the k T rows of
J.  With a trunk/heads split, one head backward pass gives every dL_t/dz on every part and
only the trunk is pulled back (``_sub_batch_representation``).

``mode='rep'``: the rows are the per-task gradients dL_t/dz of the shared representation; the
combined cotangent sum_t alpha_t dL_t/dz is pushed through the trunk exactly, in one VJP
(MGDA-UB, Sener & Koltun 2018).  Cheaper when z is smaller than the shared parameters.

Task-specific parameters get grad L_t ('unweighted', default for gradient methods) or
alpha_t grad L_t ('weighted').

Auxiliary losses (a model's regularisers, an adversarial discriminator's loss), returned by
``LossFns.full`` as ``{name: scalar}``, are added to the objective with weight 1, outside the
weighting: grads = (the method's combination of the T task gradients) + grad sum_k R_k.  The
method never sees them.  Loss-only methods fold them into the same VJP; gradient methods pull
them back as one extra row of the vmapped VJP.

Task sampling (``Options.task_sampling`` = k): k tasks drawn per step; the method sees the
sampled tasks only (losses, Gram matrix, Jacobian rows) and returns k weights, scattered into
[T] with 0 for the others; gradient methods pull back k rows instead of T.

Gradient diagnostics (``EngineOutput.gram``, read by ``diagnostics.gradient_diagnostics``):
the Gram matrix G of the trained tasks' gradients, which gradient methods compute anyway
(no extra backward pass); for loss-only methods, with ``Options.diagnostics_every`` = N > 0,
the T rows of J are pulled back on every N-th step only (a ``lax.cond``: one Jacobian on
those steps, nothing on the others, whose G is NaN).  In ``mode='rep'`` G is of the
representation gradients dL_t/dz.

``check`` holds every compatibility rule between a method, the options and the model.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting.apply import after_step  # noqa: F401  (the train step's)
from mtl_jax._src.weighting.apply import run_method as _run
from mtl_jax._src.weighting.base import Needs, Weighting
from mtl_jax._src.weighting.diagnostics import scatter_gram, unmeasured
from mtl_jax._src.weighting.gramian import gram_vjp, pays_off
from mtl_jax._src.weighting.jacobian import (constrain_rows, gram, row_major, rows, task_sum,
                                             weighted_sum)

PyTree = Any
MODES = ('auto', 'param', 'gram', 'rep')
HEAD_GRADS = ('weighted', 'unweighted')


class LossFns(NamedTuple):
  """The loss functions of one batch.

  Attributes:
    full: ``params -> (losses [T], aux_losses {name: scalar}, model_state)``, params being
      ``{'shared': ..., 'task': ...}``.
    trunk: optional ``shared -> (z, model_state)``, the shared representation.
    heads: optional ``(z_T, task_params) -> (losses [T], model_state)`` where task t reads only
      ``z_T[t]`` (a per-task copy of z; leaves ``[T, ...]``).  ``full`` must equal the heads
      on T copies of the trunk's z.
    merge: ``(trunk state, heads state) -> model_state`` (with ``trunk`` and ``heads``).
    num_tasks: T (with ``trunk`` and ``heads``: the number of copies of z).
    sub_batches: k: ``full`` returns the k * T losses of k equal sub-batches, sub-batch
      major (``sub_batch_fns`` builds it), for a method with ``sub_batches`` = k.
    parts: optional, with ``sub_batches``: ``(shared_k, task) ->`` what ``full`` returns,
      sub-batch b evaluated with its own copy ``shared_k[b]`` of the shared parameters, so
      that one pullback gives every sub-batch's gradient of a task.
  """
  full: Callable
  trunk: Optional[Callable] = None
  heads: Optional[Callable] = None
  merge: Optional[Callable] = None
  num_tasks: Optional[int] = None
  sub_batches: int = 1
  parts: Optional[Callable] = None


class Options(NamedTuple):
  """How the engine computes gradients (``check`` validates them).

  Attributes:
    mode: 'auto' (the exact mode for the method: ``resolve_mode``), 'param' (the per-task
      gradients of the shared parameters), 'gram' (their Gram matrix from layer inputs and
      output cotangents; GRAM methods) or 'rep' (gradients of the shared representation;
      needs ``LossFns.trunk``/``heads``).  Loss-only methods ignore it.
    chunk_size: pull back this many tasks at a time (``lax.map``) to bound memory; None: all.
      Mode 'param' only.
    head_grads: 'weighted' or 'unweighted' task-specific gradients; None: the method's.
    task_sampling: k in (0, T) trains k tasks drawn uniformly without replacement per step;
      0 or T: every task.
    diagnostics_every: N > 0 gives loss-only methods the Gram matrix of the T task gradients
      (``EngineOutput.gram``) on every N-th step (``step % N == 0``), at the cost of one
      Jacobian on those steps; 0: none.  Gradient methods always return theirs.
    task_rows: a sharding of the per-task Jacobian's leading (task) axis (a
      ``NamedSharding`` with ``P('model')``: task parallelism, ``parallel.state_sharding``);
      every Jacobian of the shared parameters is constrained to it where it divides T.
      None: left to XLA.
  """
  mode: str = 'auto'
  chunk_size: Optional[int] = None
  head_grads: Optional[str] = None
  task_sampling: int = 0
  diagnostics_every: int = 0
  task_rows: Any = None


class EngineOutput(NamedTuple):
  """What a train step needs, in its final form."""
  losses: jax.Array          # [T] task losses
  aux_losses: dict           # {name: scalar} auxiliary losses (weight 1, unseen by the method)
  grads: PyTree              # like params: the combined gradient
  weights: jax.Array         # [T] the method's coefficients (0 for tasks not sampled)
  state: PyTree              # the method's new state
  model_state: PyTree        # the model's new non-parameter state
  diagnostics: dict          # the method's own diagnostics ({name: scalar})
  gram: Optional[jax.Array] = None  # [T, T] G of the task gradients, NaN where not measured;
                                    # None for a loss-only method without diagnostics_every


class OptionError(ValueError):
  """A method, option and model that do not go together; ``field`` names the option."""

  def __init__(self, field: str, message: str):
    super().__init__(f'{field}: {message}')
    self.field = field


def check(method: Weighting, num_tasks: int, options: Options, splits: bool) -> None:
  """Raises ``OptionError`` unless ``method`` can train ``num_tasks`` tasks with ``options``
  on a model that does (``splits``) or does not expose a trunk/heads split."""
  if num_tasks < method.min_tasks:
    raise OptionError('weighting', f'{method.name!r} needs at least {method.min_tasks} '
                      f'tasks, got {num_tasks}')
  if options.mode not in MODES:
    raise OptionError('mode', f'must be one of {MODES}, got {options.mode!r}')
  if options.mode == 'gram' and method.needs is Needs.JACOBIAN:
    raise OptionError('mode', f"'gram' gives the Gram matrix only; weighting {method.name!r} "
                      "reads the Jacobian itself: use mode 'param' (or 'auto')")
  if options.mode == 'gram' and options.chunk_size is not None:
    raise OptionError('chunk_size', "mode 'gram' keeps no Jacobian to chunk; use mode "
                      "'param' with chunk_size (or 'auto')")
  if options.mode == 'rep' and not splits:
    raise OptionError('mode', "'rep' needs a model with representation() and heads() "
                      'methods (a shared representation)')
  if options.head_grads not in (None,) + HEAD_GRADS:
    raise OptionError('head_grads', f'must be one of {HEAD_GRADS} or None, got '
                      f'{options.head_grads!r}')
  chunk = options.chunk_size
  if chunk is not None and (type(chunk) is not int or chunk < 1):
    raise OptionError('chunk_size', f'must be a positive integer or None, got {chunk!r}')
  every = options.diagnostics_every
  if type(every) is not int or every < 0:
    raise OptionError('diagnostics_every', f'must be an integer >= 0 (0: off), got {every!r}')
  k = options.task_sampling
  if type(k) is not int or not 0 <= k <= num_tasks:
    raise OptionError('task_sampling', f'must be an integer in [0, {num_tasks}] (0: off), '
                      f'got {k!r}')
  _check_method_kind(method, options)
  if 0 < k < num_tasks:
    if (method.state_like_params or method.sub_batches > 1
        or jax.tree_util.tree_leaves(method.init(num_tasks)) or method.after_step is not None):
      raise OptionError('task_sampling', f'weighting {method.name!r} keeps per-task state, '
                        'which has no meaning for a varying subset of tasks; use a stateless '
                        'method')
    if k < method.min_tasks:
      raise OptionError('task_sampling', f'weighting {method.name!r} needs at least '
                        f'{method.min_tasks} tasks per step, got {k}')


def _check_method_kind(method: Weighting, options: Options) -> None:
  """The rules of direct, parameter-sized-state and sub-batch methods."""
  name = method.name
  if method.direct and options.head_grads == 'weighted':
    raise OptionError('head_grads', f"weighting {name!r} returns the direction itself, not "
                      "per-task weights for the task-specific parameters: use 'unweighted'")
  if method.state_like_params and options.mode == 'rep':
    raise OptionError('mode', f"weighting {name!r} keeps vectors the size of the shared "
                      "parameters; mode 'rep' gives it representation gradients: use 'param'")
  if method.sub_batches > 1 and options.mode == 'rep':
    raise OptionError('mode', f"weighting {name!r} reads the gradients of "
                      f"{method.sub_batches} sub-batches; mode 'rep' has one representation: "
                      "use 'param', 'gram' or 'auto'")


def resolve_mode(method: Weighting, options: Options) -> str:
  """The mode ``options.mode`` means for ``method``: 'auto' becomes 'gram' for GRAM methods
  (the engine then still takes the Jacobian where the layer rules do not pay off:
  ``gramian.pays_off``; always with ``chunk_size``: 'param') and for loss-only ones (where
  it only decides how ``diagnostics_every`` measures G), 'param' for JACOBIAN methods."""
  if options.mode != 'auto':
    return options.mode
  gram_only = method.needs is not Needs.JACOBIAN and options.chunk_size is None
  return 'gram' if gram_only else 'param'


def _sample(key, num_tasks, k):
  """The sorted task indices trained this step, or None for every task."""
  if not 0 < k < num_tasks:
    return None
  draw = jax.random.choice(jax.random.fold_in(key, 1), num_tasks, (k,), replace=False)
  return jnp.sort(draw)


def _scatter(weights, subset, num):
  """k weights of the tasks ``subset`` as a [T] vector (0 elsewhere); identity if no subset."""
  if subset is None:
    return weights
  return jnp.zeros((num,), weights.dtype).at[subset].set(weights)


def _active(subset, num, dtype, scale=1.0):
  """[T] ``scale`` on the sampled tasks (all tasks without a subset)."""
  ones = jnp.full((num if subset is None else subset.shape[0],), scale, dtype)
  return _scatter(ones, subset, num)


def _unweighted(method, subset, losses, sub_batches):
  """The cotangent of the unweighted task-specific gradients: 1 on the trained tasks (1/k
  over k sub-batches' rows: the batch's mean gradient), times ``method.head_scale``."""
  active = _active(subset, losses.shape[0], losses.dtype, 1 / sub_batches)
  if method.head_scale is None:
    return active
  return active * jax.lax.stop_gradient(method.head_scale(losses)).astype(losses.dtype)


def _with_aux(cotangent, aux_losses):
  """(task cotangent, 1, ..., 1): the auxiliary losses enter with weight 1."""
  ones = jnp.ones((len(aux_losses),), cotangent.dtype)
  return jnp.concatenate([cotangent, ones])


def _flat_losses(full):
  """``full`` as ``params -> ([T + K] task then auxiliary losses, (T losses' aux dict, state))``
  with the auxiliary losses in sorted name order."""
  def fn(params):
    losses, aux_losses, model_state = full(params)
    extra = [aux_losses[k].astype(losses.dtype) for k in sorted(aux_losses)]
    out = jnp.concatenate([losses, jnp.stack(extra)]) if extra else losses
    return out, (aux_losses, model_state)
  return fn


def task_gradients(method: Weighting, params, state, key, step, fns: LossFns,
                   options: Options = Options(), subset=None) -> EngineOutput:
  """Per-task losses, the combined gradient and the method's result for one batch.

  Args:
    method: the weighting method (``check`` it with ``options`` first).
    params: ``{'shared': ..., 'task': ...}``.
    state: the method's state; ``key``: its PRNG key (the task-sampling draw folds in 1);
    step: the number of updates applied so far (scalar int).
    fns: the batch's loss functions; ``trunk``/``heads`` enable the one-head-pass Jacobian
      and ``mode='rep'``.
    options: see ``Options``.
    subset: optional [k] sorted task indices to train this step, instead of the draw of
      ``options.task_sampling`` (the method must be stateless, as for task sampling).
  """
  if resolve_mode(method, options) != 'gram':     # 'auto' stays: Gramian where it pays
    options = options._replace(mode=resolve_mode(method, options))
  k = method.sub_batches
  if fns.sub_batches != k:
    raise ValueError(f'weighting {method.name!r} reads {k} sub-batch(es) but the loss '
                     f'functions give {fns.sub_batches} (build them with sub_batch_fns)')
  args = (method, params, state, key, step, fns, options, subset)
  if method.needs is Needs.LOSSES:
    out = _loss_only(*args)
  elif fns.trunk is not None and fns.heads is not None and k == 1:
    out = _through_representation(*args)
  elif options.mode == 'rep':
    raise OptionError('mode', "'rep' needs loss functions with a trunk and heads")
  elif k > 1 and fns.parts is not None and subset is None:
    out = _sub_batch_rows(*args)
  else:
    out = _whole_network(*args)
  return _fold_sub_batches(out, k) if k > 1 else out


def _bilevel(method: Weighting, params, fns: LossFns) -> dict:
  """``run_method``'s ``params`` and ``loss_fn`` (params -> [k T] task losses) for a bilevel
  method; nothing for the others."""
  if not method.bilevel:
    return {}
  return {'params': params, 'loss_fn': lambda p: fns.full(p)[0]}


def _fold_sub_batches(out: EngineOutput, k: int) -> EngineOutput:
  """The [T] view of k sub-batches' k * T rows: losses averaged (the batch's, for equal
  sub-batches), weights summed over sub-batches, G of the batch gradients (1/k) sum_b g_bt."""
  num = out.losses.shape[0] // k
  g = out.gram
  if g is not None:
    g = g.reshape(k, num, k, num).sum((0, 2)) / k ** 2
  return out._replace(losses=out.losses.reshape(k, num).mean(0),
                      weights=out.weights.reshape(k, num).sum(0), gram=g)


def sub_batch_fns(bind: Callable, batch, k: int, rng=None) -> LossFns:
  """Loss functions of k equal sub-batches of ``batch``, for a method with ``sub_batches`` = k.

  ``bind(part, rng) -> LossFns`` gives one part's loss functions.  The batch's leaves are split
  along their leading axis into k parts (part b: rows b * B/k to (b + 1) * B/k - 1) and the
  model runs on each part separately (``vmap``), with its own dropout key: the parts' per-task
  losses are independent estimates, as MoDo and SDMGrad need.  ``full`` returns the k * T
  losses, sub-batch major; auxiliary losses and the model's new floating-point state (batch
  statistics) are averaged over the parts.  Where a part's functions have a trunk and heads,
  so do these: ``trunk(shared_k) -> (z_k, state)`` (part b on copy b) and
  ``heads(z_kt [k, T, ...], task) -> (k T losses, state)``.

  Raises:
    ValueError: if a leaf's leading size is not a multiple of k.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
    if not jnp.ndim(leaf) or jnp.shape(leaf)[0] % k:
      raise ValueError(f'the batch must split into {k} equal sub-batches: batch'
                       f'{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}')
  parts = jax.tree.map(lambda x: jnp.reshape(x, (k, x.shape[0] // k) + x.shape[1:]), batch)
  keys = jax.random.split(rng, k) if rng is not None else jnp.zeros((k,))

  mean = lambda x: (jnp.mean(x, 0).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                    else x[0])
  bound = lambda part, r: bind(part, r if rng is not None else None)   # part's LossFns

  def merged(losses, aux, model_state):
    """The k parts' outputs as one batch's: k T losses, mean aux losses, mean state."""
    return (losses.reshape(-1), {n: jnp.mean(v) for n, v in aux.items()},
            jax.tree.map(mean, model_state))

  def full(params):
    one = lambda part, r: bound(part, r).full(params)
    return merged(*jax.vmap(one)(parts, keys))

  def per_part(shared_k, task):
    one = lambda part, r, shared: bound(part, r).full({'shared': shared, 'task': task})
    return merged(*jax.vmap(one)(parts, keys, shared_k))

  probe = bind(jax.tree.map(lambda x: x[0], parts), None)     # its split, if any (not run)
  if probe.trunk is None or probe.heads is None:
    return LossFns(full, sub_batches=k, parts=per_part)

  def trunk(shared_k):
    one = lambda part, r, shared: bound(part, r).trunk(shared)
    z, model_state = jax.vmap(one)(parts, keys, shared_k)
    return z, jax.tree.map(mean, model_state)

  def heads(z_kt, task):
    one = lambda part, r, z: bound(part, r).heads(z, task)
    losses, model_state = jax.vmap(one)(parts, keys, z_kt)
    return losses.reshape(-1), jax.tree.map(mean, model_state)

  return LossFns(full, trunk, heads, probe.merge, probe.num_tasks, sub_batches=k,
                 parts=per_part)


def _loss_only(method, params, state, key, step, fns, options, subset):
  """One VJP with cotangent (alpha, 1_K) (and one with (1, 1_K) for unweighted heads)."""
  if options.diagnostics_every and options.mode in ('gram', 'auto'):
    all_losses, split_vjp, (aux_losses, model_state), r = _pullback(
        _split_losses(fns), params['shared'], params['task'], options=options)
    vjp_fn = lambda c: (dict(zip(('shared', 'task'), split_vjp(c))),)
    gram_of = r.gram
  else:
    all_losses, vjp_fn, (aux_losses, model_state) = jax.vjp(_flat_losses(fns.full), params,
                                                            has_aux=True)
    pull = lambda c: (vjp_fn(c)[0]['shared'],)
    gram_of = lambda c: gram(rows(pull, c, chunk_size=options.chunk_size), c.shape[0])
  num = all_losses.shape[0] - len(aux_losses)
  losses = all_losses[:num]
  subset = _sample(key, num, options.task_sampling) if subset is None else subset
  picked = losses if subset is None else losses[subset]
  weights, new_state, diagnostics = _run(method, picked, step, None, state, key,
                                         picked.shape[0], **_bilevel(method, params, fns))[:3]
  weights = _scatter(weights, subset, num)
  (grads,) = vjp_fn(_with_aux(weights.astype(losses.dtype), aux_losses))
  if (options.head_grads or method.head_grads) == 'unweighted':
    active = _with_aux(_unweighted(method, subset, losses, fns.sub_batches), aux_losses)
    grads = dict(grads, task=vjp_fn(active)[0]['task'])
  g = _occasional_gram(gram_of, num, len(aux_losses), losses.dtype, step, options)
  return EngineOutput(losses, aux_losses, grads, weights, new_state, model_state, diagnostics,
                      g)


def _occasional_gram(gram_of, num, num_aux, dtype, step, options):
  """G of all T tasks' shared-parameter gradients on every ``diagnostics_every``-th step
  (NaN on the others) from ``gram_of`` (cotangent rows -> G); None when the option is off."""
  every = options.diagnostics_every
  if not every:
    return None
  measure = lambda: gram_of(jnp.eye(num, num + num_aux, dtype=dtype))
  return jax.lax.cond(jnp.asarray(step) % every == 0, measure, lambda: unmeasured(num))


def _split_losses(fns: LossFns):
  """``_flat_losses(fns.full)`` as a function of (shared, task) parameters."""
  return lambda shared, task: _flat_losses(fns.full)({'shared': shared, 'task': task})


def _pullback(fn, shared, *others, options: Options, copies: int = 1):
  """``(out, vjp, aux, r)`` of ``fn(shared, *others)`` (which returns (out, aux)); ``r`` is
  the ``gram_vjp`` result (with ``copies``) in modes 'gram' and 'auto', else None."""
  if options.mode not in ('gram', 'auto'):
    out, vjp_fn, aux = jax.vjp(fn, shared, *others, has_aux=True)
    return out, vjp_fn, aux, None
  r = gram_vjp(fn, shared, *others, has_aux=True, copies=copies)
  return r.out, r.vjp, r.aux, r


def _gram_of(r, options: Options, num_rows: int):
  """``r.gram`` where the Gramian mode applies: mode 'gram', or 'auto' where the layer rules
  save more than the extra backward pass for d costs (``pays_off``); else None (Jacobian)."""
  if r is None or not (options.mode == 'gram' or pays_off(r.taps, num_rows)):
    return None
  return r.gram


def _whole_network(method, params, state, key, step, fns, options, subset):
  """Rows of J from vmapped pullbacks through the whole network, or G from the layer rules
  (Gramian mode) and then d and the heads from one VJP with cotangent (alpha, 1_K)."""
  all_losses, vjp_fn, (aux_losses, model_state), r = _pullback(
      _split_losses(fns), params['shared'], params['task'], options=options)
  num_aux = len(aux_losses)
  num = all_losses.shape[0] - num_aux
  losses = all_losses[:num]
  subset = _sample(key, num, options.task_sampling) if subset is None else subset
  # Rows e_t of the trained tasks, plus (0, 1_K): the auxiliary losses' summed gradient.
  cotangents = jnp.eye(num, num + num_aux, dtype=losses.dtype)
  cotangents = cotangents if subset is None else cotangents[subset]
  used = cotangents.shape[0]
  picked = losses if subset is None else losses[subset]
  weighted = (options.head_grads or method.head_grads) == 'weighted'
  gram_of = _gram_of(r, options, used)
  if gram_of is not None:
    weights, new_state, diagnostics, g, _ = _run(method, picked, step, None, state, key,
                                                 used, gram_of(cotangents),
                                                 **_bilevel(method, params, fns))
    weights = _scatter(weights, subset, num)
    shared, task = vjp_fn(_with_aux(weights.astype(losses.dtype), aux_losses))
  else:
    if num_aux:
      aux_row = _with_aux(jnp.zeros_like(losses), aux_losses)[None]
      cotangents = jnp.concatenate([cotangents, aux_row])
    jac = rows(vjp_fn, cotangents, chunk_size=options.chunk_size, argnum=0)
    jac = constrain_rows(jac, options.task_rows)
    jac = row_major(jac) if method.needs is Needs.JACOBIAN else jac
    aux_grad = jax.tree.map(lambda leaf: leaf[used], jac) if num_aux else None
    jac = jax.tree.map(lambda leaf: leaf[:used], jac) if num_aux else jac
    jac = constrain_rows(jac, options.task_rows) if num_aux else jac
    weights, new_state, diagnostics, g, direction = _run(method, picked, step, jac, state,
                                                         key, used,
                                                         **_bilevel(method, params, fns))
    shared = (weighted_sum(jac, weights.astype(losses.dtype)) if direction is None
              else direction)
    if aux_grad is not None:
      shared = jax.tree.map(jnp.add, shared, aux_grad)
    weights = _scatter(weights, subset, num)
    task = vjp_fn(_with_aux(weights.astype(losses.dtype), aux_losses))[1] if weighted else None
  if not weighted:
    active = _unweighted(method, subset, losses, fns.sub_batches)
    task = vjp_fn(_with_aux(active, aux_losses))[1]
  return EngineOutput(losses, aux_losses, {'shared': shared, 'task': task}, weights,
                      new_state, model_state, diagnostics, scatter_gram(g, subset, num))


def _on_copies(method, fn, shared, others, options, k):
  """``_pullback`` of ``fn(shared_k, *others)`` on k copies of the shared parameters: with the
  Gramian over copies for a GRAM method in modes 'gram' and 'auto', else a plain VJP."""
  shared_k = jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), shared)
  gram_mode = method.needs is Needs.GRAM and options.mode in ('gram', 'auto')
  return _pullback(fn, shared_k, *others, options=options if gram_mode else Options('param'),
                   copies=k)


def _head_cotangent(method, options, weights, losses, k):
  """``(weighted, cotangent)`` of the task-specific parameters for k sub-batches' k T losses:
  the method's weights, or the unweighted batch mean."""
  weighted = (options.head_grads or method.head_grads) == 'weighted'
  return weighted, (weights.astype(losses.dtype) if weighted
                    else _unweighted(method, None, losses, k))


def _copy_rows(method, r, pull, cotangents, num, k, options):
  """``(jac, g_in, task_major, order)`` for a sub-batch method's k T rows, copy b of task t's
  pullback being g_bt: G over (task, copy) pairs from ``r`` (a ``gram_vjp`` result, or None)
  where the Gramian mode applies, else the rows ``task_major`` [T k, ...] (row t k + b) from
  ``pull(cotangents)`` [T, k, ...] and G or J for the method, in the method's sub-batch-major
  order: its row b T + t is ``task_major[order[b T + t]]``."""
  size = num * k
  order = (jnp.arange(size) % num) * k + jnp.arange(size) // num
  if r is not None and (options.mode == 'gram' or pays_off(r.taps, num, copies=k)):
    return None, r.gram(cotangents)[order][:, order], None, order
  task_major = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), pull(cotangents))
  if method.needs is Needs.GRAM:
    return None, gram(task_major, size)[order][:, order], task_major, order
  return jax.tree.map(lambda x: x[order], task_major), None, task_major, order


def _sub_batch_rows(method, params, state, key, step, fns, options, subset):
  """The k T rows of k sub-batches from T pullbacks: the sub-batches run on k copies of
  the shared parameters (``fns.parts``), so the pullback of task t's losses on every
  sub-batch gives g_bt in copy b (rather than k T pullbacks through the whole vmapped batch,
  most of them through sub-batches whose cotangent is zero).  A GRAM method gets G of the
  k T rows from the layer rules over (task, copy) pairs (``gram_vjp``'s ``copies``) where
  they pay off (always in mode 'gram'), and d from one VJP summed over the copies; else the
  rows of J, as ``_whole_network``'s Jacobian path."""
  del subset
  if fns.trunk is not None and fns.heads is not None:
    return _sub_batch_representation(method, params, state, key, step, fns, options)
  k = fns.sub_batches
  parts = _flat_losses(lambda p: fns.parts(p['shared'], p['task']))
  fn = lambda shared_k, task: parts({'shared': shared_k, 'task': task})
  all_losses, vjp_fn, (aux_losses, model_state), r = _on_copies(
      method, fn, params['shared'], (params['task'],), options, k)
  num_aux = len(aux_losses)
  num = all_losses.shape[0] - num_aux                    # k T
  per = num // k
  losses = all_losses[:num]
  # task t on every sub-batch: copy b of its pullback is g_bt
  cotangents = jnp.tile(jnp.eye(per, dtype=all_losses.dtype), (1, k))
  cotangents = jnp.concatenate([cotangents, jnp.zeros((per, num_aux), cotangents.dtype)], 1)
  pull = lambda c: constrain_rows(rows(vjp_fn, c, chunk_size=options.chunk_size, argnum=0),
                                  options.task_rows)                        # [T, k, ...]
  jac, g_in, task_major, order = _copy_rows(method, r, pull, cotangents, per, k, options)
  weights, new_state, diagnostics, g, direction = _run(method, losses, step, jac, state, key,
                                                       num, g_in,
                                                       **_bilevel(method, params, fns))
  weighted, heads = _head_cotangent(method, options, weights, losses, k)
  copy_sum = lambda tree: jax.tree.map(task_sum, tree)
  if task_major is None:             # d and the auxiliary gradient from one VJP
    shared_k_grad, task = vjp_fn(_with_aux(weights.astype(losses.dtype), aux_losses))
    shared = copy_sum(shared_k_grad)
    task = task if weighted else vjp_fn(_with_aux(heads, aux_losses))[1]
  else:
    if direction is None:
      inverse = jnp.argsort(order)           # weights in the task-major order of the rows
      shared = weighted_sum(task_major, weights[inverse].astype(losses.dtype))
    else:
      shared = direction
    if num_aux:
      aux_grad = copy_sum(vjp_fn(_with_aux(jnp.zeros_like(losses), aux_losses))[0])
      shared = jax.tree.map(jnp.add, shared, aux_grad)
    task = vjp_fn(_with_aux(heads, aux_losses))[1]
  return EngineOutput(losses, aux_losses, {'shared': shared, 'task': task}, weights,
                      new_state, model_state, diagnostics, g)


def _sub_batch_representation(method, params, state, key, step, fns, options):
  """``_sub_batch_rows`` through a trunk/heads split: one head backward pass gives every
  dL_bt/dz_b (task t's loss on part b, part b's representation), then T trunk pullbacks on
  the k copies give the k T rows (G over copies in the Gramian mode, else J), and one more
  trunk VJP of sum_bt w_bt dL_bt/dz_b gives d."""
  k, num = fns.sub_batches, fns.num_tasks
  z, trunk_vjp, trunk_state, r = _on_copies(method, fns.trunk, params['shared'], (), options, k)
  z_kt = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (k, num) + a.shape[1:]), z)
  losses, head_vjp, heads_state = jax.vjp(fns.heads, z_kt, params['task'], has_aux=True)
  rep = head_vjp(jnp.ones_like(losses))[0]                 # [k, T, ...]: dL_bt / dz_b
  rows_t = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), rep)   # row t: copy b's dL_bt/dz_b
  size = k * num
  pull = jax.vmap(lambda c: trunk_vjp(c)[0])                       # [T, k, ...]
  jac, g_in, task_major, order = _copy_rows(method, r, pull, rows_t, num, k, options)
  weights, new_state, diagnostics, g, direction = _run(method, losses, step, jac, state, key,
                                                       size, g_in,
                                                       **_bilevel(method, params, fns))
  if direction is not None:
    shared = direction
  elif task_major is not None:
    shared = weighted_sum(task_major, weights[jnp.argsort(order)].astype(losses.dtype))
  else:
    w_kt = weights.reshape(k, num).astype(losses.dtype)
    cotangent = jax.tree.map(                              # in z's dtype (bfloat16 too)
        lambda a: jnp.einsum('bt,bt...->b...', w_kt, a).astype(a.dtype), rep)
    shared = jax.tree.map(task_sum, trunk_vjp(cotangent)[0])
  task = head_vjp(_head_cotangent(method, options, weights, losses, k)[1])[1]
  return EngineOutput(losses, {}, {'shared': shared, 'task': task}, weights, new_state,
                      fns.merge(trunk_state, heads_state), diagnostics, g)


def _through_representation(method, params, state, key, step, fns, options, subset):
  """dL_t/dz for every t in one head backward pass, then the trunk (T times, or once in
  mode 'rep'; in mode 'gram' T cotangent passes for G and one VJP for d)."""
  z, trunk_vjp, trunk_state, r = _pullback(fns.trunk, params['shared'], options=options)
  pull = lambda cotangent: trunk_vjp(cotangent)[0]
  num = fns.num_tasks
  copies = jax.tree.map(lambda a: jnp.broadcast_to(a, (num,) + a.shape), z)
  losses, head_vjp, heads_state = jax.vjp(fns.heads, copies, params['task'], has_aux=True)
  subset = _sample(key, num, options.task_sampling) if subset is None else subset
  # Rows dL_t/dz [T, *z.shape] (zero for tasks not sampled), then the sampled rows [k, ...].
  rep_jac, unweighted_task = head_vjp(_active(subset, num, losses.dtype))
  if method.head_scale is not None:
    unweighted_task = head_vjp(_unweighted(method, subset, losses, 1))[1]
  if subset is not None:
    rep_jac = jax.tree.map(lambda leaf: leaf[subset], rep_jac)
  used = num if subset is None else subset.shape[0]
  picked = losses if subset is None else losses[subset]
  gram_of = _gram_of(r, options, used)
  if gram_of is not None:
    weights, new_state, diagnostics, g, _ = _run(method, picked, step, None, state, key,
                                                 used, gram_of(rep_jac))
    shared = pull(weighted_sum(rep_jac, weights.astype(losses.dtype)))
  else:
    jac = rep_jac
    if options.mode != 'rep':
      chunk = options.chunk_size
      jac = (jax.vmap(pull)(rep_jac) if chunk is None or chunk >= used
             else jax.lax.map(pull, rep_jac, batch_size=chunk))
      jac = constrain_rows(jac, options.task_rows)
      jac = row_major(jac) if method.needs is Needs.JACOBIAN else jac
    rep = z if options.mode == 'rep' else None
    weights, new_state, diagnostics, g, direction = _run(method, picked, step, jac, state,
                                                         key, used, representation=rep)
    combined = (weighted_sum(jac, weights.astype(losses.dtype)) if direction is None
                else direction)
    shared = combined if options.mode != 'rep' else pull(combined)
  weights = _scatter(weights, subset, num)
  task = (head_vjp(weights.astype(losses.dtype))[1]
          if (options.head_grads or method.head_grads) == 'weighted' else unweighted_task)
  return EngineOutput(losses, {}, {'shared': shared, 'task': task}, weights, new_state,
                      fns.merge(trunk_state, heads_state), diagnostics,
                      scatter_gram(g, subset, num))

