"""MoCo: multi-objective gradient correction with tracked gradients."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, solvers
from mtl_jax._src.weighting import jacobian as jac_lib
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

SIMPLEX_MAPS = ('projection', 'softmax')


def _unit_interval(method: str, name: str, value) -> float:
  value = checks.check_finite(method, name, value, minimum=0.0)
  if value > 1:
    raise ValueError(f'{method}: {name} must be <= 1.0, got {value}')
  return value


@registry.WEIGHTINGS.register('moco')
def moco(beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
         gamma_sigma: float = 0.5, rho: float = 0.0, scale_by_loss: bool = False,
         simplex: str = 'projection', match_sum: bool = True) -> Weighting:
  """MoCo: the min-norm combination of tracked (bias-corrected) task gradients.

  Fernando, Shen, Liu, Chaudhury, Murugesan and Chen (2023), "Mitigating Gradient Bias in
  Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.

  State: tracked gradients Y [T, P] (rows y_t, 0 at init), lambda [T] (1/T at init) and the
  step count k (1 at the first update).  With beta_k = beta / k^beta_sigma and
  gamma_k = gamma / k^gamma_sigma:

      y_t    <- y_t - beta_k (y_t - g_t)
      lambda <- Pi(lambda - gamma_k (Y Y^T + rho I) lambda)
      d       = Y^T lambda             (x T under ``match_sum``)

  with Pi the Euclidean projection onto the simplex (the paper).  The hyperparameters'
  defaults are LibMTL's (``MoCo_beta`` etc. there).  LibMTL's code differs in two ways, both
  available here: it first rescales each gradient to the norm of its loss,
  g_t <- g_t L_t / (||g_t|| + 1e-8) (``scale_by_loss``), and maps with a softmax instead of
  the projection (``simplex='softmax'``).  The method returns d itself (``direct``): it is a
  combination of the tracked rows, not of this step's gradients; its reported weights are
  lambda (x T under ``match_sum``).  Task-specific parameters get unweighted gradients.  The
  state holds T vectors of the shared parameters' size (``state_like_params``: not in engine
  mode 'rep').

  Args:
    beta: tracking rate of Y, in [0, 1].
    beta_sigma: decay exponent of beta_k (>= 0).
    gamma: step size of lambda (>= 0).
    gamma_sigma: decay exponent of gamma_k (>= 0).
    rho: l2 regularisation of lambda's step (>= 0).
    scale_by_loss: rescale each gradient to norm L_t before tracking it (LibMTL).
    simplex: 'projection' (the paper) or 'softmax' (LibMTL) for the map onto the simplex.
    match_sum: multiply lambda (and d) by T, to compare with the sum of losses; False gives
      d = Y^T lambda with sum_t lambda_t = 1, as in LibMTL.

  Returns:
    The ``Weighting`` (direct; state {'y': [T, P] float32, 'lambda': [T], 'count': int32};
    at least 2 tasks).
  """
  beta = _unit_interval('moco', 'beta', beta)
  beta_sigma = checks.check_finite('moco', 'beta_sigma', beta_sigma, minimum=0.0)
  gamma = checks.check_finite('moco', 'gamma', gamma, minimum=0.0)
  gamma_sigma = checks.check_finite('moco', 'gamma_sigma', gamma_sigma, minimum=0.0)
  rho = checks.check_finite('moco', 'rho', rho, minimum=0.0)
  scale_by_loss = checks.check_bool('moco', 'scale_by_loss', scale_by_loss)
  checks.choice('moco', 'simplex', simplex, SIMPLEX_MAPS)
  match_sum = checks.check_bool('moco', 'match_sum', match_sum)

  def init(num_tasks, shared):
    return {'y': jnp.zeros((num_tasks, jac_lib.size(shared)), jnp.float32),
            'lambda': jnp.full((num_tasks,), 1 / num_tasks, jnp.float32),
            'count': jnp.zeros((), jnp.int32)}

  def update(inputs, state, key):
    del key
    g = jac_lib.flatten(inputs.jacobian)
    dtype = jnp.result_type(jnp.float32, g.dtype)
    g = g.astype(dtype)
    num = g.shape[0]
    if scale_by_loss:
      norms = jnp.linalg.norm(g, axis=1)
      g = g * (inputs.losses.astype(dtype) / (norms + checks.EPS))[:, None]
    k = (state['count'] + 1).astype(dtype)
    y = state['y'].astype(dtype)
    y = y - beta / k ** beta_sigma * (y - g)
    lam = state['lambda'].astype(dtype)
    step = (y @ y.T + rho * jnp.eye(num, dtype=dtype)) @ lam
    lam = lam - gamma / k ** gamma_sigma * step
    lam = jax.nn.softmax(lam) if simplex == 'softmax' else solvers.project_to_simplex(lam)
    weights = checks.match_sum(lam, match_sum)
    direction = jac_lib.unflatten(weights @ y, inputs.jacobian)
    new_state = {'y': y.astype(jnp.float32), 'lambda': lam.astype(jnp.float32),
                 'count': state['count'] + 1}
    return WeightingResult(weights, new_state, direction=direction)

  return Weighting('moco', Needs.JACOBIAN, init=init, update=update, head_grads='unweighted',
                   min_tasks=2, direct=True, state_like_params=True)
