"""PCD: priority-constrained descent (the first task is the primary objective)."""

from typing import Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def pcd_multipliers(g, taus, *, tol: float, dependence_tol: float, max_iters: int):
  """(mu >= 0 [T-1], feasible): the multipliers of min_d 1/2 ||d - g_1||^2 subject to
  g_j . d >= tau_j ||g_j||^2 (j >= 2), so that d = g_1 + sum_j mu_j g_j.

  The dual active-set method of Goldfarb and Idnani (1983), Math. Programming 27, for an
  identity Hessian, in the Gramian alone (with b_j = tau_j G_jj - G_j1, a constraint's
  slack is (G_s mu - b)_j, G_s the secondary block).  The most violated constraint p (slack
  below -tol max diag G) is added: the dual step moves mu_p up and the active mu_A by
  -r, r = G_AA^(-1) G_Ap; z = G_pp - G_pA r is the squared norm of g_p's component
  orthogonal to the active gradients (dependent when z <= dependence_tol G_pp).  The step
  is the smaller of the full step (-slack_p / z, which makes p active) and the partial step
  (the first active mu_j to reach 0, which leaves the set); both infinite means the
  constraints are infeasible.  At most ``max_iters`` steps (a guard against cycling by
  rounding)."""
  m = g.shape[0] - 1
  gs = g[1:, 1:]
  b = taus * jnp.diag(gs) - g[1:, 0]
  atol = tol * jnp.maximum(jnp.max(jnp.diag(g)), jnp.finfo(g.dtype).tiny)
  idx = jnp.arange(m)

  def step(s):
    k, mu, active, p, slack_p, _, infeasible = s
    slacks = jnp.where(active, 0, gs @ mu - b)
    choose = p < 0
    p = jnp.where(choose, jnp.argmin(slacks).astype(jnp.int32), p)
    slack_p = jnp.where(choose, slacks[p], slack_p)
    done = choose & (slack_p >= -atol)
    pair = active[:, None] & active[None, :]
    r = jnp.linalg.solve(jnp.where(pair, gs, 0) + jnp.diag(jnp.where(active, 0, 1)),
                         jnp.where(active, gs[:, p], 0))
    z = gs[p, p] - gs[p] @ r
    ratios = jnp.where(active & (r > 0), mu / jnp.where(r > 0, r, 1), jnp.inf)
    leave = jnp.argmin(ratios)
    partial = ratios[leave]
    full = jnp.where(z > dependence_tol * gs[p, p], -slack_p / jnp.where(z > 0, z, 1), jnp.inf)
    size = jnp.minimum(partial, full)
    stuck = ~done & jnp.isinf(size)
    go = ~done & ~stuck
    mu_new = mu - jnp.where(active, size * r, 0) + jnp.where(idx == p, size, 0)
    add = full <= partial
    mu_new = jnp.where(add | (idx != leave), mu_new, 0)
    active_new = jnp.where(add, active | (idx == p), active & (idx != leave))
    slack_new = gs[p] @ mu_new - b[p]
    return (k + go.astype(k.dtype), jnp.where(go, mu_new, mu), jnp.where(go, active_new, active),
            jnp.where(go & ~add, p, -1).astype(jnp.int32), jnp.where(go, slack_new, slack_p),
            done | stuck, infeasible | stuck)

  init = (jnp.zeros((), jnp.int32), jnp.zeros((m,), g.dtype), jnp.zeros((m,), bool),
          jnp.full((), -1, jnp.int32), jnp.zeros((), g.dtype), jnp.zeros((), bool),
          jnp.zeros((), bool))
  out = lax.while_loop(lambda s: (s[0] < max_iters) & ~s[5], step, init)
  return jnp.maximum(out[1], 0), ~out[6]



