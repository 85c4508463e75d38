"""CAGrad: conflict-averse gradient descent."""

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('cagrad')
def cagrad(c: float = 0.4, rescale: int = 1, match_sum: bool = True,
           max_iters: int = 500) -> Weighting:
  """CAGrad: the update that maximises the worst task's improvement near the mean gradient.

  Liu, Liu, Jin, Stone and Liu (2021), "Conflict-Averse Gradient Descent for Multi-task
  Learning", NeurIPS 2021.

  g0 = mean gradient, g_w = J^T w,
  w* = argmin_{w in simplex} g_w^T g0 + c ||g0|| ||g_w||  (``solvers.cagrad_weights``),
  d = g0 + c ||g0|| / ||g_w*|| g_w*, i.e. alpha = 1/T + c ||g0|| / ||g_w*|| w*
  (``solvers.cagrad_alpha``; the correction is dropped when ||g_w*||^2 < 1e-8 tr G / T);
  then divided by 1 + c^2 (rescale 1), 1 + c (rescale 2) or 1 (rescale 0), and multiplied
  by T under ``match_sum``.  Task-specific parameters get unweighted gradients.

  Args:
    c: radius of the ball around g0, relative to ||g0|| (>= 0; 0 gives the mean gradient).
    rescale: 0, 1 or 2, the final scaling above (1 is the authors' default).
    match_sum: multiply alpha by T to compare with the sum of losses; False gives the scale
      of the mean gradient (as in LibMTL).
    max_iters: iteration cap of the barrier solver for w*.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """
  if c < 0:
    raise ValueError(f'cagrad: c must be >= 0, got {c}')
  checks.choice('cagrad', 'rescale', rescale, (0, 1, 2))

  def update(inputs, state, key):
    del key
    alpha = solvers.cagrad_alpha(inputs.gram, c, rescale, max_iters=max_iters)
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('cagrad', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
