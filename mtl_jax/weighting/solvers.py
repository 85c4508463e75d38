"""Jittable solvers for the small convex programs behind gradient weighting.

Every solver takes a float32 Gram matrix G = J J^T [T, T] (symmetric PSD), is pure
``jax.numpy`` with fixed iteration caps (``lax.while_loop``/``fori_loop``), so it can be
jitted and vmapped over a batch of problems, and returns finite values for degenerate G
(zero rows, colinear or opposite gradients, G = 0, rank(G) < T).

* ``project_to_simplex(v)``:      argmin_{w in simplex} ||w - v||.
* ``min_norm_simplex(G)``:        argmin_{w in simplex} w^T G w                  (MGDA).
* ``nonneg_qp(Q, q)``:            argmin_{x >= 0} 1/2 x^T Q x + q^T x.
* ``upgrad_weights(G, u)``:       alpha = sum_i argmin_{v >= u_i e_i} v^T G~ v  (UPGrad).
* ``dualproj_weights(G, u)``:     alpha = argmin_{v >= u} v^T G~ v              (DualProj).
* ``cagrad_weights(G, c)``:       argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w).
* ``nash_mtl_weights(G)``:        alpha > 0 with G alpha = 1 / alpha            (Nash-MTL).

Constrained problems run accelerated projected gradient (FISTA with backtracking and
restart) to find the active set, then a few primal-dual active-set Newton steps (each an
equality-constrained solve on the free set, slightly proximal) make the answer exact; the
best feasible point seen is returned, so the polish can only improve the objective.
Problems are normalised by the trace of G first: the weights are invariant to G -> sG
(Nash-MTL is covariant instead: alpha -> alpha / sqrt(s)).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

_TINY = 1e-30          # traces below this count as G = 0
_SMOOTHING = 1e-12     # CAGrad: ||g_w|| ~ sqrt(w^T G w + _SMOOTHING tr G)


def project_to_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection onto {w >= 0, sum w = 1}: w = max(v - tau, 0), tau by sorting."""
  u = jnp.sort(v)[::-1]
  excess = jnp.cumsum(u) - 1
  k = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
  rho = jnp.max(jnp.where(u - excess / k > 0, k, 1)).astype(jnp.int32)
  return jnp.maximum(v - excess[rho - 1] / rho, 0)


def _nonneg(x):
  return jnp.maximum(x, 0)


def _top_eigenvalue(a: jax.Array, iters: int = 16) -> jax.Array:
  """Rayleigh quotient after ``iters`` power iterations (a lower estimate of lambda_max)."""
  v0 = jnp.cos(1.7 * jnp.arange(a.shape[0], dtype=a.dtype)) + 1.5

  def step(_, v):
    av = a @ v
    return av / jnp.maximum(jnp.linalg.norm(av), _TINY)

  v = lax.fori_loop(0, iters, step, v0 / jnp.linalg.norm(v0))
  return v @ a @ v


def _fista(fun: Callable, project: Callable, x0, lipschitz, max_iters: int, tol: float):
  """Monotone FISTA: x <- P(y - grad f(y) / L), doubling L when the quadratic upper bound
  fails, restarting the momentum when f increases; stops when L ||x - y||_inf <= tol."""
  f0, g0 = fun(x0)
  one = jnp.ones((), x0.dtype)

  def cond(s):
    return (s[0] < max_iters) & ~s[-1]

  def body(s):
    k, x, fx, y, fy, gy, t, lip, _ = s
    z = project(y - gy / lip)
    d = z - y
    fz, _ = fun(z)
    slack = 1e-6 * (jnp.abs(fy) + jnp.abs(gy) @ jnp.abs(y))   # float32 rounding of f
    accept = fz <= fy + gy @ d + 0.5 * lip * (d @ d) + slack
    descent = accept & (fz <= fx)
    t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    x_new = jnp.where(descent, z, x)
    y_new = jnp.where(descent, z + (t - 1) / t_next * (z - x), jnp.where(accept, x, y))
    t_new = jnp.where(descent, t_next, jnp.where(accept, one, t))
    fy_new, gy_new = fun(y_new)
    done = accept & (lip * jnp.max(jnp.abs(d)) <= tol)
    return (k + 1, x_new, jnp.where(descent, fz, fx), y_new, fy_new, gy_new, t_new,
            jnp.where(accept, lip, 2 * lip), done)

  init = (0, x0, f0, x0, f0, g0, one, jnp.maximum(lipschitz, _TINY), jnp.zeros((), bool))
  return lax.while_loop(cond, body, init)[1]


