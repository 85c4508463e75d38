"""FairGrad: alpha-fair allocation of the update's progress among the tasks."""

import jax
import jax.numpy as jnp
from jax import lax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

_TINY = 1e-30          # traces below this count as G = 0


def _by_dtype(dtype, float32_value: float, float64_value: float) -> float:
  return float64_value if jnp.dtype(dtype) == jnp.float64 else float32_value


def fairgrad_weights(g: jax.Array, alpha: float, *, max_iters: int = 50) -> jax.Array:
  """w > 0 with G w = w^(-1/alpha) (elementwise), for a static alpha > 0.

  The equation is the stationarity condition of the strictly convex
  f(w) = 1/2 w^T G w - sum_t h(w_t), h(w) = w^q / q with q = 1 - 1/alpha (log w for
  alpha = 1), whose h'(w) = w^(-1/alpha) keeps the minimiser off w = 0.  Solved on
  C = G / s, s = tr G / T, then w = s^(-alpha / (alpha + 1)) w_C: exact, since G -> sG maps
  w to s^(-alpha / (alpha + 1)) w.  Damped Newton in relative steps w <- w (1 + t p),
  (D C D + diag(w^q) / alpha) p = w^q - w (C w) with D = diag(w) (Jacobi-equilibrated
  Cholesky), t the longest of 8 halvings of the positivity-safe min(1, 0.95 / max(-p))
  passing Armijo (the full safe step once the decrement is below 1/4); ``max_iters`` steps
  at most, stopping at a decrement of 1e-6 (1e-12 in float64).  Starts from the solution for
  orthogonal gradients, w_t = C_tt^(-alpha / (alpha + 1)), rescaled to the best point on
  its ray.

  Degenerate G: no solution exists when 0 is a convex combination of the gradients (a zero
  gradient, two opposite ones): a ridge 1e-6 (1e-12 in float64) diag(C) keeps w finite
  (large). A task with G_tt <= 1e-20 s (exactly zero, in practice) is solved as if its
  gradient were orthogonal to the others with squared norm s: its weight is
  s^(-alpha / (alpha + 1)).  G = 0 gives w = 1.
  """
  num = g.shape[0]
  dtype = g.dtype
  q = 1 - 1 / alpha
  diag = jnp.diag(g)
  tr = jnp.sum(jnp.maximum(diag, 0))
  scale = jnp.where(tr > _TINY, tr / num, 1)
  c = g / scale
  zero = jnp.diag(c) <= 1e-20
  live = ~zero
  eye = jnp.eye(num, dtype=dtype)
  ridge = _by_dtype(dtype, 1e-6, 1e-12)
  c = jnp.where(live[:, None] & live[None, :], c, 0) + jnp.where(zero, 1, ridge * jnp.diag(c)) * eye
  tol = _by_dtype(dtype, 1e-6, 1e-12)
  floor = _by_dtype(dtype, 1e-30, 1e-200)

  def power_q(w):
    return jnp.ones_like(w) if q == 0 else w ** q

  def objective(w):
    h = jnp.log(w) if q == 0 else w ** q / q
    return 0.5 * w @ c @ w - jnp.sum(h)

  w0 = jnp.diag(c) ** (-alpha / (alpha + 1))
  ray = (jnp.sum(power_q(w0)) / (w0 @ c @ w0)) ** (alpha / (alpha + 1))
  w0 = jnp.maximum(w0 * ray, floor)

  def cond(s):
    return (s[0] < max_iters) & (s[2] > tol)

  def body(s):
    k, w, _ = s
    wq = power_q(w)
    r = wq - w * (c @ w)
    # a weight at the floor that would decrease further is held there (projected Newton)
    held = (w <= floor * 1.5) & (r < 0)
    m = w[:, None] * c * w[None, :] + jnp.diag(wq / alpha)
    m = jnp.where(held[:, None] | held[None, :], 0, m) + jnp.where(held, 1, 0) * eye
    r = jnp.where(held, 0, r)
    e = 1 / jnp.sqrt(jnp.maximum(jnp.diag(m), _TINY))
    chol = jnp.linalg.cholesky(e[:, None] * m * e[None, :])
    p = e * jax.scipy.linalg.cho_solve((chol, True), e * r)
    decrement2 = jnp.maximum(r @ p, 0)
    delta = jnp.sqrt(decrement2)
    safe = jnp.minimum(1, 0.95 / jnp.maximum(jnp.max(-p), _TINY))
    trials = safe * 0.5 ** jnp.arange(8, dtype=dtype)
    step = lambda t: jnp.maximum(w * jnp.maximum(1 + t * p, 1e-3), floor)
    values = jax.vmap(lambda t: objective(step(t)))(trials)
    armijo = values <= objective(w) - 1e-4 * trials * decrement2
    t = jnp.max(jnp.where(armijo, trials, 0))
    t = jnp.where(delta < 0.25, safe, jnp.where(jnp.any(armijo), t, trials[-1]))
    w_new = step(t)
    ok = jnp.all(jnp.isfinite(w_new)) & jnp.isfinite(objective(w_new))
    return k + 1, jnp.where(ok, w_new, w), jnp.where(ok, delta, 0)

  w = lax.while_loop(cond, body, (0, w0, jnp.full((), jnp.inf, dtype)))[1]
  w = jnp.where(zero, 1, w)
  return w * scale ** (-alpha / (alpha + 1))


