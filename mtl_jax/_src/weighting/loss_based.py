"""Loss-based weighting: alpha = dS/dL for a scalariser S of the loss values (stop-gradient).

* ``uw``: uncertainty weighting, S = sum_t (1/2 e^{-s_t} L_t + 1/2 s_t), log-variances s
  learned by their own Adam.
* ``dwa``: dynamic weight average, w = T softmax(r / tau) with r the ratio of the last two
  epoch-mean losses.
* ``rlw``: random loss weighting, alpha = softmax(xi), xi ~ N(0, I), drawn every step.
* ``gls``: geometric loss strategy, S = (prod_t L_t)^{1/T}.
* ``famo``: fast adaptive multitask optimisation; logits learned from the loss decrease of
  each step (``after_step``).

Each needs loss values only (one ordinary backward pass; FAMO adds one forward pass) and
weights the head gradients.  State is float32 whatever the loss dtype.  Conventions follow
the reference notes (weighting.md section 2); simplex methods (RLW, FAMO) are scaled by T
under ``match_sum`` so that they match the sum baseline.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def _check_finite(method: str, name: str, value, *, minimum=None, strict=False) -> float:
  """``float(value)``; ValueError naming ``method`` and ``name`` unless finite and in range."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{method}: {name} must be a number, got {value!r}') from None
  if not math.isfinite(value):
    raise ValueError(f'{method}: {name} must be finite, got {value}')
  if minimum is not None and (value <= minimum if strict else value < minimum):
    relation = '>' if strict else '>='
    raise ValueError(f'{method}: {name} must be {relation} {minimum}, got {value}')
  return value


