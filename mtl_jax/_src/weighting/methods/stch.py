"""STCH: smooth Tchebycheff scalarisation."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

_LOG_EPS = 1e-20     # added inside the logarithms of the warm-up variant, as in LibMTL
_NADIR_FLOOR = 1e-12  # floor of the nadir point, so that a zero mean loss stays finite


class STCHState(NamedTuple):
  updates: jax.Array               # int32, updates so far (capped at the end of the warm-up)
  nadir_sum: jax.Array             # [T] sum of the losses of the last warm-up epoch


def check_vector(method: str, name: str, value, *, nonneg: bool) -> Optional[np.ndarray]:
  """``value`` as a float32 vector (None stays None); raises ``ValueError`` naming ``method``
  and ``name`` unless it is a non-empty vector of finite numbers (>= 0 if ``nonneg``)."""
  if value is None:
    return None
  try:
    vec = np.asarray(value, dtype=np.float32)
  except (TypeError, ValueError):
    raise ValueError(f'{method}: {name} must be a sequence of numbers, got {value!r}') from None
  if vec.ndim != 1 or vec.size == 0:
    raise ValueError(f'{method}: {name} must be a non-empty vector, got shape {vec.shape}')
  if not np.all(np.isfinite(vec)):
    raise ValueError(f'{method}: {name} must be finite, got {vec.tolist()}')
  if nonneg and np.any(vec < 0):
    raise ValueError(f'{method}: {name} must be >= 0, got {vec.tolist()}')
  return vec


def check_length(method: str, name: str, vec: Optional[np.ndarray], num: int) -> None:
  """Raises ``ValueError`` if ``vec`` is given and does not have ``num`` entries."""
  if vec is not None and vec.shape != (num,):
    raise ValueError(f'{method}: {vec.size} {name} given for {num} tasks')


def check_count(method: str, name: str, value, *, minimum: int) -> int:
  """``int(value)`` if it is an int (not a bool) >= ``minimum``, else ``ValueError``."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_))
      or value < minimum):
    raise ValueError(f'{method}: {name} must be an int >= {minimum}, got {value!r}')
  return int(value)


