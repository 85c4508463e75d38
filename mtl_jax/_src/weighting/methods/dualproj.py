"""DualProj: projection of the mean gradient onto the dual cone."""

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('dualproj')
def dualproj(match_sum: bool = True, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Weighting:
  """DualProj: the projection of the mean gradient onto the dual cone {x : J x >= 0}.

  The aggregator of Quinton and Rey (2024), "Jacobian Descent for Multi-Objective
  Optimization", arXiv:2406.16232 (the torchjd library), after the projection of Lopez-Paz and
  Ranzato (2017), "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.

  alpha = argmin_{v >= 1/T} v^T G~ v with G~ = G / tr G + reg_eps I (G / tr G taken as 0 when
  tr G < norm_eps), by ``solvers.dualproj_weights``; x T under ``match_sum``.  Task-specific
  parameters get unweighted gradients.

  The default reg_eps = 1e-4 is torchjd's Tikhonov regularisation of G / tr G, which makes
  the weights unique and bounded when rank(G) < T, at a price: d moves from the exact
  projection wherever a constraint's curvature (||g_t||^2 / tr G, or the gap between two
  nearly opposite gradients) is not much larger than reg_eps, as measured in float64: 27% with
  two of five gradients at cosine -0.999, up to 9% with one gradient 100 times shorter than
  four others (0 when the mean gradient is already in the cone).  reg_eps = 0 gives the
  exact projection (1e-13 relative in float64 in the tests).

  Args:
    match_sum: multiply alpha by T to compare with the sum of losses; False reproduces
      torchjd (the projection of the mean gradient).
    norm_eps: G is treated as 0 below this trace.
    reg_eps: ridge added to the normalised G (>= 0; 0 for the exact projection; see above).

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """

  def update(inputs, state, key):
    del key
    alpha = solvers.dualproj_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('dualproj', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
