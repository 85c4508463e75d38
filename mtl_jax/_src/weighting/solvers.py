"""Jittable solvers for the small convex programs behind gradient weighting.

Every solver takes a Gram matrix G = J J^T [T, T] (symmetric PSD) and computes in its dtype:
float32, or float64 under ``jax_enable_x64`` (``weighting.gram`` of a float64 Jacobian), with
rounding-level tolerances set per dtype. Each is pure ``jax.numpy`` with fixed iteration
caps (``lax.while_loop``/``fori_loop``), so it can be jitted and vmapped over a batch of
problems, and returns finite values for degenerate G (zero rows, colinear or opposite
gradients, G = 0, rank(G) < T).

* ``project_to_simplex(v)``:      argmin_{w in simplex} ||w - v||.
* ``min_norm_simplex(G)``:        argmin_{w in simplex} w^T G w                  (MGDA).
* ``nonneg_qp(Q, q)``:            argmin_{x >= 0} 1/2 x^T Q x + q^T x.
* ``upgrad_weights(G, u)``:       alpha = sum_i argmin_{v >= u_i e_i} v^T G~ v  (UPGrad).
* ``dualproj_weights(G, u)``:     alpha = argmin_{v >= u} v^T G~ v              (DualProj).
* ``cagrad_weights(G, c)``:       argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w).
* ``nash_mtl_weights(G)``:        alpha > 0 with G alpha = 1 / alpha            (Nash-MTL).

Quadratic programs run FISTA with adaptive restart to locate the active set, then a primal
active-set method (Lawson-Hanson on {x >= 0}, Wolfe's on the simplex: one Jacobi-equilibrated
Cholesky solve on the free set per step) makes the answer exact to the rounding of G's dtype
(float64: 1e-13 relative in the tests); its result is kept only if not worse than FISTA's.
CAGrad's objective has a kink at g_w = 0, so it follows a barrier (interior-point) path
instead, then active-set Newton steps; Nash-MTL is a damped Newton method. Weights are
invariant to G -> sG (problems are normalised by tr G), except Nash-MTL's, which are
covariant: alpha -> alpha / sqrt(s).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

_TINY = 1e-30          # traces below this count as G = 0


def _by_dtype(dtype, float32_value: float, float64_value: float) -> float:
  """A tolerance set at the rounding level of G's dtype: ``float64_value`` for float64 (under
  ``jax_enable_x64``), else ``float32_value``."""
  return float64_value if jnp.dtype(dtype) == jnp.float64 else float32_value


def project_to_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection onto {w >= 0, sum w = 1}: w = max(v - tau, 0) with
  tau = max_k (u_1 + ... + u_k - 1) / k over v sorted decreasingly (u); sort-free here:
  k runs over the sets {j: v_j >= v_i}, i = 1..T (O(T^2), exact with ties).  Computed on
  v - max(v) (the same projection), so that a huge v does not swallow the 1 in float32."""
  v = v - jnp.max(v)
  above = (v[None, :] >= v[:, None]).astype(v.dtype)        # row i: {j: v_j >= v_i}
  tau = jnp.max((above @ v - 1) / jnp.sum(above, axis=1))
  return jnp.maximum(v - tau, 0)


def _nonneg(x):
  return jnp.maximum(x, 0)


def _lipschitz(a: jax.Array, iters: int = 20) -> jax.Array:
  """An estimate of lambda_max(A) for PSD A: 1.05 x the Rayleigh quotient after ``iters``
  power iterations, kept within [max diag A, tr A] (bounds on lambda_max)."""
  v0 = jnp.cos(1.7 * jnp.arange(a.shape[0], dtype=a.dtype)) + 1.5

  def step(_, v):
    av = a @ v
    return av / jnp.maximum(jnp.linalg.norm(av), _TINY)

  v = lax.fori_loop(0, iters, step, v0 / jnp.linalg.norm(v0))
  return jnp.clip(1.05 * (v @ a @ v), jnp.max(jnp.diag(a)), jnp.trace(a))


