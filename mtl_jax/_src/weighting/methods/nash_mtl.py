"""Nash-MTL: the Nash bargaining solution of the tasks."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('nash_mtl')
def nash_mtl(max_norm: float = 1.0, update_every: int = 1, max_iters: int = 20) -> Weighting:
  """Nash-MTL: the bargaining solution alpha > 0 with G alpha = 1 / alpha (elementwise).

  Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya (2022), "Multi-Task
  Learning as a Bargaining Game", ICML 2022.

  alpha is the minimiser of 1/2 alpha^T G alpha - sum_t log alpha_t (``solvers.
  nash_mtl_weights``: damped Newton, warm-started from the previous alpha), recomputed every
  ``update_every`` steps and reused in between.  Then alpha is scaled so that
  ||d|| = ||J^T alpha|| = sqrt(alpha^T G alpha) <= ``max_norm`` (torchjd's form of the
  authors' clipping of the shared gradient).  Task-specific parameters get alpha_t grad L_t
  (``head_grads='weighted'``), as in the authors' code.

  alpha is computed in G's dtype (float64 under ``jax_enable_x64`` with a float64 Jacobian);
  the state keeps the default float dtype of ``init`` (float64 under x64, else float32).

  Args:
    max_norm: bound on ||d||; <= 0 disables the clipping.
    update_every: recompute alpha every this many steps (>= 1).
    max_iters: Newton iteration cap of the solver.

  Returns:
    The ``Weighting`` (state: the last unclipped alpha, at least 2 tasks).
  """
  if update_every < 1:
    raise ValueError(f'nash_mtl: update_every must be >= 1, got {update_every}')

  def init(num_tasks):
    return {'alpha': jnp.ones((num_tasks,), float)}     # float32, or float64 under x64

  def update(inputs, state, key):
    del key
    g = inputs.gram
    previous = state['alpha'].astype(g.dtype)
    alpha = jax.lax.cond(
        inputs.step % update_every == 0,
        lambda: solvers.nash_mtl_weights(g, previous, max_iters=max_iters),
        lambda: previous)
    scaled = alpha
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
      scaled = alpha * jnp.minimum(1.0, max_norm / jnp.maximum(norm, checks.EPS))
    return WeightingResult(scaled, {'alpha': alpha.astype(state['alpha'].dtype)})

  return Weighting('nash_mtl', Needs.GRAM, init=init, update=update, head_grads='weighted',
                   min_tasks=2)
