"""ConFIG: the conflict-free update direction, in Gram form."""

from typing import Optional, Sequence

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult



def con_fig_weights(g, pref):
  """alpha with J^T alpha = ConFIG's direction, from G and the preference vector w [T].

  With D = diag(1 / ||g_t||) (0 for a zero gradient), the unit rows U = D J and
  b = pinv(U) w = J^T c, c = D (D G D)^+ w.  Then d = (sum_t g_t . b^) b^ with
  b^ = b / ||b||, so alpha = (1^T G c / c^T G c) c (0 when b = 0).  The pseudo-inverse drops
  the eigenvalues of D G D at or below T eps(dtype) times the largest (the rounding level of a
  Gramian), i.e. singular values of U below sqrt(T eps) of the largest, where torchjd's pinv
  of U keeps them down to max(T, P) eps: for two gradients at cosine -1 + delta, the
  direction is 0 once delta <= 2 T eps (4.8e-7 in float32), where torchjd still gives the
  bisector (of length about (||g_1|| + ||g_2||) sqrt(delta / 2)).  Only the direction of b
  matters, and it stays accurate when a small eigenvalue is inexact."""
  num = g.shape[0]
  eps = jnp.finfo(g.dtype).eps
  sq = jnp.maximum(jnp.diag(g), 0)
  inv = jnp.where(sq > 0, 1 / jnp.sqrt(jnp.where(sq > 0, sq, 1)), 0)
  cos = inv[:, None] * g * inv[None, :]
  lam, vec = jnp.linalg.eigh(cos)
  keep = lam > num * eps * jnp.maximum(jnp.max(lam), 0)
  lam_inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
  c = inv * (vec @ (lam_inv * (vec.T @ pref)))
  gc = g @ c
  norm2 = c @ gc
  pos = norm2 > 0
  return jnp.where(pos, jnp.sum(gc) / jnp.where(pos, norm2, 1), 0) * c


@registry.WEIGHTINGS.register('con_fig')
def con_fig(pref_vector: Optional[Sequence[float]] = None) -> Weighting:
  """ConFIG: the direction whose cosine with every task gradient is the same (for equal
  preferences), with the length of the sum of the gradients' projections on it.

  Liu, Chu, Thuerey (2025), "ConFIG: Towards Conflict-free Training of Physics Informed
  Neural Networks", ICLR 2025 (Eq. 2; as the authors' code and torchjd).

  With the unit gradients u_t = g_t / ||g_t|| stacked in U, the best direction
  b = pinv(U) w solves u_t . b = w_t (least-norm; least-squares when the rows are
  dependent); d = (sum_t g_t . b^) b^, b^ = b / ||b||.  Computed from the Gramian alone
  (``con_fig_weights``): d = J^T alpha.  Task-specific parameters get unweighted
  gradients.  d has the scale of the gradients' projections, so no ``match_sum`` applies.

  Args:
    pref_vector: the preference w [T] (the targets of the unit-gradient products); None:
      all ones (torchjd's and the authors' default).

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  pref = checks.check_vector('con_fig', 'pref_vector', pref_vector, optional=True)

  def preference(num, dtype):
    if pref is None:
      return jnp.ones((num,), dtype)
    if pref.shape != (num,):
      raise ValueError(f'con_fig: pref_vector has {pref.size} values for {num} tasks')
    return jnp.asarray(pref, dtype)

  def init(num_tasks):
    preference(num_tasks, jnp.float32)     # a preference of the wrong length fails here
    return ()

  def update(inputs, state, key):
    del key
    g = inputs.gram
    return WeightingResult(con_fig_weights(g, preference(g.shape[0], g.dtype)), state)

  return Weighting('con_fig', Needs.GRAM, init=init, update=update,
                   head_grads='unweighted', min_tasks=2)
