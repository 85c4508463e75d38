"""MGDA: the min-norm point of the convex hull of the task gradients."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('mgda')
def mgda(normalization: str = 'none', match_sum: bool = True, max_iters: int = 250) -> Weighting:
  """MGDA: the minimum-norm element of the convex hull of the (normalised) task gradients.

  Sener and Koltun (2018), "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
  2018 (MGDA-UB when run on the representation, engine mode 'rep').

  g^_t = g_t / n_t with n_t = 1 ('none'), ||g_t|| ('l2'), L_t ('loss') or L_t ||g_t||
  ('loss+');  w* = argmin_{w in simplex} w^T G^ w with G^ = G / (n n^T);
  alpha_t = w*_t / n_t (x T under ``match_sum``), d = sum_t alpha_t g_t.  Exact for two tasks
  (closed form), ``solvers.min_norm_simplex`` beyond.  Task-specific parameters get
  unweighted gradients.

  Args:
    normalization: gradient normalisation n_t: 'none', 'l2', 'loss' or 'loss+'.
    match_sum: multiply alpha by T to compare with the sum of losses; False gives the
      min-norm point itself (sum_t w*_t = 1, as in LibMTL).
    max_iters: iteration cap of the simplex solver (T > 2).

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  checks.choice('mgda', 'normalization', normalization, ('none', 'l2', 'loss', 'loss+'))

  def update(inputs, state, key):
    del key
    g, losses = inputs.gram, inputs.losses
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    n = {'none': jnp.ones_like(losses), 'l2': norms, 'loss': losses,
         'loss+': losses * norms}[normalization]
    n = jnp.where(n > checks.EPS, n, 1.0).astype(g.dtype)
    w = solvers.min_norm_simplex(g / jnp.outer(n, n), max_iters=max_iters)
    return WeightingResult(checks.match_sum(w / n, match_sum), state)

  return Weighting('mgda', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