def _active_set_newton(fun_hess: Callable, x0, lipschitz, simplex: bool, steps: int,
                       ridge: float = 1e-6):
  """Primal-dual active-set Newton steps on {x >= 0} (and sum x = 1 if ``simplex``).

  Free set F = {x - mu / L > 0} (mu: bound multipliers); on F solve the Newton (KKT)
  system of f's quadratic model, Jacobi-equilibrated, with a proximal ridge; x_A = 0.
  Returns the feasible projection of the iterates (x0 included) with the smallest
  gradient mapping L ||x - P(x - grad f(x) / L)||_inf."""
  n = x0.shape[0]
  project = project_to_simplex if simplex else _nonneg

  def merit(x):
    return jnp.max(jnp.abs(x - project(x - fun_hess(x)[1] / lipschitz)))

  def step(_, s):
    x, mu, best, best_merit = s
    _, g, h = fun_hess(x)
    free = x - mu / lipschitz > 0
    fm = free.astype(x.dtype)
    diag = jnp.where(free, jnp.maximum(jnp.diag(h), 1e-8 * lipschitz), 1)
    sc = fm / jnp.sqrt(diag) + (1 - fm)                 # solve for y = x / sc
    m = (sc * fm)[:, None] * h * (sc * fm)[None, :] + jnp.diag(jnp.where(free, ridge, 1))
    rhs = sc * fm * (h @ x - g + ridge * diag * x)
    if simplex:                                         # unknown lambda: G_F x_F - lambda 1 = .
      border = (sc * fm)[:, None]
      m = jnp.block([[m, -border], [border.T, jnp.zeros((1, 1), x.dtype)]])
      rhs = jnp.append(rhs, 1)
      sc = jnp.append(sc, 1)
    lu = jax.scipy.linalg.lu_factor(m)
    sol = jax.scipy.linalg.lu_solve(lu, rhs)
    sol = sc * (sol + jax.scipy.linalg.lu_solve(lu, rhs - m @ sol))    # one refinement
    ok = jnp.all(jnp.isfinite(sol))
    x_new = jnp.where(ok, sol[:n], best)
    g_new = fun_hess(x_new)[1]
    mu_new = jnp.where(free | ~ok, 0, g_new - sol[n] if simplex else g_new)
    cand = project(x_new)
    cand_merit = merit(cand)
    better = ok & (cand_merit <= best_merit)
    return (x_new, mu_new, jnp.where(better, cand, best),
            jnp.where(better, cand_merit, best_merit))

  g0 = fun_hess(x0)[1]
  mu0 = g0 - x0 @ g0 if simplex else g0
  return lax.fori_loop(0, steps, step, (x0, mu0, x0, merit(x0)))[2]


def _quadratic(q_mat, q_vec):
  """(f, grad, hess) of f(x) = 1/2 x^T Q x + q^T x."""
  def fun_hess(x):
    qx = q_mat @ x
    return 0.5 * x @ qx + q_vec @ x, qx + q_vec, q_mat
  return fun_hess


def _solve_constrained(fun_hess, x0, lipschitz, simplex, max_iters, tol, newton_steps):
  project = project_to_simplex if simplex else _nonneg
  x = _fista(lambda x: fun_hess(x)[:2], project, x0, lipschitz, max_iters, tol)
  return _active_set_newton(fun_hess, x, lipschitz, simplex, newton_steps)


def _trace_scale(g: jax.Array):
  """(tr G if tr G > _TINY else 1, whether it is)."""
  tr = jnp.trace(g)
  ok = tr > _TINY
  return jnp.where(ok, tr, 1), ok


def min_norm_simplex(g: jax.Array, *, max_iters: int = 500, tol: float = 1e-6,
                     newton_steps: int = 4) -> jax.Array:
  """w* = argmin_{w in simplex} w^T G w: the min-norm point J^T w* of the convex hull.

  T = 2: w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1) (1/2 if g_1 = g_2).
  T > 2: FISTA + active-set Newton on G / tr G, from w = 1/T. G = 0 gives w = 1/T."""
  num = g.shape[0]
  if num == 1:
    return jnp.ones((1,), g.dtype)
  if num == 2:
    den = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    pos = den > 0
    w1 = jnp.where(pos, jnp.clip((g[1, 1] - g[0, 1]) / jnp.where(pos, den, 1), 0, 1), 0.5)
    return jnp.stack([w1, 1 - w1])
  scale, ok = _trace_scale(g)
  gn = g / scale
  uniform = jnp.full((num,), 1 / num, g.dtype)
  w = _solve_constrained(_quadratic(gn, jnp.zeros_like(uniform)), uniform,
                         _top_eigenvalue(gn), True, max_iters, tol, newton_steps)
  return jnp.where(ok, w, uniform)


