"""Gradient-conflict diagnostics from the Gram matrix G = J J^T of the per-task gradients.

With g_t the gradient of task t (of the shared parameters, or of the shared representation in
``mode='rep'``), G_ij = <g_i, g_j>, so at no cost beyond G:

    norm_t = sqrt(G_tt),     cos_ij = G_ij / (norm_i norm_j),
    conflicts = #{i < j : cos_ij < 0}

(Yu et al. 2020, "Gradient surgery for multi-task learning", call a pair with negative cosine
conflicting).  A task whose gradient is zero (no labelled sample in the batch) has undefined
cosines: NaN, never counted as a conflict.  NaN rows and columns of G mean "not measured" (a
task not sampled this step, a step without diagnostics) and stay NaN.

The train step logs these every step for methods that compute G (gradient methods), and
every ``diagnostics_every`` steps for loss-only methods (``Options.diagnostics_every``; it
costs one Jacobian on those steps).
"""

import jax
import jax.numpy as jnp


def gradient_diagnostics(gram: jax.Array) -> dict:
  """``{'grad_norms': [T], 'grad_cos': [T, T], 'conflicts': scalar}`` from a ``[T, T]`` G.

  Args:
    gram: the Gram matrix of the T task gradients (any float dtype; computed in float32).
      NaN entries mean "not measured".

  Returns:
    float32 per-task gradient norms, the cosine matrix (1 on the diagonal of a nonzero
    gradient, NaN where undefined) and the number of conflicting pairs (NaN when no pair
    was measured).
  """
  g = jnp.asarray(gram, jnp.float32)
  if g.ndim != 2 or g.shape[0] != g.shape[1]:
    raise ValueError(f'gradient_diagnostics: the Gram matrix must be [T, T], got {g.shape}')
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))   # NaN (not measured) stays NaN
  scale = norms[:, None] * norms[None, :]
  cos = jnp.where(scale > 0, g / jnp.where(scale > 0, scale, 1.0), jnp.nan)
  cos = jnp.clip(cos, -1.0, 1.0)       # rounding can leave |cos| a hair above 1; NaN stays
  pairs = jnp.triu(jnp.ones(g.shape, bool), k=1)
  measured = pairs & ~jnp.isnan(cos)
  count = jnp.sum(measured & (cos < 0)).astype(jnp.float32)
  conflicts = jnp.where(jnp.any(measured), count, jnp.nan)
  return {'grad_norms': norms, 'grad_cos': cos, 'conflicts': conflicts}


def scatter_gram(gram: jax.Array, subset, num: int) -> jax.Array:
  """A ``[k, k]`` G of the tasks ``subset`` as ``[num, num]`` with NaN for the others."""
  if subset is None:
    return gram
  full = jnp.full((num, num), jnp.nan, gram.dtype)
  return full.at[subset[:, None], subset[None, :]].set(gram)


def unmeasured(num: int) -> jax.Array:
  """The ``[num, num]`` NaN Gram matrix of a step without diagnostics."""
  return jnp.full((num, num), jnp.nan, jnp.float32)