def _fista(grad: Callable, project: Callable, x0, lipschitz, max_iters: int, tol: float):
  """FISTA with gradient-based adaptive restart (O'Donoghue & Candes): z = P(y - grad(y) / L),
  momentum reset when grad(y) . (z - x) > 0. Gradient tests only: f differences are below
  float32 resolution on ill-conditioned problems. Stops when L ||z - y||_inf <= tol."""
  one = jnp.ones((), x0.dtype)

  def cond(s):
    return (s[0] < max_iters) & ~s[-1]

  def body(s):
    k, x, y, t, _ = s
    gy = grad(y)
    z = project(y - gy / lipschitz)
    restart = gy @ (z - x) > 0
    t_next = jnp.where(restart, one, (1 + jnp.sqrt(1 + 4 * t * t)) / 2)
    y_new = jnp.where(restart, z, z + (t - 1) / t_next * (z - x))
    done = lipschitz * jnp.max(jnp.abs(z - y)) <= tol
    return k + 1, z, y_new, t_next, done

  return lax.while_loop(cond, body, (0, x0, x0, one, jnp.zeros((), bool)))[1]


def _active_set_newton(fun_hess: Callable, x0, lipschitz, simplex: bool, steps: int):
  """Active-set Newton steps from a feasible x0 on {x >= 0} (and sum x = 1 if ``simplex``).

  Free set F = {x - mu / L > 0} (mu = grad f - lambda: bound multipliers). The step zeroes
  x_A and minimises f's quadratic model over the free coordinates (Jacobi-equilibrated
  Cholesky, proximal ridge); on the simplex it moves in the null space of sum,
  dx = sum_i d_i (e_i - e_p), the pivot p being the largest free entry. Candidates: the
  projected full step and the step cut at the first bound (where the model is flat, as for
  CAGrad with rank(G) < T). Each step keeps the candidate with the smallest gradient mapping
  L ||x - P(x - grad f(x) / L)||_inf among those not worse in f (up to rounding: 1e-6
  relative in float32, 1e-14 in float64). The ridge is 1e-6 (float32) or 1e-12 (float64)."""
  num = x0.shape[0]
  project = project_to_simplex if simplex else _nonneg
  ridge = _by_dtype(x0.dtype, 1e-6, 1e-12)
  rel_slack = _by_dtype(x0.dtype, 1e-6, 1e-14)

  def score(x):
    f, g, _ = fun_hess(x)
    slack = rel_slack * (jnp.abs(f) + jnp.abs(g) @ jnp.abs(x))
    return jnp.max(jnp.abs(x - project(x - g / lipschitz))), f, slack

  def newton_step(x):
    _, g, h = fun_hess(x)
    free = x - (g - x @ g if simplex else g) / lipschitz > 0
    if simplex:
      pivot = jax.nn.one_hot(jnp.argmax(jnp.where(free, x, -jnp.inf)), num, dtype=x.dtype)
      basis = jnp.eye(num, dtype=x.dtype) - jnp.outer(pivot, jnp.ones_like(x))   # Z
      base = pivot * (1 - jnp.sum(x))            # restores sum x = 1
      free = free & (pivot == 0)
    else:
      basis, base = jnp.eye(num, dtype=x.dtype), jnp.zeros_like(x)
    fm = free.astype(x.dtype)
    base = base + basis @ ((fm - 1) * x)         # x_A -> 0
    h_red = basis.T @ h @ basis
    diag = jnp.where(free, jnp.maximum(jnp.diag(h_red), 1e-8 * lipschitz), 1)
    sc = fm / jnp.sqrt(diag)
    m = sc[:, None] * h_red * sc[None, :] + jnp.diag(jnp.where(free, ridge, 1))
    d = sc * jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(m), True),
                                        -sc * (basis.T @ (g + h @ base)))
    return base + basis @ d

  def step(_, s):
    x, best = s
    dx = newton_step(x)
    cut = jnp.min(jnp.where(dx < 0, x / jnp.where(dx < 0, -dx, 1), 1))
    cands = jax.vmap(project)(x + jnp.stack([1, jnp.clip(cut, 0, 1)])[:, None] * dx)
    merit, f, slack = jax.vmap(score)(cands)
    ok = jnp.all(jnp.isfinite(cands), axis=1) & (f <= best[1] + best[2])
    merit = jnp.where(ok, merit, jnp.inf)
    i = jnp.argmin(merit)
    better = merit[i] <= best[0]
    pick = lambda new, old: jnp.where(better, new, old)
    return pick(cands[i], x), (pick(merit[i], best[0]), pick(f[i], best[1]),
                               pick(slack[i], best[2]))

  return lax.fori_loop(0, steps, step, (x0, score(x0)))[0]


