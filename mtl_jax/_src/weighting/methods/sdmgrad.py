"""SDMGrad: stochastic direction-oriented multi-objective gradient descent."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

SCALE_EPS = 1e-8   # added to the squared scale of A




@registry.WEIGHTINGS.register('sdmgrad')
def sdmgrad(lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
            pref_vector: Optional[tuple] = None, match_sum: bool = True) -> Weighting:
  """SDMGrad: MGDA pulled towards a preferred direction, on independent sub-batches.

  Xiao, Ban and Ji (2023), "Direction-oriented Multi-objective Learning: Simple and Provable
  Stochastic Algorithms", NeurIPS 2023.

  The step splits its batch into three independent equal sub-batches xi, xi', zeta (the
  method's ``sub_batches`` = 3, in that order) and reads their gradients J_xi, J_xi', J_zeta
  [T, P].  With the cross-batch product A = J_xi J_xi'^T, scaled to
  A / (s^2 + 1e-8), s = mean_t sqrt(max(A_tt, 0)), and the preference w~ (``pref_vector``;
  1/T each if None), ``n_iter`` steps of SGD with momentum (velocity v reset to 0 at each
  update) on the weights w of

      min_{w in simplex} 1/2 || J^T (w + lambda_ w~) ||^2,
      v <- momentum v + A (w + lambda_ w~),  w <- Pi_simplex(w - lr v),

  Pi_simplex the Euclidean projection onto {w >= 0, sum w = 1}; w starts at 1/T and is kept
  across steps (state).  Then d = J_zeta^T (w + lambda_ w~) / (1 + lambda_), times T under
  ``match_sum``.  The weights are the 3T coefficients of the sub-batches' rows (0 on xi and
  xi'), sub-batch major.  Task-specific parameters get unweighted gradients, those of the
  whole batch (the mean of the sub-batches').

  Args:
    lr: learning rate of the inner SGD on w (> 0).  The default is TorchJD's and the
      authors'; LibMTL uses 5.
    momentum: momentum of the inner SGD, in [0, 1).
    n_iter: inner SGD steps per update (an int >= 1).
    lambda_: how far d is pulled towards the preferred direction J^T w~ (>= 0); 0 is a
      stochastic MGDA.  0.3 as in TorchJD, LibMTL and the authors' experiments.
    pref_vector: the preference w~ (T numbers), or None for 1/T each (the mean gradient).
    match_sum: multiply the coefficients by T to compare with the sum of losses (as the
      authors' code); False gives (w + lambda_ w~) / (1 + lambda_), as TorchJD and LibMTL.

  Returns:
    The ``Weighting`` (state: {'w': [T]}; ``sub_batches`` = 3; at least 2 tasks).
  """
  lr = checks.check_finite('sdmgrad', 'lr', lr, minimum=0.0, strict=True)
  momentum = checks.check_finite('sdmgrad', 'momentum', momentum, minimum=0.0)
  if momentum >= 1:
    raise ValueError(f'sdmgrad: momentum must be < 1.0, got {momentum}')
  if (not isinstance(n_iter, (int, np.integer)) or isinstance(n_iter, (bool, np.bool_))
      or n_iter < 1):
    raise ValueError(f'sdmgrad: n_iter must be an int >= 1, got {n_iter!r}')
  n_iter = int(n_iter)
  lambda_ = checks.check_finite('sdmgrad', 'lambda_', lambda_, minimum=0.0)
  pref = checks.check_vector('sdmgrad', 'pref_vector', pref_vector, optional=True)
  match_sum = checks.check_bool('sdmgrad', 'match_sum', match_sum)

  def check_length(num):
    if pref is not None and pref.shape != (num,):
      raise ValueError(f'sdmgrad: pref_vector has {pref.size} entries for {num} tasks')

  def init(num_tasks):
    check_length(num_tasks)
    return {'w': jnp.full((num_tasks,), 1 / num_tasks, float)}  # float64 under x64

  def update(inputs, state, key):
    del key
    g = inputs.gram                              # [3T, 3T], block (b, c) = J_b J_c^T
    num = g.shape[0] // 3
    check_length(num)
    a = g[:num, num:2 * num]                     # A = J_xi J_xi'^T
    scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diag(a), 0)))
    a = a / (scale * scale + SCALE_EPS)
    w_tilde = (jnp.full((num,), 1 / num, g.dtype) if pref is None
               else jnp.asarray(pref, g.dtype))
    a_pref = lambda_ * (a @ w_tilde)

    def step(_, carry):
      w, velocity = carry
      velocity = momentum * velocity + a @ w + a_pref
      return solvers.project_to_simplex(w - lr * velocity), velocity

    w0 = state['w'].astype(g.dtype)
    w, _ = jax.lax.fori_loop(0, n_iter, step, (w0, jnp.zeros_like(w0)))
    alpha = checks.match_sum((w + lambda_ * w_tilde) / (1 + lambda_), match_sum)
    zeros = jnp.zeros((2 * num,), g.dtype)
    return WeightingResult(jnp.concatenate([zeros, alpha]), {'w': w.astype(state['w'].dtype)})

  return Weighting('sdmgrad', Needs.GRAM, init=init, update=update, head_grads='unweighted',
                   min_tasks=2, sub_batches=3)
