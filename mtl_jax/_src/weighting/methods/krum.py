"""Krum and Multi-Krum: the gradients closest to their neighbours."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def krum_weights(g, n_byzantine: int, n_selected: int):
  """1 / n_selected on the n_selected rows with the smallest Krum scores, 0 elsewhere.

  Distances from the Gramian: ||g_i - g_j|| = sqrt(max(G_ii + G_jj - 2 G_ij, 0)).  Score of
  row i: the sum of its distances to its T - n_byzantine - 2 nearest other rows.  Ties go to
  the lower task index (a stable sort)."""
  num = g.shape[0]
  sq = jnp.diag(g)
  dist = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * g, 0))
  dist = jnp.where(jnp.eye(num, dtype=bool), jnp.inf, dist)   # not its own neighbour
  nearest = jnp.sort(dist, axis=1)[:, :num - n_byzantine - 2]
  scores = jnp.sum(nearest, axis=1)
  chosen = jnp.argsort(scores, stable=True)[:n_selected]
  return jnp.sum(jax.nn.one_hot(chosen, num, dtype=g.dtype), axis=0) / n_selected


@registry.WEIGHTINGS.register('krum')
def krum(n_byzantine: int = 0, n_selected: int = 1) -> Weighting:
  """Krum (n_selected = 1) and Multi-Krum (the mean of the n_selected best rows).

  Blanchard, El Mhamdi, Guerraoui and Stainer (2017), "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017 (as torchjd's ``Krum``).

  Each gradient is scored by the sum of its distances to its T - f - 2 nearest other
  gradients (f = ``n_byzantine``); d is the mean of the n_selected lowest-scored gradients
  (``krum_weights``).  Robust to f arbitrary rows when T >= f + 3.  Task-specific
  parameters get unweighted gradients.

  Args:
    n_byzantine: f, how many rows may be adversarial (>= 0; torchjd requires it, 0 here
      by default); needs T >= f + 3.
    n_selected: how many rows to average (>= 1, <= T).

  Returns:
    The ``Weighting`` (stateless, at least 3 tasks).
  """
  for name, value, low in (('n_byzantine', n_byzantine, 0), ('n_selected', n_selected, 1)):
    if type(value) is not int or value < low:
      raise ValueError(f'krum: {name} must be an integer >= {low}, got {value!r}')

  def check(num):
    if num < n_byzantine + 3:
      raise ValueError(f'krum: needs at least n_byzantine + 3 = {n_byzantine + 3} tasks, '
                       f'got {num}')
    if num < n_selected:
      raise ValueError(f'krum: n_selected = {n_selected} exceeds the {num} tasks')

  def init(num_tasks):
    check(num_tasks)
    return ()

  def update(inputs, state, key):
    del key
    g = inputs.gram
    check(g.shape[0])
    return WeightingResult(krum_weights(g, n_byzantine, n_selected), state)

  return Weighting('krum', Needs.GRAM, init=init, update=update, head_grads='unweighted',
                   min_tasks=3)