def _quadratic(q_mat, q_vec):
  """(f, grad, hess) of f(x) = 1/2 x^T Q x + q^T x."""
  def fun_hess(x):
    qx = q_mat @ x
    return 0.5 * x @ qx + q_vec @ x, qx + q_vec, q_mat
  return fun_hess


def _free_set_solve(q_mat, q_vec, free, refinements: int = 2):
  """s_F = -Q_FF^(-1) q_F, s_A = 0: Cholesky of the Jacobi-equilibrated Q_FF plus a ridge
  of 4 T eps (so that it factors when Q_FF is singular to rounding), then ``refinements``
  steps of iterative refinement against the unridged matrix, which remove the ridge's bias
  (by a factor ridge / (lambda + ridge) each) in every direction it resolves."""
  num = q_vec.shape[0]
  ridge = 4 * num * jnp.finfo(q_vec.dtype).eps
  fm = free.astype(q_vec.dtype)
  diag = jnp.diag(q_mat)
  sc = fm / jnp.sqrt(jnp.where(free & (diag > 0), diag, 1))
  m = sc[:, None] * q_mat * sc[None, :]
  chol = (jnp.linalg.cholesky(m + jnp.diag(jnp.where(free, ridge, 1))), True)
  rhs = -sc * q_vec
  y = jax.scipy.linalg.cho_solve(chol, rhs)
  for _ in range(refinements):
    y = y + jax.scipy.linalg.cho_solve(chol, rhs - m @ y)
  return sc * y


