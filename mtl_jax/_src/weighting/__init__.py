"""Task weighting and gradient aggregation methods.

``get(name, **hparams)`` returns a ``Weighting`` (pure ``init``/``update``); ``names()``
lists the registry; ``combine(method, jacobian, losses, state=..., key=...)`` applies a
method to any stacked per-task gradient.  See ``base.py`` for the interface.
"""

import inspect
from typing import Callable

from mtl_jax._src.weighting import optax_adapter, solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingInputs, WeightingResult
from mtl_jax._src.weighting.combine import combine
from mtl_jax._src.weighting.gradient_based import (aligned_mtl, cagrad, dualproj, gradnorm, imtl_g,
                                              mgda, nash_mtl, pcgrad, upgrad)
from mtl_jax._src.weighting.jacobian import gram, jacobian, weighted_sum
from mtl_jax._src.weighting.linear import ew, static
from mtl_jax._src.weighting.loss_based import dwa, famo, gls, rlw, uw
from mtl_jax._src.weighting.optax_adapter import as_optax

_REGISTRY: dict[str, Callable[..., Weighting]] = {
    # fixed and loss-based weights: one backward pass
    'ew': ew, 'static': static, 'uw': uw, 'dwa': dwa, 'rlw': rlw, 'gls': gls, 'famo': famo,
    # gradient-based: per-task gradients
    'mgda': mgda, 'pcgrad': pcgrad, 'cagrad': cagrad, 'nash_mtl': nash_mtl, 'imtl_g': imtl_g,
    'upgrad': upgrad, 'dualproj': dualproj, 'aligned_mtl': aligned_mtl, 'gradnorm': gradnorm,
}


def names() -> list[str]:
  """Registry keys of every method."""
  return sorted(_REGISTRY)


def hyperparameters(name: str) -> dict:
  """``{hyperparameter: default}`` of method ``name`` (no default: ``inspect.Parameter.empty``)."""
  _check_name(name)
  return {k: p.default for k, p in inspect.signature(_REGISTRY[name]).parameters.items()}


def _check_name(name):
  if name not in _REGISTRY:
    raise ValueError(f'unknown weighting method {name!r}; available: {names()}')


def get(name: str, **hparams) -> Weighting:
  """The method ``name`` with hyperparameters ``hparams``; errors name what is wrong."""
  _check_name(name)
  allowed = set(hyperparameters(name))
  unknown = sorted(set(hparams) - allowed)
  if unknown:
    raise ValueError(f'weighting {name!r}: unknown hyperparameter(s) {unknown}; '
                     f'allowed: {sorted(allowed)}')
  return _REGISTRY[name](**hparams)


__all__ = ['Needs', 'Weighting', 'WeightingInputs', 'WeightingResult', 'aligned_mtl', 'as_optax',
           'cagrad', 'combine', 'dualproj', 'dwa', 'ew', 'famo', 'get', 'gls', 'gradnorm', 'gram',
           'hyperparameters', 'imtl_g', 'jacobian', 'mgda', 'names', 'nash_mtl',
           'optax_adapter', 'pcgrad', 'rlw', 'static', 'upgrad', 'uw', 'weighted_sum']