def _check_bool(method: str, name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{method}: {name} must be a bool, got {value!r}')
  return bool(value)


# ----------------------------------------------------------------------------------------------
# UW


class UWState(NamedTuple):
  log_vars: jax.Array              # s = log sigma^2 [T]
  opt_state: optax.OptState        # Adam state of s


def uw(init: float = 0.0, lr: float = 0.025) -> Weighting:
  """Uncertainty weighting (Kendall et al. 2018), regression form for every task.

  S = sum_t (1/2 e^{-s_t} L_t + 1/2 s_t), so alpha_t = 1/2 e^{-s_t}.  The log-variances s
  (initialised to ``init``) take one Adam step with learning rate ``lr`` per update on the
  closed-form gradient dS/ds_t = 1/2 - 1/2 e^{-s_t} L_t at the current losses; alpha uses s
  before that step.  s has its own Adam, not the model optimiser (nash-mtl's separate-lr
  convention, ``method_params_lr`` = 0.025; the notes' default shares the model optimiser,
  which a pure weighting method cannot reach).  For constant losses s -> log L_t.
  """
  init = _check_finite('uw', 'init', init)
  lr = _check_finite('uw', 'lr', lr, minimum=0.0)
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


# ----------------------------------------------------------------------------------------------
# DWA


class DWAState(NamedTuple):
  epoch_loss_sum: jax.Array        # [T] sum of this epoch's losses so far
  epoch_updates: jax.Array         # int32, updates so far in this epoch
  epochs_done: jax.Array           # int32, completed epochs
  last_mean: jax.Array             # [T] epoch-mean loss of epoch e-1
  second_last_mean: jax.Array      # [T] epoch-mean loss of epoch e-2


def dwa(steps_per_epoch: int, temperature: float = 2.0) -> Weighting:
  """Dynamic weight average (Liu et al. 2019), epoch-based as in the paper.

  w_t = T softmax(r / tau)_t with r_t = Lbar_t(e-1) / Lbar_t(e-2), Lbar(e) the mean training
  loss of epoch e; w = 1 during the first two epochs.  An epoch is ``steps_per_epoch``
  updates, counted by the state itself (``inputs.step`` is not read, so the method also runs
  under ``combine`` and resumes with its state).  Losses are assumed positive; the
  denominator is floored at 1e-12.
  """
  if (not isinstance(steps_per_epoch, (int, np.integer)) or isinstance(steps_per_epoch, bool)
      or steps_per_epoch <= 0):
    raise ValueError(f'dwa: steps_per_epoch must be a positive int, got {steps_per_epoch!r}')
  steps_per_epoch = int(steps_per_epoch)
  temperature = _check_finite('dwa', 'temperature', temperature, minimum=0.0, strict=True)

  def init(num_tasks):
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    count = jnp.zeros((), jnp.int32)
    return DWAState(zeros, count, count, zeros, zeros)

  def update(inputs, state, key):
    del key
    losses = inputs.losses.astype(jnp.float32)
    num = losses.shape[0]
    ratio = state.last_mean / jnp.maximum(state.second_last_mean, 1e-12)
    weights = jnp.where(state.epochs_done >= 2, num * jax.nn.softmax(ratio / temperature),
                        jnp.ones_like(losses))
    loss_sum = state.epoch_loss_sum + losses
    updates = state.epoch_updates + 1
    epoch_end = updates >= steps_per_epoch
    new_state = DWAState(
        epoch_loss_sum=jnp.where(epoch_end, jnp.zeros_like(loss_sum), loss_sum),
        epoch_updates=jnp.where(epoch_end, 0, updates),
        epochs_done=state.epochs_done + epoch_end.astype(jnp.int32),
        last_mean=jnp.where(epoch_end, loss_sum / steps_per_epoch, state.last_mean),
        second_last_mean=jnp.where(epoch_end, state.last_mean, state.second_last_mean))
    return WeightingResult(weights, new_state)

  return Weighting('dwa', Needs.LOSSES, init=init, update=update)


# ----------------------------------------------------------------------------------------------
# RLW


def rlw(match_sum: bool = True) -> Weighting:
  """Random loss weighting (Lin et al. 2022): alpha = softmax(xi), xi ~ N(0, I_T).

  xi is drawn from ``key`` at every update; alpha is multiplied by T under ``match_sum``
  (E[alpha_t] = 1 like EW); ``match_sum=False`` gives sum alpha = 1 as in the public code.
  """
  match_sum = _check_bool('rlw', 'match_sum', match_sum)

  def update(inputs, state, key):
    num = inputs.losses.shape[0]
    weights = jax.nn.softmax(jax.random.normal(key, (num,), jnp.float32))
    return WeightingResult(weights * num if match_sum else weights, state)

  return Weighting('rlw', Needs.LOSSES, init=lambda num_tasks: (), update=update)


# ----------------------------------------------------------------------------------------------
# GLS


def gls(eps: float = 1e-8) -> Weighting:
  """Geometric loss strategy (Chennupati et al. 2019): S = (prod_t L_t)^{1/T}.

  alpha_t = S / (T L_t) = exp(mean_i log L_i - log L_t) / T, computed in log space; losses
  are floored at ``eps`` so that zero losses give finite weights.
  """
  eps = _check_finite('gls', 'eps', eps, minimum=0.0, strict=True)

  def update(inputs, state, key):
    del key
    log_losses = jnp.log(jnp.maximum(inputs.losses.astype(jnp.float32), eps))
    mean_log = jnp.mean(log_losses)
    weights = jnp.exp(mean_log - log_losses) / log_losses.shape[0]
    return WeightingResult(weights, state, aux={'objective': jnp.exp(mean_log)})

  return Weighting('gls', Needs.LOSSES, init=lambda num_tasks: (), update=update)


# ----------------------------------------------------------------------------------------------
# FAMO


class FAMOState(NamedTuple):
  logits: jax.Array                # xi [T]
  opt_state: optax.OptState        # Adam (with coupled decay) state of xi


def famo(gamma: float = 1e-3, beta: float = 0.025, eps: float = 1e-8, min_losses=0.0,
         match_sum: bool = True) -> Weighting:
  """Fast adaptive multitask optimisation (Liu et al. 2023).

  Weights: z = softmax(xi), D_t = L_t - L^min_t + eps, c = sum_t z_t / D_t (a constant), and
  alpha_t = z_t / (c D_t), sum alpha = 1 (x T under ``match_sum``; ``match_sum=False``
  reproduces the public code).  Losses below L^min are clamped to L^min.

  Logits (``after_step``, with the losses recomputed on the same batch after the parameter
  update): delta_t = log D_t(before) - log D_t(after), gradient J_softmax(xi)^T delta, i.e.
  z_j (delta_j - z . delta), then one Adam step with learning rate ``beta`` and coupled weight
  decay ``gamma`` (gamma xi added to the gradient before the moments:
  ``optax.chain(add_decayed_weights(gamma), adam(beta))``), which is exactly the reference's
  ``torch.optim.Adam(weight_decay=gamma)``.  ``min_losses``: a scalar or one value per task.
  """
  gamma = _check_finite('famo', 'gamma', gamma, minimum=0.0)
  beta = _check_finite('famo', 'beta', beta, minimum=0.0)
  eps = _check_finite('famo', 'eps', eps, minimum=0.0, strict=True)
  match_sum = _check_bool('famo', 'match_sum', match_sum)
  try:
    min_losses = np.asarray(min_losses, dtype=np.float32)
  except (TypeError, ValueError):
    raise ValueError(f'famo: min_losses must be a number or a sequence of numbers, '
                     f'got {min_losses!r}') from None
  if min_losses.ndim > 1 or min_losses.size == 0 or not np.all(np.isfinite(min_losses)):
    raise ValueError(f'famo: min_losses must be a finite scalar or vector, got '
                     f'{min_losses.tolist()}')
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
    return WeightingResult(weights * weights.shape[0] if match_sum else weights, state)

  def after_step(state, losses_before, losses_after):
    decrease = log_gap(losses_before) - log_gap(losses_after)
    z = jax.nn.softmax(state.logits)
    grad_logits = z * (decrease - jnp.dot(z, decrease))
    updates, opt_state = optimizer.update(grad_logits, state.opt_state, state.logits)
    return FAMOState(optax.apply_updates(state.logits, updates), opt_state)

  return Weighting('famo', Needs.LOSSES, init=init, update=update, after_step=after_step)