@registry.WEIGHTINGS.register('stch')
def stch(mu: float = 1.0, weights: Optional[tuple] = None, ideal_point: Optional[tuple] = None,
         warmup_epochs: int = 0, steps_per_epoch: int = 0) -> Weighting:
  """Smooth Tchebycheff scalarisation, paper form or the authors' warm-up MTL variant.

  Lin, Zhang, Liu, Zhang and Yang (2024), "Smooth Tchebycheff Scalarization for
  Multi-Objective Optimization", ICML 2024.

  Paper form (``warmup_epochs=0``, the default): with preference lambda (``weights``; 1/T
  each if None), ideal point z* (``ideal_point``; 0 if None) and smoothing mu,

      S(L) = mu log sum_t exp(lambda_t (L_t - z*_t) / mu),

  a smooth upper bound of max_t lambda_t (L_t - z*_t), tighter as mu decreases, so
  alpha_t = dS/dL_t = lambda_t pi_t with pi = softmax(y / mu), y = lambda (L - z*).  Computed
  with y - max(y) in the exponent (value- and gradient-preserving), so large losses and a
  small mu do not overflow.  Note sum_t alpha_t = sum_t lambda_t pi_t <= max_t lambda_t (1/T
  with the default preference).  Stateless.

  Warm-up variant (``warmup_epochs`` = W > 0; it needs ``steps_per_epoch``): during the
  first W epochs S = sum_t log(L_t + 1e-20), alpha_t = 1 / (L_t + 1e-20); the mean loss
  vector N over the last of them (the W-th epoch) becomes the nadir point; afterwards

      S = T mu log sum_t exp(z_t / mu),  z_t = log(L_t / N_t + 1e-20),
      alpha_t = T softmax(z / mu)_t / (L_t + 1e-20 N_t),

  (lambda = 1, losses log-normalised by N, times T), which is the MTL procedure of the
  authors' code as LibMTL's STCH runs it, whose ``STCH_warmup_epoch`` = W - 1 (its epochs
  count from 0; its epoch W - 1 both trains on log-losses and collects N) and default mu = 1,
  ``STCH_warmup_epoch`` = 4 (``warmup_epochs=5`` here).  N is floored at 1e-12 and z computed
  as log(L_t + 1e-20 N_t) - log N_t.  Epochs are counted by the state itself (updates /
  ``steps_per_epoch``), so the method also runs under ``combine`` and resumes with its state.
  Losses are assumed >= 0.

  ``aux['objective']`` is S.

  Args:
    mu: smoothing parameter (> 0).
    weights: preference lambda, one finite value >= 0 per task, or None for 1/T each (paper
      form only).
    ideal_point: ideal point z*, one finite value per task, or None for no shift (paper form
      only).
    warmup_epochs: 0 for the paper form; W > 0 for the warm-up variant (W epochs of
      log-losses, the last one giving the nadir point).
    steps_per_epoch: updates per epoch (a positive int; read when ``warmup_epochs`` > 0).  The
      default 0 stands for "one epoch of the training data", which the trainer substitutes.

  Returns:
    The ``Weighting``: stateless in the paper form; in the warm-up variant its state is
    ``STCHState``.
  """
  mu = checks.check_finite('stch', 'mu', mu, minimum=0.0, strict=True)
  pref = check_vector('stch', 'weights', weights, nonneg=True)
  ideal = check_vector('stch', 'ideal_point', ideal_point, nonneg=False)
  warmup_epochs = check_count('stch', 'warmup_epochs', warmup_epochs, minimum=0)
  steps_per_epoch = check_count('stch', 'steps_per_epoch', steps_per_epoch, minimum=0)
  if warmup_epochs > 0:
    if steps_per_epoch == 0:
      raise ValueError('stch: steps_per_epoch=0 means "one epoch of the training data", which '
                       'only the trainer knows (it substitutes the value); with warmup_epochs '
                       '> 0, pass the number of updates per epoch (a positive int)')
    if pref is not None or ideal is not None:
      raise ValueError('stch: weights and ideal_point belong to the paper form (warmup_epochs'
                       '=0); the warm-up variant normalises the losses by its nadir point')

  def check_tasks(num):
    check_length('stch', 'weights', pref, num)
    check_length('stch', 'ideal_point', ideal, num)

  def paper_form(losses):
    num = losses.shape[0]
    check_tasks(num)
    lam = jnp.full((num,), 1.0 / num, jnp.float32) if pref is None else jnp.asarray(pref)
    y = lam * (losses if ideal is None else losses - ideal)
    y_max = jnp.max(y)
    exponents = (y - y_max) / mu
    weights_out = lam * jax.nn.softmax(exponents)
    objective = mu * jax.nn.logsumexp(exponents) + y_max
    return weights_out, objective

  def warmup_variant(losses, state):
    num = losses.shape[0]
    epoch = state.updates // steps_per_epoch
    warm = epoch < warmup_epochs
    log_objective = jnp.sum(jnp.log(losses + _LOG_EPS))
    nadir = jnp.maximum(state.nadir_sum / steps_per_epoch, _NADIR_FLOOR)
    z = jnp.log(losses + _LOG_EPS * nadir) - jnp.log(nadir)
    pi = jax.nn.softmax(z / mu)
    stch_weights = num * pi / (losses + _LOG_EPS * nadir)
    stch_objective = num * mu * jax.nn.logsumexp(z / mu)
    weights_out = jnp.where(warm, 1.0 / (losses + _LOG_EPS), stch_weights)
    objective = jnp.where(warm, log_objective, stch_objective)
    collect = epoch == warmup_epochs - 1
    new_state = STCHState(
        updates=jnp.minimum(state.updates + 1, warmup_epochs * steps_per_epoch),
        nadir_sum=jnp.where(collect, state.nadir_sum + losses, state.nadir_sum))
    return weights_out, objective, new_state

  def init(num_tasks):
    check_tasks(num_tasks)
    if warmup_epochs == 0:
      return ()
    return STCHState(jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,), jnp.float32))

  def update(inputs, state, key):
    del key
    losses = inputs.losses.astype(jnp.float32)
    if warmup_epochs == 0:
      weights_out, objective = paper_form(losses)
      return WeightingResult(weights_out, state, aux={'objective': objective})
    weights_out, objective, new_state = warmup_variant(losses, state)
    return WeightingResult(weights_out, new_state, aux={'objective': objective})

  return Weighting('stch', Needs.LOSSES, init=init, update=update)
