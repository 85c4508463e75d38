"""GO4Align: group optimisation for multi-task alignment."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.methods.stch import check_count


class GO4AlignState(NamedTuple):
  log_probs: jax.Array             # [T] log p, the risk-guided probabilities (log-normalised)


def group_means(values: jax.Array, num_groups: int) -> jax.Array:
  """Each entry of ``values`` [n] replaced by the mean of its group in an optimal k-means
  partition into k = min(num_groups, n) groups (least within-group sum of squares).

  In one dimension the groups of an optimal partition are runs of the sorted values, so the
  optimum is exact by dynamic programming over the sorted values: D_1(j) = c(0, j),
  D_m(j) = min_i D_{m-1}(i) + c(i, j), c(i, j) the sum of squared deviations of sorted values
  i..j-1 from their mean; k - 1 steps of a scan, then a backward scan for the boundaries.
  Ties go to the earliest boundary.
  """
  n = values.shape[0]
  k = min(num_groups, n)
  if k == n:
    return values
  if k == 1:
    return jnp.full_like(values, jnp.mean(values))
  order = jnp.argsort(values)
  x = values[order]
  pos = jnp.arange(n)
  bounds = jnp.arange(n + 1)
  inside = ((pos[None, None, :] >= bounds[:, None, None])
            & (pos[None, None, :] < bounds[None, :, None]))            # [i, j, point]
  count = jnp.maximum(inside.sum(-1), 1)
  seg_mean = jnp.where(inside, x, 0.0).sum(-1) / count
  sse = jnp.where(inside, (x - seg_mean[..., None]) ** 2, 0.0).sum(-1)
  cost = jnp.where(bounds[:, None] < bounds[None, :], sse, jnp.inf)     # c(i, j), j > i

  def extend(best, _):
    total = best[:, None] + cost
    return jnp.min(total, axis=0), jnp.argmin(total, axis=0)

  _, argmins = jax.lax.scan(extend, cost[0], None, length=k - 1)       # [k - 1, n + 1]

  def backtrack(end, argmin):
    start = argmin[end]
    return start, start

  _, starts = jax.lax.scan(backtrack, jnp.asarray(n, argmins.dtype), argmins, reverse=True)
  labels = jnp.sum(pos[:, None] >= starts[None, :], axis=1)             # group of sorted point
  member = labels[:, None] == jnp.arange(k)[None, :]
  means = jnp.where(member, x[:, None], 0.0).sum(0) / jnp.maximum(member.sum(0), 1)
  return jnp.zeros_like(values).at[order].set(means[labels])


@registry.WEIGHTINGS.register('go4align')
def go4align(num_groups: int = 2, robust_step_size: float = 1e-4,
             eps: float = 1e-8) -> Weighting:
  """GO4Align: adaptive group risk minimisation with risk-guided group indicators.

  Shen, Wang, Xiao, van Noord and Worring (2024), "GO4Align: Group Optimization for
  Multi-Task Alignment", NeurIPS 2024.

  Each update, at the current losses L (constants):

  1. Risk-guided probabilities (the "risk information from previous iterations"):
     p <- p exp(-eta L) / sum_t p_t exp(-eta L_t), p = 1/T at the start, so that
     p_t is proportional to exp(-eta sum of task t's past losses); eta = ``robust_step_size``.
  2. Group indicators gamma_t = (sum_m L_m / L_t) p_t: the scale-balance ratio times p.
  3. Dynamical group assignment: the tasks are clustered into K = ``num_groups`` groups by
     k-means on gamma (one dimension); the group weight is its centre, the mean gamma of its
     tasks, and alpha_t is the weight of task t's group.

  S = sum_t alpha_t L_t, so the heads get weighted gradients.  Equal losses give alpha = 1.

  This follows the authors' code (``GO4ALIGN`` in their ``methods/cluster_methods.py``),
  which is what the steps above describe; the paper text itself was not available here.
  Where this implementation departs from or adds to that code:

  * k-means: the authors call ``kmeans_pytorch`` (random initial centres, Lloyd iterations
    to a tolerance), which can end in a local optimum and is not reproducible without its
    seed; here the clustering is the exact optimum (1-D k-means by dynamic programming,
    ties to the earliest boundary), deterministic and jittable.  K > T is clamped to T (each
    task its own group: alpha = gamma); K = 1 gives every task mean(gamma).
  * The losses in the scale-balance ratio are floored at ``eps`` (the authors' divide by L
    directly): zero losses give finite weights (all zero: gamma_t = p_t T).
  * p is kept as log p, renormalised by log-softmax every update, so it does not underflow
    however long training runs.
  * Default K = 2: the authors' NYUv2 script defaults to ``num_groups=1``, under which every
    task gets the same weight (the sum of losses times a global factor); the number of
    groups is a per-benchmark choice in the paper, not known here.  ``robust_step_size``
    1e-4 is the authors' default.

  Losses are assumed >= 0.

  Args:
    num_groups: the number of task groups K (an int >= 1; clamped to T).
    robust_step_size: eta, the step of the risk-guided probabilities (>= 0; 0 keeps
      p = 1/T).
    eps: floor of the losses in the scale-balance ratio (> 0).

  Returns:
    The ``Weighting``; its state is ``GO4AlignState`` (float32).
  """
  num_groups = check_count('go4align', 'num_groups', num_groups, minimum=1)
  robust_step_size = checks.check_finite('go4align', 'robust_step_size', robust_step_size,
                                         minimum=0.0)
  eps = checks.check_finite('go4align', 'eps', eps, minimum=0.0, strict=True)

  def init(num_tasks):
    return GO4AlignState(jnp.full((num_tasks,), -jnp.log(num_tasks), jnp.float32))

  def update(inputs, state, key):
    del key
    losses = inputs.losses.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(state.log_probs - robust_step_size * losses)
    floored = jnp.maximum(losses, eps)
    indicators = jnp.sum(floored) / floored * jnp.exp(log_probs)
    return WeightingResult(group_means(indicators, num_groups), GO4AlignState(log_probs))

  return Weighting('go4align', Needs.LOSSES, init=init, update=update)