def _active_set_qp(q_mat, q_vec, x0, max_steps: int, simplex: bool = False):
  """Primal active-set method for min 1/2 x^T Q x + q^T x (Q symmetric PSD) over {x >= 0}
  (Lawson and Hanson (1974), "Solving Least Squares Problems", ch. 23, the NNLS algorithm, in
  the form on Q = A^T A of Bro and de Jong (1997), J. Chemometrics 11(5)) or, if ``simplex``,
  over {x >= 0, sum x = 1} (then Wolfe's (1976) min-norm-point method, Math. Programming 11),
  from a feasible x0.

  Free set F, first {x0 > 0}. Each step takes s = argmin over {x_A = 0} (and sum x = 1:
  x = e_p + Z y with Z = [e_i - e_p] (i in F, i != p), the pivot p the largest free x_p,
  so that Z^T Q Z is formed from differences of Q's entries) by ``_free_set_solve``. If s_F > 0:
  x = s, and the coordinate with the largest KKT violation lambda - (Q x + q)_j (lambda =
  x^T (Q x + q) on the simplex, else 0) beyond its rounding bound 2 T eps (|Q| |x| + |q|)_j
  joins F (none: x is optimal, stop). Else x moves to x + t (s - x), the first point where a
  free coordinate reaches 0, which leaves F. f decreases at every step and, in exact
  arithmetic, the method ends at the exact minimiser after finitely many steps (F's reduced
  Hessian stays definite); here after at most ``max_steps`` (each one T x T Cholesky). A
  non-finite solve stops it."""
  num = x0.shape[0]
  noise_bound = 2 * num * jnp.finfo(x0.dtype).eps

  def subproblem(x, free):
    if not simplex:
      return _free_set_solve(q_mat, q_vec, free)
    pivot = jax.nn.one_hot(jnp.argmax(jnp.where(free, x, -jnp.inf)), num, dtype=x.dtype)
    basis = jnp.eye(num, dtype=x.dtype) - jnp.outer(pivot, jnp.ones_like(x))   # Z
    y = _free_set_solve(basis.T @ q_mat @ basis, basis.T @ (q_mat @ pivot + q_vec),
                        free & (pivot == 0))
    return pivot + basis @ y

  def violation(x):                               # > 0: x_j should be free
    grad = q_mat @ x + q_vec
    lam = x @ grad if simplex else 0
    return lam - grad - noise_bound * (jnp.abs(q_mat) @ jnp.abs(x) + jnp.abs(q_vec))

  def cond(s):
    return (s[0] < max_steps) & ~s[3]

  def body(s):
    k, x, free, _ = s
    sol = subproblem(x, free)
    inside = jnp.all(jnp.where(free, sol > 0, True))
    viol = jnp.where(free, -jnp.inf, violation(sol))
    add = viol[jnp.argmax(viol)] > 0
    free_in = free | (add & (jnp.arange(num) == jnp.argmax(viol)))
    den = x - sol                                 # blocked: the first free x_i to reach 0
    ratio = jnp.where(free & (sol <= 0), jnp.where(den > 0, x / jnp.where(den > 0, den, 1), 0),
                      jnp.inf)
    block = jnp.argmin(ratio)
    x_out = _nonneg(x + ratio[block] * (sol - x)).at[block].set(0)
    if simplex:
      x_out = x_out / jnp.sum(x_out)
    ok = jnp.all(jnp.isfinite(sol)) & (inside | jnp.all(jnp.isfinite(x_out)))
    x_new = jnp.where(ok, jnp.where(inside, sol, x_out), x)
    free_new = jnp.where(inside, free_in, free & (x_out > 0))
    return k + 1, x_new, free_new, ~ok | (inside & ~add)

  return lax.while_loop(cond, body, (0, x0, x0 > 0, jnp.zeros((), bool)))[1]


def _polished_qp(q_mat, q_vec, x0, max_iters, tol, max_steps, simplex=False):
  """min 1/2 x^T Q x + q^T x over {x >= 0} (or the simplex): FISTA from x0 locates the active
  set, ``_active_set_qp`` makes it exact; its result is kept if finite and not worse in f
  than FISTA's (up to rounding: 4 T eps (|x|^T |Q| |x| + |q|^T |x|))."""
  fun = _quadratic(q_mat, q_vec)
  project = project_to_simplex if simplex else _nonneg
  x = _fista(lambda x: fun(x)[1], project, x0, _lipschitz(q_mat), max_iters, tol)
  x_as = _active_set_qp(q_mat, q_vec, x, max_steps, simplex)
  f, f_as = fun(x)[0], fun(x_as)[0]
  slack = 4 * x0.shape[0] * jnp.finfo(x0.dtype).eps * (
      jnp.abs(x) @ jnp.abs(q_mat) @ jnp.abs(x) + jnp.abs(q_vec) @ jnp.abs(x))
  better = jnp.all(jnp.isfinite(x_as)) & (f_as <= f + slack)
  return jnp.where(better, x_as, x)


def _trace_scale(g: jax.Array):
  """(tr G if tr G > _TINY else 1, whether it is)."""
  tr = jnp.trace(g)
  ok = tr > _TINY
  return jnp.where(ok, tr, 1), ok


def _steps(num: int, steps: Optional[int]) -> int:
  return 2 * num + 4 if steps is None else steps


