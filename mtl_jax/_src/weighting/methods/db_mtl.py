"""DB-MTL: dual balancing of loss scales (log-losses) and gradient magnitudes."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting import jacobian as jac_lib
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


@registry.WEIGHTINGS.register('db_mtl')
def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0) -> Weighting:
  """DB-MTL: EMA of log-loss gradients, each rescaled to the largest one's norm.

  Lin, Jiang, Ye, Zhang, Chen, Chen, Liu and Kwok (2023), "Dual-Balancing for Multi-Task
  Learning", arXiv:2308.12029.

  Loss-scale balancing: h_t = g_t / (L_t + 1e-8), the gradient of log(L_t + 1e-8) (losses are
  clamped at 0 first, so that a negative loss cannot flip its gradient).  State: a buffer
  B [T, P] (rows b_t, 0 at init) and the step count k (1 at the first update):

      b_t     <- h_t + beta_k (b_t - h_t),          beta_k = beta / k^beta_sigma
      alpha_t  = max_s ||b_s|| / (||b_t|| + 1e-8)   (gradient-magnitude balancing)
      d        = sum_t alpha_t b_t

  (the first update gives b_t = (1 - beta) h_t).  Defaults are LibMTL's (``DB_beta``,
  ``DB_beta_sigma`` there).  The method returns d itself (``direct``); its reported weights
  are alpha.  Task-specific parameters get unweighted gradients grad L_t, whereas LibMTL
  back-propagates the log-losses, so that its heads receive grad log L_t = grad L_t / L_t;
  the library's log-loss transform (which applies log to the losses of any method) gives
  those.  The state holds T vectors of the shared parameters' size (``state_like_params``:
  not in engine mode 'rep').

  Args:
    beta: EMA rate of the buffer, in [0, 1] (0: no averaging).
    beta_sigma: decay exponent of beta_k (>= 0; 0: constant beta).

  Returns:
    The ``Weighting`` (direct; state {'buffer': [T, P] float32, 'count': int32}).
  """
  beta = checks.check_finite('db_mtl', 'beta', beta, minimum=0.0)
  if beta > 1:
    raise ValueError(f'db_mtl: beta must be <= 1.0, got {beta}')
  beta_sigma = checks.check_finite('db_mtl', 'beta_sigma', beta_sigma, minimum=0.0)

  def init(num_tasks, shared):
    return {'buffer': jnp.zeros((num_tasks, jac_lib.size(shared)), jnp.float32),
            'count': jnp.zeros((), jnp.int32)}

  def update(inputs, state, key):
    del key
    g = jac_lib.flatten(inputs.jacobian)
    dtype = jnp.result_type(jnp.float32, g.dtype)
    losses = jnp.maximum(inputs.losses.astype(dtype), 0)
    h = g.astype(dtype) / (losses + checks.EPS)[:, None]
    k = (state['count'] + 1).astype(dtype)
    buffer = h + beta / k ** beta_sigma * (state['buffer'].astype(dtype) - h)
    norms = jnp.linalg.norm(buffer, axis=1)
    alpha = jnp.max(norms) / (norms + checks.EPS)
    direction = jac_lib.unflatten(alpha @ buffer, inputs.jacobian)
    new_state = {'buffer': buffer.astype(jnp.float32), 'count': state['count'] + 1}
    return WeightingResult(alpha, new_state, direction=direction)

  return Weighting('db_mtl', Needs.JACOBIAN, init=init, update=update,
                   head_grads='unweighted', direct=True, state_like_params=True)
