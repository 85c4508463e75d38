"""IMTL-L: impartial multi-task learning, loss part (learned loss scales)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


class IMTLLState(NamedTuple):
  log_scale: jax.Array             # s [T]; the loss of task t is scaled by e^{s_t}
  opt_state: optax.OptState        # Adam state of s


def check_scale_hparams(method: str, init, lr):
  """The checked ``(init, lr)`` of the learned log-scales and their Adam optimiser."""
  init = checks.check_finite(method, 'init', init)
  lr = checks.check_finite(method, 'lr', lr, minimum=0.0)
  return init, lr, optax.adam(lr)


def init_scales(optimizer, init: float, num_tasks: int) -> IMTLLState:
  """s_t = ``init`` for every task, and the optimiser state of s."""
  log_scale = jnp.full((num_tasks,), init, jnp.float32)
  return IMTLLState(log_scale, optimizer.init(log_scale))


def step_scales(optimizer, state: IMTLLState, losses: jax.Array) -> IMTLLState:
  """One optimiser step of s on sum_t (e^{s_t} L_t - s_t), whose gradient is
  e^{s_t} L_t - 1, at the given (constant) losses."""
  grad = jnp.exp(state.log_scale) * losses.astype(jnp.float32) - 1.0
  updates, opt_state = optimizer.update(grad, state.opt_state, state.log_scale)
  return IMTLLState(optax.apply_updates(state.log_scale, updates), opt_state)


@registry.WEIGHTINGS.register('imtl_l')
def imtl_l(init: float = 0.0, lr: float = 0.025) -> Weighting:
  """IMTL-L: losses scaled by learned factors e^{s_t}, regularised by -s_t.

  Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang (2021), "Towards Impartial Multi-task
  Learning", ICLR 2021.

  S = sum_t (e^{s_t} L_t - s_t) with learned log-scales s (init 0: S starts as the plain sum
  of losses), so alpha_t = dS/dL_t = e^{s_t}.  For constant losses the optimum is
  e^{s_t} = 1 / L_t: every scaled loss e^{s_t} L_t tends to 1.  S equals 2 x UW's objective at
  log-variances -s.  Each update, s takes one Adam step on dS/ds_t = e^{s_t} L_t - 1 at the
  current (stop-gradient) losses; alpha uses s before that step.  s has its own Adam, as in
  ``uw`` (a pure weighting method cannot reach the model's optimiser, with which the paper
  and TorchJD's ``IMTLL`` train s).  Losses are assumed >= 0 (a zero loss drives s up by about
  ``lr`` per update).  ``aux['objective']`` is S.

  Args:
    init: initial log-scale s_t of every task (finite).
    lr: Adam learning rate of s (>= 0).

  Returns:
    The ``Weighting``; its state is ``IMTLLState`` (float32).
  """
  init, lr, optimizer = check_scale_hparams('imtl_l', init, lr)

  def update(inputs, state, key):
    del key
    losses = inputs.losses.astype(jnp.float32)
    scale = jnp.exp(state.log_scale)
    objective = jnp.sum(scale * losses - state.log_scale)
    return WeightingResult(scale, step_scales(optimizer, state, losses),
                           aux={'objective': objective})

  return Weighting('imtl_l', Needs.LOSSES, init=lambda num: init_scales(optimizer, init, num),
                   update=update)