def min_norm_simplex(g: jax.Array, *, max_iters: int = 500, tol: float = 1e-6,
                     active_set_steps: Optional[int] = None,
                     two_task_closed_form: bool = True) -> jax.Array:
  """w* = argmin_{w in simplex} w^T G w: the min-norm point J^T w* of the convex hull.

  T = 2: w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1) (1/2 if g_1 = g_2).
  T > 2 (or ``two_task_closed_form=False``): on G / tr G from w = 1/T, FISTA on the simplex
  (at most ``max_iters``, until the gradient mapping is <= tol) locates the active set, then
  the exact active-set method (Wolfe's; at most ``active_set_steps``, default 2 T + 4).
  G = 0 gives w = 1/T."""
  num = g.shape[0]
  if num == 1:
    return jnp.ones((1,), g.dtype)
  if num == 2 and two_task_closed_form:
    den = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    pos = den > 0
    w1 = jnp.where(pos, jnp.clip((g[1, 1] - g[0, 1]) / jnp.where(pos, den, 1), 0, 1), 0.5)
    return jnp.stack([w1, 1 - w1])
  scale, ok = _trace_scale(g)
  gn = g / scale
  uniform = jnp.full((num,), 1 / num, g.dtype)
  w = _polished_qp(gn, jnp.zeros_like(uniform), uniform, max_iters, tol,
                   _steps(num, active_set_steps), simplex=True)
  return jnp.where(ok, w, uniform)


def nonneg_qp(q_mat: jax.Array, q_vec: jax.Array, *, max_iters: int = 500,
              tol: float = 1e-6, active_set_steps: Optional[int] = None) -> jax.Array:
  """x* = argmin_{x >= 0} 1/2 x^T Q x + q^T x for symmetric positive-semidefinite Q (x* is
  unique if Q is definite; else Q x* is).

  On (Q, q) / (tr Q / T), from max(-q / diag Q, 0): FISTA (at most ``max_iters``, until the
  gradient mapping is <= tol) locates the active set, then the exact active-set method (at
  most ``active_set_steps``, default 2 T + 4). Q = 0 gives x = 0."""
  num = q_mat.shape[0]
  scale, ok = _trace_scale(q_mat)
  scale = scale / num
  qn, cn = q_mat / scale, q_vec / scale
  x0 = _nonneg(-cn / jnp.maximum(jnp.diag(qn), 1e-6))
  x = _polished_qp(qn, cn, x0, max_iters, tol, _steps(num, active_set_steps))
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


