"""Aligned-MTL: independent component alignment of the task gradients."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('aligned_mtl')
def aligned_mtl(scale_mode: str = 'min') -> Weighting:
  """Aligned-MTL: align the gradients to an orthogonal set of equal norms, then sum them.

  Senushkin, Patakin, Kuznetsov and Konushin (2023), "Independent Component Alignment for
  Multi-Task Learning", CVPR 2023.

  G = V diag(lambda) V^T; keep the eigenvalues lambda > lambda_max T eps_machine (rank r);
  B = sqrt(lambda_ref) V_r diag(lambda_r)^(-1/2) V_r^T and alpha = B 1, where lambda_ref is
  the smallest kept eigenvalue ('min'), their median ('median') or their mean ('rmse').  The
  aligned gradients J^T B are orthogonal with norms sqrt(lambda_ref).  alpha = 1 if every
  gradient is zero.  Task-specific parameters get unweighted gradients.

  Args:
    scale_mode: lambda_ref: 'min', 'median' or 'rmse'.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  checks.choice('aligned_mtl', 'scale_mode', scale_mode, ('min', 'median', 'rmse'))

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num = g.shape[0]
    lam, vecs = jnp.linalg.eigh(g)
    keep = lam > jnp.max(lam) * num * jnp.finfo(g.dtype).eps
    safe = jnp.where(keep, lam, 1.0)
    if scale_mode == 'min':
      ref = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == 'median':
      ref = jnp.nanmedian(jnp.where(keep, lam, jnp.nan))
    else:
      ref = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(keep.sum(), 1)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    balance = jnp.sqrt(jnp.where(keep.any(), ref, 1.0)) * (vecs * inv_sqrt) @ vecs.T
    alpha = jnp.where(keep.any(), balance.sum(1), jnp.ones((num,), g.dtype))
    return WeightingResult(alpha, state)

  return Weighting('aligned_mtl', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
