"""The weighting interface: how per-task losses (and gradients) become one update direction.

A method is a pair of pure functions, in the style of ``optax.GradientTransformation``:

    state = method.init(num_tasks)
    result = method.update(inputs, state, key)      # -> WeightingResult

and declares what it ``needs`` from the engine: loss values only, the Gram matrix
G = J J^T, the per-task Jacobian J (task-stacked gradients of the shared parameters), or
per-task gradients w.r.t. the shared representation.  Every method is linear in the
gradients: it returns coefficients alpha [T], and the engine forms the shared-parameter
direction d = alpha^T J (one vector-Jacobian product with cotangent alpha, or a contraction
of the J in hand).
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


class WeightingResult(NamedTuple):
  """A method's output: coefficients alpha [T], its new state, optional scalars to log.

  ``aux`` is None or a dict of scalars (read it as ``result.aux or {}``).
  """
  weights: jax.Array
  state: PyTree
  aux: Optional[dict] = None


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
  """
  name: str
  needs: Needs
  init: Callable[[int], PyTree]
  update: Callable[[WeightingInputs, PyTree, Optional[jax.Array]], WeightingResult]
  head_grads: str = 'weighted'
  min_tasks: int = 1
  after_step: Optional[Callable[[PyTree, jax.Array, jax.Array], PyTree]] = None
  random: bool = False