def _cagrad_barrier(gn, b, k, f_scale, max_iters, tol):
  """Barrier path for min_{w in simplex} b^T w + k sqrt(w^T G w) (an SOCP in (w, t)).

  With t minimised out, the barrier problem at mu is min_{sum w = 1}
  psi(w) = (b^T w + tau) / mu - log tau - sum log w,  tau = mu + sqrt(mu^2 + k^2 w^T G w),
  a smoothing of the kink at g_w = 0 that vanishes as mu -> 0. Damped Newton on psi
  (step 1 / (1 + decrement) until the decrement is < 1/4; feasible by self-concordance),
  Jacobi-scaled, with a 1e-4 proximal ridge for the directions that are flat when
  rank(G) < T; mu /= 10 once centred (decrement < 1/2), down to tol f_scale / (T + 2)."""
  num = b.shape[0]
  mu_end = tol * f_scale / (num + 2)

  def cond(s):
    return (s[0] < max_iters) & ~s[-1]

  def body(s):
    i, w, mu, _ = s
    gw = gn @ w
    r = jnp.sqrt(mu**2 + k**2 * _nonneg(w @ gw))
    tau = mu + r
    grad = (b + k**2 * gw / tau) / mu - 1 / w
    hess = (k**2 / (mu * tau)) * (gn - (k**2 / (tau * r)) * jnp.outer(gw, gw))
    hess = hess + jnp.diag(1 / w**2)
    sc = 1 / jnp.sqrt(jnp.diag(hess))                 # Jacobi scaling, Schur complement
    scaled = sc[:, None] * hess * sc[None, :]
    chol = (jnp.linalg.cholesky(scaled + 1e-4 * jnp.eye(num, dtype=w.dtype)), True)  # prox
    y1 = sc * jax.scipy.linalg.cho_solve(chol, -sc * grad)
    y2 = sc * jax.scipy.linalg.cho_solve(chol, sc)
    step = y1 - (jnp.sum(y1) / jnp.sum(y2)) * y2
    step = step.at[jnp.argmax(w)].add(-jnp.sum(step))   # sum(step) = 0 exactly
    u = step / sc
    decrement = jnp.sqrt(_nonneg(u @ scaled @ u))
    w_new = w + jnp.where(decrement < 0.25, 1, 1 / (1 + decrement)) * step
    w_new = jnp.maximum(w_new, 1e-3 * w)            # float32 guard; Dikin keeps w > 0
    ok = jnp.all(jnp.isfinite(w_new))
    w_new = jnp.where(ok, w_new / jnp.sum(w_new), w)
    centred = (decrement < 0.5) | ~ok
    done = centred & (mu <= mu_end)
    return i + 1, w_new, jnp.where(centred, jnp.maximum(mu / 10, mu_end), mu), done

  w0 = jnp.full((num,), 1 / num, b.dtype)
  return lax.while_loop(cond, body, (0, w0, f_scale, jnp.zeros((), bool)))[1]


def cagrad_weights(g: jax.Array, c, *, max_iters: int = 100, tol: float = 1e-8,
                   newton_steps: int = 4) -> jax.Array:
  """w* = argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w), ||g0||^2 = 1^T G 1 / T^2.

  On G / tr G: a barrier (interior-point) path down to relative gap ``tol`` (at most
  ``max_iters`` Newton steps, typically 30-50), then ``newton_steps`` active-set Newton
  steps on the objective (sqrt(w^T G w + s tr G), s = 1e-12 in float32, 1e-24 in float64).
  w = 1/T if g0 = 0 (that is, if max_i |g_i . g0| + c ||g0|| max_i ||g_i|| <= r tr G with r
  the rounding level, 1e-6 in float32, 1e-15 in float64)."""
  num = g.shape[0]
  scale, ok = _trace_scale(g)
  gn = g / scale
  b = jnp.mean(gn, axis=1)                          # b_i = g_i . g0
  k = c * jnp.sqrt(_nonneg(jnp.sum(b)) / num)        # c ||g0||
  f_scale = jnp.max(jnp.abs(b)) + k * jnp.sqrt(jnp.max(jnp.diag(gn)))
  ok = ok & (f_scale > _by_dtype(g.dtype, 1e-6, 1e-15))   # else g0 = 0 up to rounding
  f_scale = jnp.where(ok, f_scale, 1)
  smoothing = _by_dtype(g.dtype, 1e-12, 1e-24)

  def fun_hess(w):
    gw = gn @ w
    r = jnp.sqrt(_nonneg(w @ gw) + smoothing)
    hess = k * (gn / r - jnp.outer(gw, gw) / r**3)
    return b @ w + k * r, b + k * gw / r, hess

  w = _cagrad_barrier(gn, b, k, f_scale, max_iters, tol)
  w = _active_set_newton(fun_hess, w, f_scale, True, newton_steps)
  return jnp.where(ok, w, jnp.full((num,), 1 / num, g.dtype))


