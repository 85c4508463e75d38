"""From per-task losses to parameter gradients.

Given ``losses_fn: params -> ([T] losses, aux)``, one forward pass and one VJP:

    L, vjp = jax.vjp(losses_fn, params)
    alpha  = method.update(L, ...).weights          (stop_gradient)
    grads  = vjp(alpha) = sum_t alpha_t grad L_t    (= alpha^T J, J never formed)

so loss-only methods cost exactly one ordinary backward pass.
"""

import jax

from mtl_jax.weighting.base import Needs, Weighting, WeightingInputs


def weighted_gradients(losses_fn, params, method: Weighting, state, key, step):
  """Returns ``(losses [T], grads, WeightingResult, aux)`` for one batch."""
  if method.needs is not Needs.LOSSES or method.head_grads != 'weighted':
    raise ValueError(f'weighting {method.name!r} needs {method.needs.value} with '
                     f'{method.head_grads} head gradients; this engine computes loss values '
                     'and weighted head gradients only')
  losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
  inputs = WeightingInputs(losses=jax.lax.stop_gradient(losses), step=step)
  result = method.update(inputs, state, key)
  if result.direction is not None:
    raise ValueError(f'weighting {method.name!r} returned a direction; this engine applies '
                     'linear weights only')
  alpha = jax.lax.stop_gradient(result.weights).astype(losses.dtype)
  if alpha.shape != losses.shape:
    raise ValueError(f'weighting {method.name!r} returned weights of shape {alpha.shape} for '
                     f'{losses.shape[0]} tasks')
  (grads,) = vjp_fn(alpha)
  return losses, grads, result._replace(weights=alpha), aux