def nonneg_qp(q_mat: jax.Array, q_vec: jax.Array, *, max_iters: int = 500,
              tol: float = 1e-6, newton_steps: int = 4) -> jax.Array:
  """x* = argmin_{x >= 0} 1/2 x^T Q x + q^T x for symmetric positive-definite Q.

  FISTA + active-set Newton on (Q, q) / (tr Q / T), from max(-q / diag Q, 0)."""
  num = q_mat.shape[0]
  scale, ok = _trace_scale(q_mat)
  scale = scale / num
  qn, cn = q_mat / scale, q_vec / scale
  x0 = _nonneg(-cn / jnp.maximum(jnp.diag(qn), 1e-6))
  x = _solve_constrained(_quadratic(qn, cn), x0, _top_eigenvalue(qn), False, max_iters,
                         tol, newton_steps)
  return jnp.where(ok, x, jnp.zeros_like(x))


def _regularised_gram(g, norm_eps, reg_eps):
  """G~ = G / tr G (0 if tr G < norm_eps) + reg_eps I."""
  tr = jnp.trace(g)
  big = tr >= norm_eps
  gn = jnp.where(big, g / jnp.where(big, tr, 1), 0)
  return gn + reg_eps * jnp.eye(g.shape[0], dtype=g.dtype)


def _preference(g, preference):
  num = g.shape[0]
  if preference is None:
    return jnp.full((num,), 1 / num, g.dtype)
  return jnp.broadcast_to(jnp.asarray(preference, g.dtype), (num,))


def upgrad_weights(g: jax.Array, preference: Optional[jax.Array] = None, *,
                   norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iters: int = 500,
                   tol: float = 1e-6) -> jax.Array:
  """alpha = sum_i v_i, v_i = argmin_{v >= u_i e_i} v^T G~ v (u = 1/T by default):
  d = J^T alpha = sum_i u_i (projection of g_i onto the dual cone {x: J x >= 0})."""
  gt = _regularised_gram(g, norm_eps, reg_eps)
  lower = jnp.diag(_preference(g, preference))      # row i: u_i e_i
  solve = lambda l: l + nonneg_qp(gt, gt @ l, max_iters=max_iters, tol=tol)
  return jnp.sum(jax.vmap(solve)(lower), axis=0)


def dualproj_weights(g: jax.Array, preference: Optional[jax.Array] = None, *,
                     norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iters: int = 500,
                     tol: float = 1e-6) -> jax.Array:
  """alpha = argmin_{v >= u} v^T G~ v (u = 1/T by default): projection of J^T u onto the
  dual cone {x: J x >= 0}."""
  gt = _regularised_gram(g, norm_eps, reg_eps)
  u = _preference(g, preference)
  return u + nonneg_qp(gt, gt @ u, max_iters=max_iters, tol=tol)


def cagrad_weights(g: jax.Array, c, *, max_iters: int = 1000, tol: float = 1e-6,
                   newton_steps: int = 4) -> jax.Array:
  """w* = argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w), ||g0||^2 = 1^T G 1 / T^2.

  FISTA + active-set Newton on G / tr G (sqrt smoothed by 1e-12 tr G), from w = 1/T."""
  num = g.shape[0]
  scale, ok = _trace_scale(g)
  gn = g / scale
  b = jnp.mean(gn, axis=1)
  k = c * jnp.sqrt(_nonneg(jnp.sum(b)) / num)

  def fun_hess(w):
    gw = gn @ w
    r = jnp.sqrt(_nonneg(w @ gw) + _SMOOTHING)
    hess = k * (gn / r - jnp.outer(gw, gw) / r**3)
    return b @ w + k * r, b + k * gw / r, hess

  uniform = jnp.full((num,), 1 / num, g.dtype)
  lipschitz = k * _top_eigenvalue(gn) / jnp.sqrt(_nonneg(jnp.sum(b)) / num + _SMOOTHING)
  w = _solve_constrained(fun_hess, uniform, lipschitz, True, max_iters, tol, newton_steps)
  return jnp.where(ok, w, uniform)