def cagrad_alpha(g: jax.Array, c=0.4, rescale: int = 1, w: Optional[jax.Array] = None,
                 **solver_kwargs) -> jax.Array:
  """CAGrad coefficients alpha = 1/T + c ||g0|| / ||g_w*|| w*, divided by 1 (rescale 0),
  1 + c^2 (1) or 1 + c (2); w* = ``w`` or ``cagrad_weights(G, c, **solver_kwargs)``.
  The correction is dropped if ||g_w*||^2 < r tr G / T (0 in the hull, g0 = 0, to rounding:
  r = 1e-8 in float32, 1e-16 in float64)."""
  if rescale not in (0, 1, 2):
    raise ValueError(f'cagrad: rescale must be 0, 1 or 2, got {rescale!r}')
  num = g.shape[0]
  if w is None:
    w = cagrad_weights(g, c, **solver_kwargs)
  g0_norm = jnp.sqrt(_nonneg(jnp.sum(g))) / num
  gw_sq = _nonneg(w @ g @ w)
  big = gw_sq > _by_dtype(g.dtype, 1e-8, 1e-16) * jnp.trace(g) / num
  coef = jnp.where(big, c * g0_norm / jnp.sqrt(jnp.where(big, gw_sq, 1)), 0)
  alpha = 1 / num + coef * w
  return alpha / (1.0, 1 + c**2, 1 + c)[rescale]


def nash_mtl_weights(g: jax.Array, alpha_init: Optional[jax.Array] = None, *,
                     max_iters: int = 50, tol: float = 1e-6, eps: float = 1e-5) -> jax.Array:
  """alpha > 0 with G_eps alpha = 1 / alpha: the minimiser of the strictly convex,
  self-concordant f(alpha) = 1/2 alpha^T G_eps alpha - sum_t log alpha_t, where
  G_eps = G + eps diag(s), s_t = G_tt + 1e-6 tr G / T: each task is regularised relative to
  its own scale, which keeps the covariance alpha_t -> alpha_t / c_t under g_t -> c_t g_t.

  Runs on the unit-diagonal C = S^(-1/2) G_eps S^(-1/2) and returns S^(-1/2) alpha_C.
  Newton in relative steps alpha <- alpha (1 + t p), (D C D + I) p = 1 - alpha C alpha,
  D = diag(alpha), decrement delta^2 = p^T (D C D + I) p: t = 1 once delta < 1/4, else the
  longest of 8 halvings of the boundary-safe min(1, 0.95 / max(-p)) passing Armijo, but at
  least the always-safe damped step 1 / (1 + delta). Stops when delta <= tol. Starts from
  alpha_init (default diag(G_eps)^(-1/2)) rescaled to the best point on its ray.
  G = 0 gives alpha = 1. A zero gradient g_t gives a large alpha_t = (1e-11 tr G / T)^(-1/2).
  In float32 the residual for rank-deficient G is limited to about 1e-7 T / eps."""
  num = g.shape[0]
  tr = jnp.trace(g)
  ok = tr > _TINY
  inv_sqrt_s = 1 / jnp.sqrt(jnp.diag(g) + 1e-6 * jnp.where(ok, tr, 1) / num)
  c = inv_sqrt_s[:, None] * g * inv_sqrt_s[None, :] + eps * jnp.eye(num, dtype=g.dtype)
  a0 = jnp.ones((num,), g.dtype)
  if alpha_init is not None:
    a_init = jnp.asarray(alpha_init, g.dtype) / inv_sqrt_s
    valid = jnp.all(jnp.isfinite(a_init) & (a_init > 0))
    a0 = jnp.where(valid, a_init, a0)
  a0 = a0 * jnp.sqrt(num / (a0 @ c @ a0))

  def objective(a):
    return 0.5 * a @ c @ a - jnp.sum(jnp.log(a))

  def cond(s):
    return (s[0] < max_iters) & (s[2] > tol)

  def body(s):
    k, a, _ = s
    m = a[:, None] * c * a[None, :] + jnp.eye(num, dtype=g.dtype)
    r = 1 - a * (c @ a)
    p = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(m), True), r)
    decrement2 = _nonneg(r @ p)
    delta = jnp.sqrt(decrement2)
    damped = 1 / (1 + delta)
    halvings = 0.5 ** jnp.arange(8, dtype=g.dtype)       # G's dtype: float64 under x64
    trials = jnp.minimum(1, 0.95 / jnp.maximum(jnp.max(-p), _TINY)) * halvings
    armijo = jax.vmap(objective)(a * (1 + trials[:, None] * p)) <= (
        objective(a) - 1e-4 * trials * decrement2)
    t = jnp.max(jnp.where(armijo, trials, 0))            # the longest trial that passes
    t = jnp.where(delta < 0.25, 1, jnp.maximum(t, damped))
    a_new = a * jnp.maximum(1 + t * p, 1e-3)       # both step rules keep 1 + t p > 0
    ok_step = jnp.all(jnp.isfinite(a_new))
    return k + 1, jnp.where(ok_step, a_new, a), jnp.where(ok_step, delta, 0)

  a = lax.while_loop(cond, body, (0, a0, jnp.full((), jnp.inf, g.dtype)))[1]
  return jnp.where(ok, a * inv_sqrt_s, jnp.ones_like(a))


