"""MOML: multi-objective meta learning of the task weights."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import bilevel, checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def task_hypergradients(inner, logits: jax.Array, params, loss_fn) -> jax.Array:
  """H [T, T]: row t is d/dw L_t^out(theta'(w)), theta'(w) the virtual step on the inner
  half with weights softmax(w); exact (``jax.jacrev`` through the step)."""
  num = logits.shape[0]

  def outer_losses(w):
    moved = bilevel.virtual_step(inner, params, loss_fn, jax.nn.softmax(w))
    return loss_fn(moved)[num:]

  return jax.jacrev(outer_losses)(logits)


def combine_hypergradients(h: jax.Array, max_iters: int) -> jax.Array:
  """sum_t s_t h_t / ||h_t||, s the min-norm point of the convex hull of the normalised rows
  (MGDA with 'l2' normalisation); zero rows stay zero."""
  norms = jnp.linalg.norm(h, axis=1)
  unit = h / jnp.where(norms > checks.EPS, norms, 1.0)[:, None]
  s = solvers.min_norm_simplex(unit @ unit.T, max_iters=max_iters)
  return s @ unit


@registry.WEIGHTINGS.register('moml')
def moml(inner_lr: float = 0.1, inner_optimizer: str = 'sgd', outer_lr: float = 1e-3,
         outer_optimizer: str = 'adam', max_iters: int = 250,
         match_sum: bool = True) -> Weighting:
  """MOML: task weights from the multi-objective (MGDA) combination of the tasks'
  hypergradients.

  Ye, Liu, Xu, Shi, Tang and Zhang (2021), "Multi-Objective Meta Learning", NeurIPS 2021.

  lambda = softmax(w) (w = 0 at first).  Each step splits the batch into an inner and an
  outer half (``sub_batches=2``) and takes the virtual step theta' = theta - eta grad_theta
  sum_t lambda_t L_t^in(theta) (one step of ``inner_optimizer`` from a fresh state).  Every
  outer task t has its own hypergradient h_t = d/dw L_t^out(theta'(w)) (exact, ``jax.jacrev``
  through the step: T backward passes, vmapped); the upper level is multi-objective, so w
  moves by one ``outer_optimizer`` step along the MGDA direction of the h_t (normalised to
  unit length, min-norm point of their convex hull: LibMTL's choice).  The parameters then
  take the ordinary step on sum_t lambda_t L_t over the whole batch with the new lambda
  (x T under ``match_sum``); task-specific parameters get weighted gradients.  Cost beyond an
  ``ew`` step: the inner gradient, a forward pass at theta' and T backward passes through it
  and the inner gradient (second order).

  Args:
    inner_lr: the virtual step's learning rate (> 0; LibMTL's default 0.1).
    inner_optimizer: the optax optimizer of the virtual step, by name.
    outer_lr: the learning rate of w (> 0; LibMTL's default 1e-3).
    outer_optimizer: the optax optimizer of w, by name (LibMTL: Adam).
    max_iters: iteration cap of the min-norm solver (T > 2).
    match_sum: multiply lambda by T to compare with the sum of losses; False: sum 1 (LibMTL).

  Returns:
    The ``Weighting`` (bilevel, 2 sub-batches; state: w and its optimizer state).
  """
  inner = bilevel.optimizer('moml', 'inner_optimizer', inner_optimizer, inner_lr)
  outer = bilevel.optimizer('moml', 'outer_optimizer', outer_optimizer, outer_lr)
  match_sum = checks.check_bool('moml', 'match_sum', match_sum)

  def update(inputs, state, key):
    del key
    h = task_hypergradients(inner, state.logits, inputs.params, inputs.loss_fn)
    state = bilevel.step_logits(outer, state, combine_hypergradients(h, max_iters))
    weights = checks.match_sum(jax.nn.softmax(state.logits), match_sum)
    return WeightingResult(bilevel.halves(weights), state)

  return Weighting('moml', Needs.LOSSES, init=lambda num: bilevel.init_logits(outer, num),
                   update=update, min_tasks=2, sub_batches=2, bilevel=True)
