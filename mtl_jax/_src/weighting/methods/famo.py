"""FAMO: fast adaptive multitask optimisation."""

from typing import NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


class FAMOState(NamedTuple):
  logits: jax.Array                # xi [T]
  opt_state: optax.OptState        # Adam (with coupled decay) state of xi



@registry.WEIGHTINGS.register('famo')
def famo(gamma: float = 1e-3, beta: float = 0.025, eps: float = 1e-8,
         min_losses: Union[float, Sequence[float]] = 0.0, match_sum: bool = True) -> Weighting:
  """Fast adaptive multitask optimisation.

  Liu, Feng, Stone and Liu (2023), "FAMO: Fast Adaptive Multitask Optimization", NeurIPS
  2023.

  Weights: z = softmax(xi), D_t = max(L_t - L^min_t, 0) + eps, c = sum_t z_t / D_t (a
  constant), alpha_t = z_t / (c D_t), so sum_t alpha_t = 1 (x T under ``match_sum``).

  Logits (``after_step``, with the losses recomputed on the same batch after the parameter
  update): delta_t = log D_t(before) - log D_t(after), gradient J_softmax(xi)^T delta, i.e.
  z_j (delta_j - z . delta), then one Adam step with learning rate ``beta`` and coupled weight
  decay ``gamma`` (``optax.chain(add_decayed_weights(gamma), adam(beta))``, which is
  ``torch.optim.Adam(lr=beta, weight_decay=gamma)`` of the authors' code).

  Args:
    gamma: weight decay of the logits (>= 0).
    beta: Adam learning rate of the logits (>= 0).
    eps: added to the loss gaps D_t (> 0), so that zero gaps give finite weights.
    min_losses: L^min, the smallest attainable loss: a scalar or one value per task; losses
      below it are clamped to it.
    match_sum: multiply alpha by T to compare with the sum of losses; False reproduces the
      authors' code (sum_t alpha_t = 1).

  Returns:
    The ``Weighting``; its state is ``FAMOState`` and it has an ``after_step``.
  """
  gamma = checks.check_finite('famo', 'gamma', gamma, minimum=0.0)
  beta = checks.check_finite('famo', 'beta', beta, minimum=0.0)
  eps = checks.check_finite('famo', 'eps', eps, minimum=0.0, strict=True)
  match_sum = checks.check_bool('famo', 'match_sum', match_sum)
  min_losses = checks.check_vector('famo', 'min_losses', min_losses,
                                  scalar=True).astype(np.float32)
  optimizer = optax.chain(optax.add_decayed_weights(gamma), optax.adam(beta))

  def check_num_tasks(num):
    if min_losses.ndim == 1 and min_losses.shape != (num,):
      raise ValueError(f'famo: {min_losses.size} min_losses given for {num} tasks')

  def log_gap(losses):
    """log D = log(max(L - L^min, 0) + eps)."""
    losses = losses.astype(jnp.float32)
    check_num_tasks(losses.shape[0])
    return jnp.log(jnp.maximum(losses - min_losses, 0.0) + eps)

  def init(num_tasks):
    check_num_tasks(num_tasks)
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(logits, optimizer.init(logits))

  def update(inputs, state, key):
    del key
    # z_t / D_t normalised = softmax(xi - log D): no overflow however small D is.
    weights = jax.nn.softmax(state.logits - log_gap(inputs.losses))
    return WeightingResult(checks.match_sum(weights, match_sum), state)

  def after_step(state, losses_before, losses_after):
    decrease = log_gap(losses_before) - log_gap(losses_after)
    z = jax.nn.softmax(state.logits)
    grad_logits = z * (decrease - jnp.dot(z, decrease))
    updates, opt_state = optimizer.update(grad_logits, state.opt_state, state.logits)
    return FAMOState(optax.apply_updates(state.logits, updates), opt_state)

  return Weighting('famo', Needs.LOSSES, init=init, update=update, after_step=after_step)
