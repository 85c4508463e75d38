"""UPGrad: unconflicting projection of gradients (Jacobian descent)."""

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('upgrad')
def upgrad(match_sum: bool = True, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Weighting:
  """UPGrad: the mean of the projections of every g_i onto the dual cone {x : J x >= 0}.

  Quinton and Rey (2024), "Jacobian Descent for Multi-Objective Optimization",
  arXiv:2406.16232 (the torchjd library).

  alpha = sum_i argmin_{v >= e_i / T} v^T G~ v with G~ = G / tr G + reg_eps I (G / tr G taken
  as 0 when tr G < norm_eps), by ``solvers.upgrad_weights``; x T under ``match_sum``.  Then
  d = J^T alpha satisfies g_t . d >= 0 for every task (up to the reg_eps term).  Task-specific
  parameters get unweighted gradients.

  Args:
    match_sum: multiply alpha by T to compare with the sum of losses; False reproduces
      torchjd (the mean of the projections).
    norm_eps: G is treated as 0 below this trace.
    reg_eps: ridge added to the normalised G, for the uniqueness of the projections.

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """

  def update(inputs, state, key):
    del key
    alpha = solvers.upgrad_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('upgrad', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
