"""Mixed precision: the model computes in a low-precision dtype, everything else in float32.

Under ``compute_dtype='bfloat16'`` (Micikevicius et al. 2018, "Mixed Precision Training",
with bfloat16's float32 exponent range, so no loss scaling):

* parameters, optimizer state and the weighting method's state stay float32 (the "master
  weights"); each forward pass casts the floating parameters and inputs to bfloat16, so every
  layer of any flax module whose ``dtype`` is left at None (all of the zoo: flax infers the
  computation dtype from its inputs and parameters) multiplies in bfloat16 (the MXU / tensor
  core rate);
* the model's outputs are cast back to float32 before the per-task losses, so the losses,
  the Gram matrix G = J J^T, every solver and the update run in float32;
* the gradient with respect to the float32 parameters is float32 (the cast's transpose), so
  per-task gradients (the Jacobian J of mode 'param') and the cotangents of mode 'rep' are
  float32, unless ``grad_dtype='bfloat16'``: then they are taken with respect to the
  bfloat16 copy and stored in bfloat16 (half the memory of J, T x P), while G and the solver
  still accumulate in float32 (``weighting.jacobian.gram``, the Gramian rules) and the
  combined direction is cast back to float32 before the optimizer.

float16 is refused: its 5-bit exponent needs loss scaling, which bfloat16 does not.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

PyTree = Any
DTYPES = ('float32', 'bfloat16')


def resolve(dtype, field: str = 'compute_dtype') -> Optional[jnp.dtype]:
  """``None`` for float32 (or None: nothing to cast), ``jnp.bfloat16`` for bfloat16; raises
  ``ValueError`` naming ``field`` for anything else."""
  if dtype is None:
    return None
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in DTYPES:
    hint = (' (float16 needs loss scaling; bfloat16 has float32\'s range and does not)'
            if name == 'float16' else '')
    raise ValueError(f'{field}: must be one of {DTYPES}, got {dtype!r}{hint}')
  return None if name == 'float32' else jnp.dtype(name)


def _floating(x) -> bool:
  return hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating)


def cast(tree: PyTree, dtype: Optional[jnp.dtype]) -> PyTree:
  """Every floating-point leaf of ``tree`` as ``dtype`` (integer, bool leaves and None
  unchanged); the identity when ``dtype`` is None."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if _floating(x) else x, tree)


def to_float32(tree: PyTree) -> PyTree:
  """Every floating-point leaf narrower than float32 as float32 (float64 stays)."""
  def up(x):
    if _floating(x) and jnp.finfo(x.dtype).bits < 32:
      return x.astype(jnp.float32)
    return x
  return jax.tree.map(up, tree)


def like(tree: PyTree, reference: PyTree) -> PyTree:
  """``tree`` with each floating leaf cast to the dtype of the matching ``reference`` leaf
  (the state's own dtypes after a step computed in another precision)."""
  return jax.tree.map(lambda x, r: x.astype(r.dtype) if _floating(x) and _floating(r) else x,
                      tree, reference)


def in_compute_dtype(fn: Callable, dtype: Optional[jnp.dtype]) -> Callable:
  """``fn`` run on its positional arguments' floating leaves cast to ``dtype``, its outputs'
  floating leaves returned in float32 (keyword arguments pass unchanged: labels that need
  full precision go there).  The identity when ``dtype`` is None."""
  if dtype is None:
    return fn

  def wrapped(*args, **kwargs):
    return to_float32(fn(*cast(args, dtype), **kwargs))

  return wrapped
