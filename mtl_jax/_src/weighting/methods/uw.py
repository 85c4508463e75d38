"""UW: uncertainty weighting with learned log-variances."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


class UWState(NamedTuple):
  log_vars: jax.Array              # s = log sigma^2 [T]
  opt_state: optax.OptState        # Adam state of s


@registry.WEIGHTINGS.register('uw')
def uw(init: float = 0.0, lr: float = 0.025) -> Weighting:
  """Uncertainty weighting, regression form for every task.

  Kendall, Gal and Cipolla (2018), "Multi-Task Learning Using Uncertainty to Weigh Losses for
  Scene Geometry and Semantics", CVPR 2018.

  S = sum_t (1/2 e^{-s_t} L_t + 1/2 s_t) with learned log-variances s_t = log sigma_t^2, so
  alpha_t = dS/dL_t = 1/2 e^{-s_t}.  Each update, s takes one Adam step on the closed-form
  gradient dS/ds_t = 1/2 - 1/2 e^{-s_t} L_t at the current (stop-gradient) losses; alpha uses
  s before that step.  s has its own Adam, not the model optimiser (a pure weighting method
  cannot reach the model's), as in the Nash-MTL authors' code.  For constant losses
  s -> log L_t and alpha_t -> 1 / (2 L_t).  ``aux['objective']`` is S.

  Args:
    init: initial log-variance s_t of every task (finite).
    lr: Adam learning rate of s (>= 0).

  Returns:
    The ``Weighting``; its state is ``UWState`` (float32).
  """
  init = checks.check_finite('uw', 'init', init)
  lr = checks.check_finite('uw', 'lr', lr, minimum=0.0)
  optimizer = optax.adam(lr)

  def init_state(num_tasks):
    log_vars = jnp.full((num_tasks,), init, jnp.float32)
    return UWState(log_vars, optimizer.init(log_vars))

  def update(inputs, state, key):
    del key
    losses = inputs.losses.astype(jnp.float32)
    precision = jnp.exp(-state.log_vars)
    grad_log_vars = 0.5 - 0.5 * precision * losses
    updates, opt_state = optimizer.update(grad_log_vars, state.opt_state, state.log_vars)
    new_state = UWState(optax.apply_updates(state.log_vars, updates), opt_state)
    objective = jnp.sum(0.5 * precision * losses + 0.5 * state.log_vars)
    return WeightingResult(0.5 * precision, new_state, aux={'objective': objective})

  return Weighting('uw', Needs.LOSSES, init=init_state, update=update)