@registry.WEIGHTINGS.register('pcd')
def pcd(tau: Union[float, Sequence[float]] = 0.02, beta: float = 0.999,
        eps: float = 1e-8) -> Weighting:
  """PCD: follow the first task's gradient as closely as the others' guaranteed progress
  allows.

  Varam et al. (2026), "Not All Objectives Are Born Equal: Priority-Constrained Descent for
  Hierarchical Multi-Objective Optimization", TMLR 2026 (torchjd's ``PCD``).

  With normalised gradients g~_t = s_t g_t, s_t = 1 / sqrt(v^_t + eps), v^_t the
  bias-corrected EMA (decay beta) of ||g_t||^2 over the steps (the state),

      d~ = argmin_d 1/2 ||d - g~_1||^2  s.t.  g~_j . d >= tau_j ||g~_j||^2  (j = 2..T),

  solved exactly in the Gramian by ``pcd_multipliers``: d~ = sum_t w_t g~_t with
  w = [1, mu].  Then d = d~ ||g_1|| / ||d~||, so alpha_t = w_t s_t ||g_1|| / ||d~||.  The
  first task (in the config's task order) is the primary objective.  Special cases (as
  torchjd): g_1 = 0 gives d = 0; infeasible constraints (0 in the cone of secondary
  gradients with tau > 0) are dropped, d = g_1; ||d~||^2 at the rounding level of the Gramian
  (10 eps(dtype) (sum_t |w_t| ||g~_t||)^2) gives d = 0; a non-finite G gives NaN weights and
  leaves the EMA unchanged.  Solved in G's dtype (torchjd: float64 on the CPU), with the
  constraint tolerance max(1e-9, 10 eps) max diag G and the dependence tolerance
  max(1e-9, 10 eps).  Task-specific parameters get unweighted gradients.

  Args:
    tau: the fraction in [0, 1] of its normalised progress each secondary task is
      guaranteed: one value, or one per secondary task (T - 1 values).
    beta: EMA decay of the squared norms, in [0, 1).
    eps: added to the EMA before the inverse square root (>= 0).

  Returns:
    The ``Weighting`` (state: {'sq_norm_ema': [T], 'count': int}; at least 2 tasks).
  """
  tau = checks.check_vector('pcd', 'tau', tau, scalar=True, low=0.0, high=1.0)
  beta = checks.check_finite('pcd', 'beta', beta, minimum=0.0)
  if beta >= 1:
    raise ValueError(f'pcd: beta must be < 1.0, got {beta}')
  eps = checks.check_finite('pcd', 'eps', eps, minimum=0.0)

  def taus(num, dtype):
    if tau.ndim == 1 and tau.shape != (num - 1,):
      raise ValueError(f'pcd: {tau.size} tau values given for {num - 1} secondary tasks '
                       f'(T = {num})')
    return jnp.broadcast_to(jnp.asarray(tau, dtype), (num - 1,))

  def init(num_tasks):
    taus(num_tasks, jnp.float32)
    return {'sq_norm_ema': jnp.zeros((num_tasks,), float), 'count': jnp.zeros((), jnp.int32)}

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num, dtype = g.shape[0], g.dtype
    finite = jnp.all(jnp.isfinite(g))
    sq = jnp.diag(g)
    count = state['count'] + 1
    ema = beta * state['sq_norm_ema'].astype(dtype) + (1 - beta) * sq
    den = jnp.sqrt(ema / (1 - beta ** count.astype(dtype)) + eps)
    scales = jnp.where(den > 0, 1 / jnp.where(den > 0, den, 1), 0)
    precision = 10 * float(jnp.finfo(dtype).eps)
    ng = jnp.where(finite, g, 0) * jnp.outer(scales, scales)
    mu, feasible = pcd_multipliers(ng, taus(num, dtype), tol=max(1e-9, precision),
                                   dependence_tol=max(1e-9, precision), max_iters=10 * num)
    w = jnp.concatenate([jnp.ones((1,), dtype), jnp.where(feasible, mu, 0)])
    norm2 = w @ ng @ w
    size = (jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diag(ng), 0))) ** 2
    ok = (sq[0] > 0) & (norm2 > precision * size)
    weights = jnp.where(ok, w * scales * jnp.sqrt(sq[0] / jnp.where(ok, norm2, 1)), 0)
    new = {'sq_norm_ema': ema.astype(state['sq_norm_ema'].dtype), 'count': count}
    return WeightingResult(jnp.where(finite, weights, jnp.nan),
                           jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state))

  return Weighting('pcd', Needs.GRAM, init=init, update=update, head_grads='unweighted',
                   min_tasks=2)