@registry.WEIGHTINGS.register('fairgrad')
def fairgrad(alpha: float = 1.0, match_sum: bool = True, max_iters: int = 50) -> Weighting:
  """FairGrad: the alpha-fair weights w >= 0 with G w = w^(-1/alpha), d = J^T w.

  Ban and Ji (2024), "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

  The update d = J^T w maximises sum_t u_t^(1 - alpha) / (1 - alpha) of the tasks' utilities
  u_t = g_t . d on a ball; its optimality condition is G w = w^(-1/alpha) elementwise.
  alpha -> 0 is linear scalarisation (alpha = 0: uniform weights 1/T, as torchjd),
  alpha = 1 proportional fairness (the Nash-MTL condition), alpha -> infinity max-min
  fairness.  Solved by ``fairgrad_weights`` (damped Newton on the convex form; jittable),
  where the authors' code and the libraries call scipy's least squares from 1/T with
  bounds [0, inf).  w is scale-covariant: G -> sG gives w -> s^(-alpha / (alpha + 1)) w.
  Zero or mutually cancelling gradients admit no solution: see ``fairgrad_weights`` for
  the finite weights given then.

  Conventions: the authors' code sets the shared gradient to T J^T w and leaves the
  task-specific gradients unweighted (the defaults here: ``match_sum``, head gradients
  'unweighted'); torchjd returns w (``match_sum=False``); LibMTL back-propagates
  sum_t w_t L_t (``match_sum=False`` with the engine's head_grads='weighted').

  Args:
    alpha: the fairness exponent (>= 0).  The default 1.0 is the authors' class default and
      LibMTL's (torchjd has none); the authors' experiment scripts use 2.0.
    match_sum: multiply w by T, as the authors' code does for the shared gradient; False
      returns w itself (torchjd, LibMTL).
    max_iters: Newton iteration cap of the solver (>= 1).

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  alpha = checks.check_finite('fairgrad', 'alpha', alpha, minimum=0.0)
  match_sum = checks.check_bool('fairgrad', 'match_sum', match_sum)
  if type(max_iters) is not int or max_iters < 1:
    raise ValueError(f'fairgrad: max_iters must be an integer >= 1, got {max_iters!r}')

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num = g.shape[0]
    if alpha == 0:
      w = jnp.full((num,), 1 / num, g.dtype)
    else:
      w = fairgrad_weights(g, alpha, max_iters=max_iters)
    return WeightingResult(checks.match_sum(w, match_sum), state)

  return Weighting('fairgrad', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
