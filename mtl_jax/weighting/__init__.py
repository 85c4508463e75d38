"""Task weighting and gradient aggregation methods.

``get(name, **hparams)`` returns a ``Weighting`` (pure ``init``/``update``); ``names()``
lists the registry.  See ``base.py`` for the interface.
"""

import inspect
from typing import Callable

from mtl_jax.weighting.base import Needs, Weighting, WeightingInputs, WeightingResult
from mtl_jax.weighting.linear import ew, static

_REGISTRY: dict[str, Callable[..., Weighting]] = {
    'ew': ew,
    'static': static,
}


def names() -> list[str]:
  """Registry keys of every method."""
  return sorted(_REGISTRY)


def get(name: str, **hparams) -> Weighting:
  """The method ``name`` with hyperparameters ``hparams``; errors name what is wrong."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown weighting method {name!r}; available: {names()}')
  factory = _REGISTRY[name]
  allowed = set(inspect.signature(factory).parameters)
  unknown = sorted(set(hparams) - allowed)
  if unknown:
    raise ValueError(f'weighting {name!r}: unknown hyperparameter(s) {unknown}; '
                     f'allowed: {sorted(allowed)}')
  return factory(**hparams)


__all__ = ['Needs', 'Weighting', 'WeightingInputs', 'WeightingResult', 'ew', 'get', 'names',
           'static']
