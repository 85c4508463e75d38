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
  d = J^T alpha satisfies g_t . d >= 0 for every task (up to the reg_eps term:
  g_t . d >= -reg_eps tr G alpha_t).  Task-specific parameters get unweighted gradients.

  The default reg_eps = 1e-4 is torchjd's Tikhonov regularisation of G / tr G: each
  projection becomes strictly convex, so the weights are unique and bounded even when
  rank(G) < T.  It is not negligible everywhere: it moves d from the exact dual-cone
  projection by about 1e-4 relative on generic gradients, but by percents to tens of percents
  where a constraint's curvature (||g_t||^2 / tr G, or the gap between two nearly opposite
  gradients) is not much larger than reg_eps, as measured in float64: 29% with two of five
  gradients at cosine -0.999, up to 15% (median 3%) with one gradient 100 times shorter than
  four others.  reg_eps = 0 gives the exact projection (1e-13 relative in float64 in the
  tests; the weights need not be unique then, d is).

  Args:
    match_sum: multiply alpha by T to compare with the sum of losses; False reproduces
      torchjd (the mean of the projections).
    norm_eps: G is treated as 0 below this trace.
    reg_eps: ridge added to the normalised G (>= 0; 0 for the exact projection; see above).

  Returns:
    The ``Weighting`` (stateless, at least 2 tasks).
  """

  def update(inputs, state, key):
    del key
    alpha = solvers.upgrad_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(checks.match_sum(alpha, match_sum), state)

  return Weighting('upgrad', Needs.GRAM, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted', min_tasks=2)