def small_qp(q_mat: jax.Array, q_vec: jax.Array, a_eq: jax.Array, b_eq: jax.Array,
             c_in: jax.Array, d_in: jax.Array, *, iters: int = 40) -> jax.Array:
  """x* = argmin 1/2 x^T Q x + q^T x  s.t.  A x = b,  C x >= d  (Q symmetric PSD; small n).

  A primal-dual interior-point method (Wright (1997), "Primal-Dual Interior-Point Methods",
  SIAM, ch. 1 and 11): slacks s = C x - d > 0 and multipliers z > 0 follow the central path
  s z = sigma mu (sigma = 0.1, mu = s^T z / m) by ``iters`` Newton steps, each one solve of
  the reduced system [[Q + C^T (Z / S) C, -A^T], [A, 0]] (n + p unknowns) and a step of 0.99
  of the way to the boundary of s, z > 0.  Infeasible starts are allowed (x = 0, s = z = 1).
  For the few-variable programs of task weighting (FORUM's): exact to about 1e-7 (float64)
  or 1e-4 (float32) relative after 40 steps on well-posed problems."""
  n, p, m = q_mat.shape[0], a_eq.shape[0], c_in.shape[0]
  dtype = q_mat.dtype
  ridge = 10 * jnp.finfo(dtype).eps * (1 + jnp.trace(jnp.abs(q_mat)))

  def body(_, state):
    x, y, z, s = state
    r_d = q_mat @ x + q_vec - a_eq.T @ y - c_in.T @ z
    r_p = a_eq @ x - b_eq
    r_c = c_in @ x - s - d_in
    r_s = s * z - 0.1 * (s @ z) / m
    h = q_mat + c_in.T @ ((z / s)[:, None] * c_in) + ridge * jnp.eye(n, dtype=dtype)
    kkt = jnp.block([[h, -a_eq.T], [a_eq, jnp.zeros((p, p), dtype)]])
    rhs = jnp.concatenate([-r_d - c_in.T @ ((r_s + z * r_c) / s), -r_p])
    step = jnp.linalg.solve(kkt, rhs)
    dx, dy = step[:n], step[n:]
    ds = c_in @ dx + r_c
    dz = -(r_s + z * ds) / s
    ratio = lambda v, dv: jnp.min(jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1), jnp.inf))
    alpha = jnp.minimum(1.0, 0.99 * jnp.minimum(ratio(s, ds), ratio(z, dz))).astype(dtype)
    new = (x + alpha * dx, y + alpha * dy, z + alpha * dz, s + alpha * ds)
    ok = jnp.all(jnp.isfinite(step))
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)

  start = (jnp.zeros((n,), dtype), jnp.zeros((p,), dtype), jnp.ones((m,), dtype),
           jnp.ones((m,), dtype))
  return lax.fori_loop(0, iters, body, start)[0]
