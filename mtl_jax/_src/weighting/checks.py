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
