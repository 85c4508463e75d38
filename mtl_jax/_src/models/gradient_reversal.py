"""Gradient reversal (Ganin & Lempitsky, ICML 2015) and the DANN schedule of its strength.

    R_kappa(x) = x  (forward),      dR_kappa/dx = -kappa I  (backward).

Placed between a feature extractor and a discriminator trained to minimise its loss L_D, the
discriminator's parameters descend L_D while everything before R ascends kappa * L_D.
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def reverse_gradient(x, kappa):
  """Identity on ``x`` (any pytree); the cotangent flowing back is multiplied by ``-kappa``.

  ``kappa`` is a (possibly traced) scalar; it receives a zero gradient."""
  return x


def _forward(x, kappa):
  return x, kappa


def _backward(kappa, g):
  flip = lambda c: (-kappa * c).astype(c.dtype)
  return jax.tree.map(flip, g), jnp.zeros_like(kappa)


reverse_gradient.defvjp(_forward, _backward)


def dann_schedule(progress, scale=1.0):
  """kappa_p = scale * (2 / (1 + exp(-10 p)) - 1) with p = progress clipped to [0, 1]:
  0 at the start of training, rising smoothly to ``scale``."""
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  return scale * (2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0)
