"""Auto-Lambda: task weights learned from the outer loss after a virtual step."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import bilevel, checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def _primary_mask(primary, num_tasks: int) -> np.ndarray:
  """[T] 1 on the primary tasks (all when ``primary`` is None)."""
  if primary is None:
    return np.ones(num_tasks, np.float32)
  mask = np.zeros(num_tasks, np.float32)
  for t in primary:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < num_tasks:
      raise ValueError(f'auto_lambda: primary must hold task indices in [0, {num_tasks}), '
                       f'got {tuple(primary)!r}')
    mask[t] = 1.0
  return mask


def hypergradient(inner, logits: jax.Array, params, loss_fn, primary: jax.Array) -> jax.Array:
  """d/dw sum_t primary_t L_t^out(theta'(w)), theta'(w) the virtual step on the inner half
  with weights softmax(w): exact (``jax.grad`` through the step)."""
  num = logits.shape[0]

  def outer_loss(w):
    moved = bilevel.virtual_step(inner, params, loss_fn, jax.nn.softmax(w))
    return jnp.dot(primary, loss_fn(moved)[num:])

  return jax.grad(outer_loss)(logits)


@registry.WEIGHTINGS.register('auto_lambda')
def auto_lambda(inner_lr: float = 1e-3, inner_optimizer: str = 'sgd', outer_lr: float = 1e-3,
                outer_optimizer: str = 'adam', primary: Optional[tuple] = None,
                match_sum: bool = True) -> Weighting:
  """Auto-Lambda: task weights that minimise the primary tasks' loss after a virtual step.

  Liu, Johns and Davison (2022), "Auto-Lambda: Disentangling Dynamic Task Relationships",
  TMLR 2022.

  lambda = softmax(w) (w = 0 at first).  Each step splits the batch into an inner and an
  outer half (``sub_batches=2``), takes the virtual step theta' = theta - eta grad_theta
  sum_t lambda_t L_t^in(theta) (one step of ``inner_optimizer`` from a fresh state), and moves
  w by one ``outer_optimizer`` step along the exact hypergradient
  d/dw sum_{t primary} L_t^out(theta'(w)), computed by ``jax.grad`` through the virtual step
  (the authors and LibMTL approximate its Hessian-vector product by finite differences).
  The parameters then take the ordinary step on sum_t lambda_t L_t over the whole batch, with
  the new lambda (x T under ``match_sum``); task-specific parameters get weighted gradients.
  Cost per step, beyond an ``ew`` step: the inner gradient (a forward and backward pass over
  the batch), a forward and backward pass at theta', and the backward pass through the inner
  gradient (second order): about 3 more forward/backward pairs.  The virtual step moves every
  parameter (shared and task-specific), with the model state of the step's start.

  Args:
    inner_lr: the virtual step's learning rate eta (> 0; the authors use the model's).
    inner_optimizer: the optax optimizer of the virtual step, by name.
    outer_lr: the learning rate of w (> 0; LibMTL's default 1e-3).
    outer_optimizer: the optax optimizer of w, by name (LibMTL: Adam).
    primary: indices of the primary tasks whose outer loss is minimised (None: every task;
      a subset gives auxiliary learning).
    match_sum: multiply lambda by T to compare with the sum of losses; False: sum 1 (LibMTL).

  Returns:
    The ``Weighting`` (bilevel, 2 sub-batches; state: w and its optimizer state).
  """
  inner = bilevel.optimizer('auto_lambda', 'inner_optimizer', inner_optimizer, inner_lr)
  outer = bilevel.optimizer('auto_lambda', 'outer_optimizer', outer_optimizer, outer_lr)
  match_sum = checks.check_bool('auto_lambda', 'match_sum', match_sum)
  if primary is not None and not isinstance(primary, (tuple, list)):
    raise ValueError(f'auto_lambda: primary must be a tuple of task indices, got {primary!r}')

  def init(num_tasks):
    _primary_mask(primary, num_tasks)
    return bilevel.init_logits(outer, num_tasks)

  def update(inputs, state, key):
    del key
    num = inputs.losses.shape[0] // 2
    mask = jnp.asarray(_primary_mask(primary, num))
    grad = hypergradient(inner, state.logits, inputs.params, inputs.loss_fn, mask)
    state = bilevel.step_logits(outer, state, grad)
    weights = checks.match_sum(jax.nn.softmax(state.logits), match_sum)
    return WeightingResult(bilevel.halves(weights), state)

  return Weighting('auto_lambda', Needs.LOSSES, init=init, update=update, min_tasks=1,
                   sub_batches=2, bilevel=True)
