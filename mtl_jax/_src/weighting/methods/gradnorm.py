"""GradNorm: learned weights that balance the task gradient norms."""

import re

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult


def _natural_key(path):
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', jax.tree_util.keystr(path))]


def last_layer(jacobian) -> list:
  """The leaves of the last layer of a task-stacked pytree (its last parent by natural order)."""
  flat = sorted(jax.tree_util.tree_leaves_with_path(jacobian), key=lambda kv: _natural_key(kv[0]))
  parent = lambda path: path[:-1] if len(path) > 1 else path
  last = parent(flat[-1][0])
  return [leaf for path, leaf in flat if parent(path) == last]


def _gradient_norms(inputs, layer):
  """||g_t|| over every shared parameter ('all', from G) or the last layer only (summed in
  float32, or float64 for float64 leaves, as G)."""
  if layer == 'last':
    blocks = [leaf.reshape(leaf.shape[0], -1) for leaf in last_layer(inputs.jacobian)]
    dtype = jnp.result_type(jnp.float32, *(b.dtype for b in blocks))
    return jnp.sqrt(sum(jnp.sum(b.astype(dtype) ** 2, 1) for b in blocks))
  return jnp.sqrt(jnp.maximum(jnp.diag(inputs.gram), 0.0))


@registry.WEIGHTINGS.register('gradnorm')
def gradnorm(alpha: float = 1.5, lr: float = 0.025, layer: str = 'all') -> Weighting:
  """GradNorm: learn weights whose weighted gradient norms follow the relative training rates.

  Chen, Badrinarayanan, Lee and Rabinovich (2018), "GradNorm: Gradient Normalization for
  Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

  w = T softmax(s);  G_t = w_t ||g_t||,  r_t = (L_t / L_t(0)) / mean_i (L_i / L_i(0)),
  L_grad = sum_t |G_t - sg(mean(G) r_t^alpha)|;  s takes one Adam step on dL_grad/ds per
  update;  d = sum_t sg(w_t) g_t with w from s before the step.  L(0) are the first update's
  losses.  The softmax keeps sum_t w_t = T (the paper renormalises after each step).
  ``aux['grad_loss']`` is L_grad. The state has the default float dtype of ``init`` (float64
  under ``jax_enable_x64``, else float32), in which the update runs; w takes G's dtype.

  Args:
    alpha: asymmetry exponent (the strength of the pull towards the training rates).
    lr: Adam learning rate of s (> 0).
    layer: where ||g_t|| is measured: 'all' shared parameters (as LibMTL) or the 'last'
      shared layer only (the paper; needs the Jacobian itself).

  Returns:
    The ``Weighting`` (state: s, its Adam state and L(0); at least 2 tasks).
  """
  checks.choice('gradnorm', 'layer', layer, ('all', 'last'))
  if lr <= 0:
    raise ValueError(f'gradnorm: lr must be > 0, got {lr}')
  adam = optax.adam(lr)

  def init(num_tasks):
    s = jnp.zeros((num_tasks,), float)                 # float32, or float64 under x64
    return {'s': s, 'adam': adam.init(s), 'initial_losses': jnp.ones((num_tasks,), float),
            'started': jnp.zeros((), bool)}

  def update(inputs, state, key):
    del key
    dtype = state['s'].dtype
    norms = _gradient_norms(inputs, layer)
    out_dtype, norms = norms.dtype, norms.astype(dtype)
    losses = inputs.losses.astype(dtype)
    initial = jnp.where(state['started'], state['initial_losses'], losses)
    ratio = losses / jnp.maximum(initial, checks.EPS)
    relative = ratio / jnp.maximum(jnp.mean(ratio), checks.EPS)

    def grad_loss(s):
      w = s.shape[0] * jax.nn.softmax(s)
      gw = w * norms
      target = jax.lax.stop_gradient(jnp.mean(gw) * relative ** alpha)
      return jnp.sum(jnp.abs(gw - target))

    weights = losses.shape[0] * jax.nn.softmax(state['s'])
    updates, adam_state = adam.update(jax.grad(grad_loss)(state['s']), state['adam'])
    new = {'s': optax.apply_updates(state['s'], updates), 'adam': adam_state,
           'initial_losses': initial, 'started': jnp.ones((), bool)}
    return WeightingResult(weights.astype(out_dtype), new,
                           aux={'grad_loss': grad_loss(state['s'])})

  return Weighting('gradnorm', Needs.JACOBIAN if layer == 'last' else Needs.GRAM, init=init,
                   update=update, head_grads='unweighted', min_tasks=2)
