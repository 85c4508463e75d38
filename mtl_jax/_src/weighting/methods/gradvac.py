"""GradVac: gradient vaccine (PCGrad with adaptive cosine targets)."""

import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.methods.pcgrad import pcgrad_orders

gradvac_orders = pcgrad_orders  # row i: the order in which task i visits the others ([T, T])


def _safe_div(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


@registry.WEIGHTINGS.register('gradvac')
def gradvac(beta: float = 0.5, eps: float = 1e-8) -> Weighting:
  """GradVac (gradient vaccine), whole-model form, in Gram form.

  Wang, Tsvetkov, Firat and Cao (2021), "Gradient Vaccine: Investigating and Improving
  Multi-task Optimization in Massively Multilingual Models", ICLR 2021.

  State: targets phi^_ij [T, T] (0 at init).  For each task i, g_i^PC starts at g_i; for
  every j != i in a random order (``gradvac_orders``, drawn from the update's key):
  phi_ij = g_i^PC . g_j / (||g_i^PC|| ||g_j|| + eps); if phi_ij < phi^_ij,

      g_i^PC += g_j ||g_i^PC|| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
                / (||g_j|| sqrt(1 - phi^_ij^2) + eps),

  which raises the cosine to phi^_ij; then always phi^_ij <- (1 - beta) phi^_ij + beta phi_ij
  (with the phi_ij before the correction).  d = sum_i g_i^PC.  Each g_i^PC = J^T c_i is
  tracked by its coefficients (||g_i^PC||^2 = c_i^T G c_i, g_i^PC . g_j = (G c_i)_j; the
  correction adds to c_ij), so alpha = sum_i c_i.  With phi^ = 0 (the first step) this is
  PCGrad.  Task-specific parameters get unweighted gradients.  Per-layer or per-matrix
  grouping (one phi^ per parameter group, as in the paper) is not part of this method.

  Args:
    beta: EMA rate of the targets, in [0, 1].  The default 0.5 is the libraries' (torchjd,
      LibMTL); the paper uses a slow EMA, beta = 1e-2.
    eps: added to the denominators (>= 0).

  Returns:
    The ``Weighting`` (random; state: {'phi_hat': [T, T]}; at least 2 tasks).
  """
  beta = checks.check_finite('gradvac', 'beta', beta, minimum=0.0)
  if beta > 1:
    raise ValueError(f'gradvac: beta must be <= 1.0, got {beta}')
  eps = checks.check_finite('gradvac', 'eps', eps, minimum=0.0)

  def init(num_tasks):
    return {'phi_hat': jnp.zeros((num_tasks, num_tasks), float)}  # float64 under x64

  def update(inputs, state, key):
    g = inputs.gram
    num = g.shape[0]
    orders = gradvac_orders(key, num)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0))

    def vaccinate(i, order, targets):
      def body(k, carry):
        c, targets = carry
        j = order[k]
        gc = g @ c
        norm_i = jnp.sqrt(jnp.maximum(c @ gc, 0))
        phi = _safe_div(gc[j], norm_i * norms[j] + eps)
        target = targets[j]
        root_phi = jnp.sqrt(jnp.maximum(1 - phi * phi, 0))
        root_target = jnp.sqrt(jnp.maximum(1 - target * target, 0))
        w = _safe_div(norm_i * (target * root_phi - phi * root_target),
                      norms[j] * root_target + eps)
        other = j != i
        c = c.at[j].add(jnp.where(other & (phi < target), w, 0))
        targets = targets.at[j].set(jnp.where(other, (1 - beta) * target + beta * phi, target))
        return c, targets

      c0 = jax.nn.one_hot(i, num, dtype=g.dtype)
      return jax.lax.fori_loop(0, num, body, (c0, targets))

    coefficients, phi_hat = jax.vmap(vaccinate)(
        jnp.arange(num), orders, state['phi_hat'].astype(g.dtype))
    return WeightingResult(coefficients.sum(0),
                           {'phi_hat': phi_hat.astype(state['phi_hat'].dtype)})

  return Weighting('gradvac', Needs.GRAM, init=init, update=update, head_grads='unweighted',
                   min_tasks=2, random=True)