def cagrad_alpha(g: jax.Array, c=0.4, rescale: int = 1, **solver_kwargs) -> jax.Array:
  """CAGrad coefficients alpha = 1/T + c ||g0|| / ||g_w*|| w*, divided by 1 (rescale 0),
  1 + c^2 (1) or 1 + c (2); the correction is dropped if ||g_w*||^2 < 1e-8 tr G / T."""
  if rescale not in (0, 1, 2):
    raise ValueError(f'cagrad: rescale must be 0, 1 or 2, got {rescale!r}')
  num = g.shape[0]
  w = cagrad_weights(g, c, **solver_kwargs)
  g0_norm = jnp.sqrt(_nonneg(jnp.sum(g))) / num
  gw_sq = _nonneg(w @ g @ w)
  big = gw_sq > 1e-8 * jnp.trace(g) / num
  coef = jnp.where(big, c * g0_norm / jnp.sqrt(jnp.where(big, gw_sq, 1)), 0)
  alpha = 1 / num + coef * w
  return alpha / (1.0, 1 + c**2, 1 + c)[rescale]


def nash_mtl_weights(g: jax.Array, alpha_init: Optional[jax.Array] = None, *,
                     max_iters: int = 50, tol: float = 1e-6, eps: float = 1e-5) -> jax.Array:
  """alpha > 0 with G_eps alpha = 1 / alpha, G_eps = G + eps (tr G / T) I: the minimiser of
  f(alpha) = 1/2 alpha^T G_eps alpha - sum_t log alpha_t (self-concordant, strictly convex).

  Newton in relative steps alpha <- alpha (1 + t p), (D G_eps D + I) p = 1 - alpha G_eps alpha,
  D = diag(alpha), with Newton decrement delta^2 = p^T (D G_eps D + I) p: t = 1 once
  delta < 1/4, else Armijo backtracking from the boundary-safe min(1, 0.95 / max(-p)),
  never below the always-safe damped step 1 / (1 + delta). Stops when delta <= tol.
  Runs on G / s (s: a power of two near tr G / T) and returns alpha / sqrt(s); starts from
  alpha_init (default diag(G_eps)^(-1/2)) rescaled to the best point on its ray.
  G = 0 gives alpha = 1. (In float32 the residual of rank-deficient G is limited to about
  1e-7 T / eps: G alpha is then a sum of cancelling terms.)"""
  num = g.shape[0]
  tr = jnp.trace(g)
  ok = tr > _TINY
  mean_diag = jnp.where(ok, tr / num, 1)
  scale = jnp.exp2(jnp.round(jnp.log2(mean_diag)))      # exact division
  gn = g / scale + (eps * mean_diag / scale) * jnp.eye(num, dtype=g.dtype)
  a0 = 1 / jnp.sqrt(jnp.diag(gn))
  if alpha_init is not None:
    a_init = jnp.asarray(alpha_init, g.dtype) * jnp.sqrt(scale)
    valid = jnp.all(jnp.isfinite(a_init) & (a_init > 0))
    a0 = jnp.where(valid, a_init, a0)
  a0 = a0 * jnp.sqrt(num / (a0 @ gn @ a0))

  def objective(a):
    return 0.5 * a @ gn @ a - jnp.sum(jnp.log(a))

  def cond(s):
    return (s[0] < max_iters) & (s[2] > tol)

  def body(s):
    k, a, _ = s
    m = a[:, None] * gn * a[None, :] + jnp.eye(num, dtype=g.dtype)
    r = 1 - a * (gn @ a)
    p = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(m), True), r)
    decrement2 = _nonneg(r @ p)
    delta = jnp.sqrt(decrement2)
    damped = 1 / (1 + delta)
    f0 = objective(a)
    armijo_fails = lambda t: objective(a * (1 + t * p)) > f0 - 1e-4 * t * decrement2
    t = jnp.minimum(1, 0.95 / jnp.maximum(jnp.max(-p), _TINY))
    t = lax.while_loop(lambda t: (t > damped) & armijo_fails(t), lambda t: t / 2, t)
    t = jnp.where(delta < 0.25, 1, jnp.maximum(t, damped))
    a_new = a * jnp.maximum(1 + t * p, 1e-3)       # both step rules keep 1 + t p > 0
    ok_step = jnp.all(jnp.isfinite(a_new))
    return k + 1, jnp.where(ok_step, a_new, a), jnp.where(ok_step, delta, 0)

  a = lax.while_loop(cond, body, (0, a0, jnp.full((), jnp.inf, g.dtype)))[1]
  return jnp.where(ok, a / jnp.sqrt(scale), jnp.ones_like(a))
