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

  Args:
    match_sum: multiply alpha by T to compare with the sum of losses; False reproduces
      torchjd (the projection of the mean gradient).
    norm_eps: G is treated as 0 below this trace.
    reg_eps: ridge added to the normalised G, for the uniqueness of the projection.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """

  def update(inputs, state, key):
    del key
    alpha = solvers.dualproj_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('dualproj', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
