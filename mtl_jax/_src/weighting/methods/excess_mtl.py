"""ExcessMTL: task weights driven by estimated excess risks."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting import jacobian as jac_lib
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

ROOT_EPS = 1e-7  # inside the square root of the accumulated squares, and under the baseline


@registry.WEIGHTINGS.register('excess_mtl')
def excess_mtl(robust_step_size: float = 1.0, n_warmup_steps: int = 0,
               update_on_first_call: bool = True, match_sum: bool = True) -> Weighting:
  """ExcessMTL: exponentiated-gradient weights on the tasks' estimated excess risks.

  He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi and Zhao (2024), "Robust Multi-Task Learning with
  Excess Risks", ICML 2024.

  State: accumulated squares S [T, P] (AdaGrad-style diagonal curvature, 0 at init), the
  baseline excess e0 [T], the weights w [T] (on the simplex, 1/T at init) and a call counter.
  Each call: S_t <- S_t + g_t^2 (element-wise), then the excess-risk estimate (a second-order
  Taylor expansion with that diagonal)

      e_t = sum_j g_tj^2 / sqrt(S_tj + 1e-7).

  The first ``n_warmup_steps`` calls only average e into e0 (w stays uniform).  The first call
  after them sets the baseline (the warm-up mean, or this call's e without warm-up) and, like
  every later call, takes one exponentiated-gradient step on the normalised excess

      w_t <- w_t exp(eta e_t / (e0_t + 1e-7)) / sum_s w_s exp(eta e_s / (e0_s + 1e-7)),

  except without warm-up on the first call, which uses the raw e_t (``update_on_first_call``)
  or leaves w unchanged (False).  d = J^T w (x T under ``match_sum``); the authors
  back-propagate sum_t w_t L_t, so task-specific parameters get weighted gradients.

  Defaults and names are TorchJD's (eta = ``robust_step_size`` = 1, no warm-up, an update on
  the first call, w on the simplex), TorchJD being this library's convention where it has the
  method.  The authors' code and LibMTL instead start from w = 1 renormalised to sum T
  (``match_sum=True``: the same weights), skip the first call's update and use eta = 1e-2:
  ``excess_mtl(robust_step_size=1e-2, update_on_first_call=False)`` (their baseline division
  has no 1e-7).  The state holds the accumulated squares, T vectors of the shared parameters'
  size (``state_like_params``: not in engine mode 'rep').

  Args:
    robust_step_size: eta, the step size of the exponentiated weight update (> 0).
    n_warmup_steps: calls that only collect the baseline e0 (>= 0; the paper suggests 3
      epochs of steps).
    update_on_first_call: without warm-up, whether the first call already updates w with its
      raw excess estimates (TorchJD) or only records the baseline (the authors, LibMTL).
    match_sum: multiply w by T (sum T, as the authors' code and LibMTL); False gives TorchJD's
      weights on the simplex.

  Returns:
    The ``Weighting`` (state {'sq_sum': [T, P] float32, 'baseline': [T], 'weights': [T],
    'count': int32}).
  """
  robust_step_size = checks.check_finite('excess_mtl', 'robust_step_size', robust_step_size,
                                         minimum=0.0, strict=True)
  if type(n_warmup_steps) is not int or n_warmup_steps < 0:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f'excess_mtl: n_warmup_steps must be an integer >= 0, got '
                     f'{n_warmup_steps!r}')
  update_on_first_call = checks.check_bool('excess_mtl', 'update_on_first_call',
                                           update_on_first_call)
  match_sum = checks.check_bool('excess_mtl', 'match_sum', match_sum)

  def init(num_tasks, shared):
    return {'sq_sum': jnp.zeros((num_tasks, jac_lib.size(shared)), jnp.float32),
            'baseline': jnp.zeros((num_tasks,), jnp.float32),
            'weights': jnp.full((num_tasks,), 1 / num_tasks, jnp.float32),
            'count': jnp.zeros((), jnp.int32)}

  def update(inputs, state, key):
    del key
    g = jac_lib.flatten(inputs.jacobian)
    dtype = jnp.result_type(jnp.float32, g.dtype)
    sq = jnp.square(g.astype(dtype))
    sq_sum = state['sq_sum'].astype(dtype) + sq
    excess = jnp.sum(sq / jnp.sqrt(sq_sum + ROOT_EPS), axis=1)
    count = state['count']
    baseline = state['baseline'].astype(dtype)
    warming = count < n_warmup_steps
    first = count == n_warmup_steps
    if n_warmup_steps:
      start = baseline / n_warmup_steps           # the warm-up mean
      ratio = excess / (jnp.where(first, start, baseline) + ROOT_EPS)
      stepping = ~warming
    else:
      start = excess
      normalised = excess / (baseline + ROOT_EPS)
      ratio = jnp.where(first, excess, normalised) if update_on_first_call else normalised
      stepping = jnp.asarray(True) if update_on_first_call else ~first
    baseline = jnp.where(warming, baseline + excess, jnp.where(first, start, baseline))
    weights = state['weights'].astype(dtype)
    # The exponentiated step in log space: a huge ratio saturates w instead of overflowing.
    stepped = jax.nn.softmax(jnp.log(weights) + robust_step_size * ratio)
    weights = jnp.where(stepping, stepped, weights)
    new_state = {'sq_sum': sq_sum.astype(jnp.float32),
                 'baseline': baseline.astype(jnp.float32),
                 'weights': weights.astype(jnp.float32),
                 # only count < n_warmup_steps and count == n_warmup_steps matter: saturate
                 'count': jnp.minimum(count + 1, n_warmup_steps + 1)}
    return WeightingResult(checks.match_sum(weights, match_sum), new_state)

  return Weighting('excess_mtl', Needs.JACOBIAN, init=init, update=update,
                   head_grads='weighted', state_like_params=True)
