"""The weighting methods by name: ``get``, ``names``, ``hyperparameters``.

A thin layer over ``mtl_jax._src.registry.WEIGHTINGS``, where every method module in
``mtl_jax._src.weighting.methods`` registers its builder under its key.  A method's
hyperparameters and their defaults (its config block) are the builder's keyword parameters.
"""

from typing import Any

from mtl_jax._src import registry
from mtl_jax._src.weighting.base import Weighting


def names() -> list[str]:
  """The registry keys of every method, sorted."""
  return registry.WEIGHTINGS.names()


def hyperparameters(name: str) -> dict[str, Any]:
  """``{hyperparameter: default}`` of method ``name``.

  Raises:
    ValueError: ``"unknown weighting method 'x'; available: [...]"``.
  """
  return registry.WEIGHTINGS.parameters(name)


def get(name: str, **hparams) -> Weighting:
  """The method ``name`` built with hyperparameters ``hparams`` (the others take defaults).

  Raises:
    ValueError: for an unknown method (``"unknown weighting method 'x'; available: [...]"``),
      an unknown hyperparameter (``"weighting 'x': unknown hyperparameter(s) [...]; allowed:
      [...]"``) or a bad value (the message names the method and the hyperparameter).
  """
  allowed = set(hyperparameters(name))
  unknown = sorted(set(hparams) - allowed)
  if unknown:
    raise ValueError(f'weighting {name!r}: unknown hyperparameter(s) {unknown}; '
                     f'allowed: {sorted(allowed)}')
  return registry.WEIGHTINGS.builder(name)(**hparams)
