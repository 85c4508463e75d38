"""DWA: dynamic weight average of the epoch-mean loss ratios."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


class DWAState(NamedTuple):
  epoch_loss_sum: jax.Array        # [T] sum of this epoch's losses so far
  epoch_updates: jax.Array         # int32, updates so far in this epoch
  epochs_done: jax.Array           # int32, completed epochs
  last_mean: jax.Array             # [T] epoch-mean loss of epoch e-1
  second_last_mean: jax.Array      # [T] epoch-mean loss of epoch e-2


def _check_steps_per_epoch(steps_per_epoch) -> int:
  if (not isinstance(steps_per_epoch, (int, np.integer)) or isinstance(steps_per_epoch, bool)
      or steps_per_epoch < 0):
    raise ValueError(f'dwa: steps_per_epoch must be a positive int, got {steps_per_epoch!r}')
  if steps_per_epoch == 0:
    raise ValueError('dwa: steps_per_epoch=0 means "one epoch of the training data", which only '
                     'the trainer knows (it substitutes the value); when building dwa directly, '
                     'pass the number of updates per epoch (a positive int)')
  return int(steps_per_epoch)


@registry.WEIGHTINGS.register('dwa')
def dwa(steps_per_epoch: int = 0, temperature: float = 2.0) -> Weighting:
  """Dynamic weight average, epoch-based as in the paper.

  Liu, Johns and Davison (2019), "End-to-End Multi-Task Learning with Attention", CVPR 2019.

  alpha_t = T softmax(r / tau)_t with r_t = Lbar_t(e-1) / Lbar_t(e-2), Lbar_t(e) the mean
  training loss of task t over epoch e; alpha = 1 during the first two epochs.  An epoch is
  ``steps_per_epoch`` updates, counted by the state itself (``inputs.step`` is not read, so
  the method also runs under ``combine`` and resumes with its state).  Losses are assumed
  positive; the denominator is floored at 1e-12.

  Args:
    steps_per_epoch: updates per epoch (a positive int).  The default 0 stands for "one epoch
      of the training data", which the trainer substitutes; called directly with 0, the
      builder raises ``ValueError``.
    temperature: softmax temperature tau (> 0); larger is closer to equal weights.

  Returns:
    The ``Weighting``; its state is ``DWAState``.
  """
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  temperature = checks.check_finite('dwa', 'temperature', temperature, minimum=0.0,
                                    strict=True)

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
