"""FORUM: a first-order multi-gradient method for multi-objective bilevel task weighting."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import bilevel, checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


class FORUMState(NamedTuple):
  logits: bilevel.LogitState       # w [T] of lambda = softmax(w), and its optimizer state
  buffer: jax.Array                # the averaged QP multipliers [T]


def inner_losses(params, loss_fn, weights, inner_step: int, inner_lr: float):
  """L^in after ``inner_step`` SGD steps on sum_t weights_t L_t^in from ``params`` (steps
  stop once that loss exceeds 1e5, as a too large inner_lr makes it diverge)."""
  num = weights.shape[0]
  value = lambda p: jnp.dot(weights, loss_fn(p)[:num])

  def body(_, carry):
    p, stopped = carry
    loss, grads = jax.value_and_grad(value)(p)
    stopped = stopped | (loss > 1e5) | ~jnp.isfinite(loss)
    moved = jax.tree.map(lambda a, g: a - inner_lr * g, p, grads)
    return jax.tree.map(lambda a, b: jnp.where(stopped, b, a), moved, p), stopped

  params, _ = jax.lax.fori_loop(0, inner_step, body, (params, jnp.zeros((), bool)))
  return jax.lax.stop_gradient(loss_fn(params)[:num])


def multipliers(g: jax.Array, lam: jax.Array, delta: jax.Array, phi: float):
  """The QP's task multipliers w [T], pi [T] and the normalising norms of the outer rows.

  g: [2T, 2T] Gram matrix of the inner (first T) and outer rows; lam = softmax(w); delta =
  grad_w f(w, theta) - grad_w f(w, theta^K).  A = [g^_out_1..T; grad q] with g^_out_t the
  unit outer gradients and grad q = (delta, sum_s lam_s g_in_s);  M = A A^T;
  pi_t = phi - (g^_out_t . grad q) / (||grad q||^2 + 1e-8);  min w^T M w - phi (||grad q||^2 +
  1e-8) w_{T+1} over w >= 0, sum_{t <= T} w_t = 1, w_{T+1} >= pi^T w_{1..T}."""
  num = lam.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(g)[num:], 0))
  norms = jnp.where(norms > checks.EPS, norms, 1.0)
  g_ff = g[num:, num:] / jnp.outer(norms, norms)
  g_qf = (lam @ g[:num, num:]) / norms
  q2 = delta @ delta + lam @ g[:num, :num] @ lam
  pi = phi - g_qf / (q2 + 1e-8)
  m = jnp.block([[g_ff, g_qf[:, None]], [g_qf[None, :], (q2 + 1e-8)[None, None]]])
  n = num + 1
  last = jnp.eye(n, dtype=g.dtype)[-1]
  a_eq = (1 - last)[None, :]
  c_in = jnp.concatenate([jnp.eye(n, dtype=g.dtype), jnp.append(-pi, 1.0)[None, :]])
  w = solvers.small_qp(2 * m, -phi * (q2 + 1e-8) * last, a_eq, jnp.ones((1,), g.dtype), c_in,
                       jnp.zeros((n + 1,), g.dtype))
  return jnp.clip(w[:num], 0, None), pi, norms


@registry.WEIGHTINGS.register('forum')
def forum(phi: float = 0.1, inner_lr: float = 0.1, inner_step: int = 5,
          outer_lr: float = 1e-3, outer_optimizer: str = 'adam',
          steps_per_epoch: int = 0) -> Weighting:
  """FORUM: multi-objective bilevel task weighting by a first-order value-function method.

  Ye, Lin, Zhang, Liu, Ying and Zhang (2024), "A First-Order Multi-Gradient Algorithm for
  Multi-Objective Bi-Level Optimization", ECAI 2024.

  The lower level f(w, theta) = sum_t lambda_t L_t^in(theta), lambda = softmax(w), on the
  inner half-batch; the upper level the outer half's task losses L_t^out(theta).  The
  constraint q(w, theta) = f(w, theta) - f(w, theta^K) <= 0, theta^K after ``inner_step`` SGD
  steps of rate ``inner_lr`` on f (a fresh copy of every parameter; stopped when f > 1e5),
  has gradient grad q = (delta, grad_theta f) with delta = J_softmax(w)^T (L^in(theta) -
  L^in(theta^K)).  Multipliers w_t of the unit outer gradients g^_t and pi (see
  ``multipliers``) solve a small QP (jittable: ``solvers.small_qp``); their average
  lambda_bar += (w - lambda_bar) / (e + 1)^(3/4) over epochs e; nu = max(lambda_bar . pi, 0).
  The parameters' direction is sum_t lambda_bar_t g^_t + nu grad_theta f: row weights
  lambda_bar_t / ||g_out_t|| on the outer half, nu lambda_t on the inner half (task-specific
  parameters weighted alike); w takes one ``outer_optimizer`` step along nu delta.
  Gram matrices here cover the shared parameters (LibMTL's include the task-specific ones).
  Cost beyond a Gram method's step: ``inner_step`` + 1 forward and backward passes.

  Args:
    phi: the constraint's weight phi (> 0; LibMTL's 0.1).
    inner_lr: the lower level's SGD learning rate (> 0; LibMTL's 0.1).
    inner_step: K, the lower level's SGD steps (>= 1; LibMTL's 5).
    outer_lr: the learning rate of w (> 0; LibMTL's 1e-3).
    outer_optimizer: the optax optimizer of w, by name (LibMTL: Adam).
    steps_per_epoch: steps per epoch e of the multipliers' average (0: the data's epoch in
      the trainer, else 1).

  Returns:
    The ``Weighting`` (bilevel, 2 sub-batches; state: w, its optimizer state, lambda_bar).
  """
  phi = checks.check_finite('forum', 'phi', phi, minimum=0.0, strict=True)
  inner_lr = checks.check_finite('forum', 'inner_lr', inner_lr, minimum=0.0, strict=True)
  if isinstance(inner_step, bool) or not isinstance(inner_step, (int, np.integer)) or (
      inner_step < 1):
    raise ValueError(f'forum: inner_step must be an integer >= 1, got {inner_step!r}')
  if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, (int, np.integer)) or (
      steps_per_epoch < 0):
    raise ValueError(f'forum: steps_per_epoch must be an integer >= 0, got {steps_per_epoch!r}')
  outer = bilevel.optimizer('forum', 'outer_optimizer', outer_optimizer, outer_lr)

  def init(num_tasks):
    return FORUMState(bilevel.init_logits(outer, num_tasks), jnp.zeros((num_tasks,), float))

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num = g.shape[0] // 2
    lam = jax.nn.softmax(state.logits.logits).astype(g.dtype)
    before = inputs.losses[:num].astype(g.dtype)
    after = inner_losses(inputs.params, inputs.loss_fn, lam, inner_step, inner_lr)
    jac_softmax = jnp.diag(lam) - jnp.outer(lam, lam)
    delta = jac_softmax @ (before - after.astype(g.dtype))
    w, pi, norms = multipliers(g, lam, delta, phi)
    epoch = inputs.step // max(steps_per_epoch, 1)
    rate = (1.0 / (epoch + 1)) ** 0.75
    buffer = state.buffer + rate * (w.astype(state.buffer.dtype) - state.buffer)
    nu = jnp.maximum(buffer.astype(g.dtype) @ pi, 0)
    logits = bilevel.step_logits(outer, state.logits, nu * delta)
    weights = jnp.concatenate([nu * lam, buffer.astype(g.dtype) / norms])
    return WeightingResult(weights, FORUMState(logits, buffer), aux={'nu': nu})

  return Weighting('forum', Needs.GRAM, init=init, update=update, min_tasks=2, sub_batches=2,
                   bilevel=True)
