"""MoDo: multi-objective gradient with double sampling."""

import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult



@registry.WEIGHTINGS.register('modo')
def modo(gamma: float = 0.1, rho: float = 0.1, num_batches: int = 3,
         match_sum: bool = True) -> Weighting:
  """MoDo: a stochastic MGDA whose weights follow a projected gradient on two batches.

  Chen, Fernando, Ying and Chen (2023), "Three-Way Trade-Off in Multi-Objective Learning:
  Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023 (JMLR 2024).

  The step splits its batch into ``num_batches`` independent equal sub-batches (the method's
  ``sub_batches``) and reads the gradients J_1, J_2 (, J_3) [T, P] of each.  With the
  cross-batch product A = J_1 J_2^T (an unbiased estimate of G = J J^T, not symmetric),

      lambda <- Pi_simplex(lambda - gamma (A lambda + rho lambda)),

  Pi_simplex the Euclidean projection onto {lambda >= 0, sum lambda = 1}, lambda starting at
  1/T and kept across steps (state).  The direction uses the new lambda:
  d = J_3^T lambda on the third sub-batch (``num_batches=3``, as LibMTL and the authors' code
  with ``three_grads=True``), or d = (J_1 + J_2)^T lambda / 2 (``num_batches=2``, the paper's
  eq. 2.9), times T under ``match_sum``.  The weights are the 3T (2T) coefficients of the
  sub-batches' rows, sub-batch major; summed over sub-batches they are lambda (x T).
  Task-specific parameters get unweighted gradients, those of the whole batch (the mean of
  the sub-batches', as LibMTL divides its three backward passes by 3).

  Args:
    gamma: step size of the lambda update (> 0).  The default is TorchJD's; LibMTL's is 1e-3.
    rho: l2 regularisation of the lambda update (>= 0); 0.1 in TorchJD and LibMTL.
    num_batches: 3 (lambda from sub-batches 1 and 2, d from sub-batch 3) or 2 (both from
      sub-batches 1 and 2); the batch size must be a multiple of it.
    match_sum: multiply the coefficients by T to compare with the sum of losses; False gives
      lambda itself (sum 1), as TorchJD and LibMTL.

  Returns:
    The ``Weighting`` (state: {'lambda': [T]}; ``sub_batches`` = ``num_batches``; at least 2
    tasks).
  """
  gamma = checks.check_finite('modo', 'gamma', gamma, minimum=0.0, strict=True)
  rho = checks.check_finite('modo', 'rho', rho, minimum=0.0)
  if (not isinstance(num_batches, (int, np.integer)) or isinstance(num_batches, (bool, np.bool_))
      or num_batches not in (2, 3)):
    raise ValueError(f'modo: num_batches must be 2 or 3, got {num_batches!r}')
  k = int(num_batches)
  match_sum = checks.check_bool('modo', 'match_sum', match_sum)

  def init(num_tasks):
    return {'lambda': jnp.full((num_tasks,), 1 / num_tasks, float)}  # float64 under x64

  def update(inputs, state, key):
    del key
    g = inputs.gram                              # [k T, k T], block (b, c) = J_b J_c^T
    num = g.shape[0] // k
    a = g[:num, num:2 * num]                     # A = J_1 J_2^T
    lam = state['lambda'].astype(g.dtype)
    lam = solvers.project_to_simplex(lam - gamma * (a @ lam + rho * lam))
    alpha = checks.match_sum(lam, match_sum)
    zeros = jnp.zeros((num,), g.dtype)
    rows = [zeros, zeros, alpha] if k == 3 else [alpha / 2, alpha / 2]
    return WeightingResult(jnp.concatenate(rows), {'lambda': lam.astype(state['lambda'].dtype)})

  return Weighting('modo', Needs.GRAM, init=init, update=update, head_grads='unweighted',
                   min_tasks=2, sub_batches=k)
