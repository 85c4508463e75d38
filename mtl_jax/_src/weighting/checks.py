"""Argument checks and small helpers shared by the weighting methods.

Every check raises ``ValueError`` whose message starts with the method's name and names the
offending hyperparameter, e.g. ``'uw: lr must be >= 0.0, got -0.1'``.
"""

import math
from typing import Optional, Sequence

import jax
import numpy as np

EPS = 1e-8  # floor for norms and denominators of the gradient-based methods


def check_finite(method: str, name: str, value, *, minimum: Optional[float] = None,
                 strict: bool = False) -> float:
  """Returns ``float(value)`` if it is a finite number in range.

  Args:
    method: the method's registry key (for the message).
    name: the hyperparameter's name (for the message).
    value: the value to check.
    minimum: optional lower bound.
    strict: whether the bound is strict (``value > minimum``) or not (``>=``).

  Raises:
    ValueError: if ``value`` is not a number, not finite or below ``minimum``.
  """
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{method}: {name} must be a number, got {value!r}') from None
  if not math.isfinite(value):
    raise ValueError(f'{method}: {name} must be finite, got {value}')
  if minimum is not None and (value <= minimum if strict else value < minimum):
    relation = '>' if strict else '>='
    raise ValueError(f'{method}: {name} must be {relation} {minimum}, got {value}')
  return value


def check_vector(method: str, name: str, value, *, scalar: bool = False, optional: bool = False,
                 low: Optional[float] = None, high: Optional[float] = None):
  """Returns ``value`` as a float64 NumPy vector (or a 0-d array where ``scalar``; None where
  ``optional`` and ``value`` is None) if it is non-empty, finite and within [low, high].

  Raises:
    ValueError: naming the method and the hyperparameter, otherwise.
  """
  if value is None and optional:
    return None
  kind = ('a number or a sequence of numbers' if scalar else 'a sequence of numbers') + (
      ' (or None)' if optional else '')
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f'{method}: {name} must be {kind}, got {value!r}') from None
  if array.ndim > 1 or (array.ndim == 0 and not scalar) or array.size == 0:
    raise ValueError(f'{method}: {name} must be {kind}, got shape {array.shape}')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{method}: {name} must be finite, got {array.tolist()}')
  if (low is not None and np.any(array < low)) or (high is not None and np.any(array > high)):
    bounds = f'[{low}, {high}]' if low is not None and high is not None else (
        f'>= {low}' if low is not None else f'<= {high}')
    raise ValueError(f'{method}: {name} must be {"in " if "[" in bounds else ""}{bounds}, '
                     f'got {array.tolist()}')
  return array


def check_bool(method: str, name: str, value) -> bool:
  """Returns ``bool(value)`` if it is a Python or NumPy bool, else raises ``ValueError``."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{method}: {name} must be a bool, got {value!r}')
  return bool(value)


def choice(method: str, name: str, value, allowed: Sequence) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``allowed``."""
  if value not in allowed:
    raise ValueError(f'{method}: {name} must be one of {allowed}, got {value!r}')


def match_sum(alpha: jax.Array, enabled: bool) -> jax.Array:
  """``T alpha`` if ``enabled`` (weights on the simplex then sum to T, like equal weights
  ``alpha_t = 1`` and the plain sum of losses), else ``alpha``."""
  return alpha * alpha.shape[0] if enabled else alpha
