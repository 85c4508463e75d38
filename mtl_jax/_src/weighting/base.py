"""The weighting interface: how per-task losses (and gradients) become one update direction.

A method is a pair of pure functions, in the style of ``optax.GradientTransformation``:

    state = method.init(num_tasks)
    result = method.update(inputs, state, key)      # -> WeightingResult

and declares what it ``needs`` from the engine: loss values only, the Gram matrix
G = J J^T, the per-task Jacobian J (task-stacked gradients of the shared parameters), or
per-task gradients w.r.t. the shared representation.  Most methods are linear in the
gradients: they return coefficients alpha [T], and the engine forms the shared-parameter
direction d = alpha^T J (one vector-Jacobian product with cotangent alpha, or a contraction
of the J in hand).  A ``direct`` method returns d itself (``WeightingResult.direction``): one
that is not linear in J (GradDrop, a trimmed mean) or combines other vectors (MoCo's tracked
gradients).

Two more things a method may declare:

* ``state_like_params``: its state holds vectors of the shared parameters' size (MoCo's
  tracked Jacobian, ExcessMTL's accumulated squares), so ``init`` takes them:
  ``init(num_tasks, shared)`` with ``shared`` any pytree of the shared parameters (or of
  ``jax.ShapeDtypeStruct``), which fixes P, their total size.
* ``bilevel``: it differentiates through a virtual parameter step on the batch's loss
  function (``WeightingInputs.loss_fn``, ``params``), which only the engine has.
* ``sub_batches`` = k > 1: it needs the gradients of k independent sub-batches (MoDo,
  SDMGrad).  The batch is split into k equal parts along its leading axis; the method sees
  k * T losses and rows, sub-batch major (row b * T + t: task t on sub-batch b), G of all
  k * T rows (its off-diagonal blocks are the cross-batch products J_b J_c^T), and returns
  k * T weights: d = sum_{b, t} alpha_{b t} g_{b t}.
"""

import dataclasses
import enum
from typing import Any, Callable, NamedTuple, Optional

import jax

PyTree = Any


class Needs(enum.Enum):
  """What a method reads, from cheapest to most expensive to compute.

  GRAM and JACOBIAN methods run on the per-task gradients of the shared parameters
  (engine mode 'param') or of the shared representation z (mode 'rep'); the method does
  not know which: ``jacobian`` is a task-stacked pytree either way.
  """
  LOSSES = 'losses'                  # loss values only: one ordinary backward pass
  GRAM = 'gram'                      # G = J J^T (T x T)
  JACOBIAN = 'jacobian'              # J itself, task-stacked (leaves [T, ...]), and G


class WeightingInputs(NamedTuple):
  """What the engine hands a method (fields it did not compute are None)."""
  losses: jax.Array                  # [T] per-task losses (constants: no gradient flows)
  step: jax.Array                    # scalar int, number of updates so far
  gram: Optional[jax.Array] = None   # [T, T]
  jacobian: Optional[PyTree] = None  # task-stacked pytree, leaves [T, ...]
  representation: Optional[PyTree] = None  # z, in engine mode 'rep' only (rows dL_t/dz)
  params: Optional[PyTree] = None    # bilevel methods: the params {'shared', 'task'} ...
  loss_fn: Optional[Callable] = None  # ... and params -> the losses on this batch ([k T])


class WeightingResult(NamedTuple):
  """A method's output: coefficients alpha [T], its new state, optional scalars to log.

  ``aux`` is None or a dict of scalars (read it as ``result.aux or {}``).  ``direction``:
  a ``direct`` method's combined direction, shaped like one row of the Jacobian (then
  ``weights`` are only reported: NaN where no coefficients exist); None otherwise.
  """
  weights: jax.Array
  state: PyTree
  aux: Optional[dict] = None
  direction: Optional[PyTree] = None


@dataclasses.dataclass(frozen=True)
class Weighting:
  """A task-weighting method.

  Attributes:
    name: registry key.
    needs: what ``update`` reads from ``WeightingInputs``.
    init: ``num_tasks -> state`` (a pytree; ``()`` for stateless methods).
    update: ``(WeightingInputs, state, key) -> WeightingResult``; pure and jittable.  ``key``
      is a PRNG key, or None for a method that is not ``random``.
    head_grads: 'weighted' (task-specific params get alpha_t * grad L_t, as when
      back-propagating sum_t alpha_t L_t) or 'unweighted' (grad L_t).
    min_tasks: the fewest tasks the method is defined for.
    after_step: optional ``(state, losses_before [T], losses_after [T]) -> state``, called
      after the parameter update with the losses recomputed on the same batch (FAMO's weight
      update; one extra forward pass).  Call it through ``mtl_jax.weighting.after_step``
      (which the train step uses: it skips non-finite losses); ``combine`` and ``as_optax``
      require an explicit ``after_step=`` mode for such a method.
    random: whether ``update`` reads ``key`` (then a key is required).
    direct: ``update`` returns the direction itself (``WeightingResult.direction``); needs
      the Jacobian; task-specific parameters then get unweighted gradients.
    state_like_params: ``init`` is ``(num_tasks, shared) -> state``, its state sized by the
      shared parameters ``shared`` (a pytree of arrays or ``jax.ShapeDtypeStruct``).
    sub_batches: the number k of independent sub-batches whose gradients it reads (1: the
      batch as it is).
    bilevel: ``update`` reads ``inputs.params`` and ``inputs.loss_fn`` (the batch's loss
      function, for a virtual parameter step: Auto-Lambda, MOML, FORUM); only the engine
      (train step, ``task_gradients``, ``mtl_value_and_grad``) can supply them.
    head_scale: optional ``losses [T] -> [T]``: the per-task factor of the unweighted
      task-specific gradients (``1 / L_t`` when the method works on log-losses, whose
      gradients are grad L_t / L_t); None: 1.
  """
  name: str
  needs: Needs
  init: Callable[[int], PyTree]
  update: Callable[[WeightingInputs, PyTree, Optional[jax.Array]], WeightingResult]
  head_grads: str = 'weighted'
  min_tasks: int = 1
  after_step: Optional[Callable[[PyTree, jax.Array, jax.Array], PyTree]] = None
  random: bool = False
  direct: bool = False
  state_like_params: bool = False
  sub_batches: int = 1
  head_scale: Optional[Callable[[jax.Array], jax.Array]] = None
  bilevel: bool = False
