"""Per-task gradients in one vectorised pass, their Gram matrix and combinations.

For losses L: theta -> R^T, one forward pass and a VJP give every row of the Jacobian:

    L, vjp = jax.vjp(L, theta);   J = vmap(vjp)(I_T)        (rows g_t = grad L_t)

``chunk_size`` maps over chunks of the identity instead (``lax.map``) to bound memory.
J is a *task-stacked* pytree: every leaf has a leading axis of size T.
"""

import itertools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint


def num_tasks(jacobian) -> int:
  """The size of the leading (task) axis shared by every leaf."""
  sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree_util.tree_leaves(jacobian)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError('a task-stacked Jacobian needs a common leading task axis on every leaf, '
                     f'got leading sizes {sorted(map(str, sizes))}')
  return sizes.pop()


def jacobian(losses_fn: Callable, params, *, chunk_size: Optional[int] = None,
             has_aux: bool = False):
  """``(losses [T], J)`` (plus ``aux`` if ``has_aux``) with J task-stacked like ``params``."""
  if has_aux:
    losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
  else:
    losses, vjp_fn = jax.vjp(losses_fn, params)
  jac = rows(vjp_fn, losses, chunk_size=chunk_size, argnum=0)
  return (losses, jac, aux) if has_aux else (losses, jac)


def rows(vjp_fn: Callable, losses: jax.Array, *, chunk_size: Optional[int] = None,
         argnum: int = 0):
  """The Jacobian rows of ``vjp_fn``'s ``argnum``-th input: its pullbacks of e_1..e_T.

  ``losses`` is the [T] output (rows e_1..e_T), or a [R, T] matrix of cotangent rows."""
  if losses.ndim not in (1, 2):
    raise ValueError(f'losses must be a [T] vector, got shape {losses.shape}')
  eye = jnp.eye(losses.shape[0], dtype=losses.dtype) if losses.ndim == 1 else losses
  pull = lambda cotangent: vjp_fn(cotangent)[argnum]
  if chunk_size is None or chunk_size >= eye.shape[0]:
    return jax.vmap(pull)(eye)
  return jax.lax.map(pull, eye, batch_size=chunk_size)


def gram(jacobian, num: Optional[int] = None) -> jax.Array:
  """G = J J^T = sum over leaves of J_l J_l^T: [T, T].

  G's dtype follows the Jacobian: float64 if a leaf is float64 (under ``jax_enable_x64``),
  else float32 (bfloat16/float16 leaves are upcast and accumulated in float32). A Jacobian
  with no leaves (a model without shared parameters) needs ``num`` = T; G = 0 (float32)."""
  leaves = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jacobian)]
  if not leaves and num is not None:
    return jnp.zeros((num, num), jnp.float32)
  t = num_tasks(jacobian)
  dtype = jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))
  return sum(_block_gram(leaf.reshape(t, -1), dtype) for leaf in leaves)


def _block_gram(b: jax.Array, dtype) -> jax.Array:
  """b b^T in ``dtype``; a bfloat16/float16 block is multiplied as it is, accumulating in
  float32 (``preferred_element_type``), so no float32 copy of it is made."""
  if dtype == jnp.float32 and jnp.finfo(b.dtype).bits < 32:
    return jnp.matmul(b, b.T, preferred_element_type=jnp.float32)
  b = b.astype(dtype)        # full precision: GPUs default to TF32 for float32 products
  return jnp.matmul(b, b.T, precision=jax.lax.Precision.HIGHEST)


def weighted_sum(jacobian, weights: jax.Array):
  """d = J^T alpha = sum_t alpha_t g_t, a pytree shaped like one task's gradient."""
  def one(leaf):
    wide = jnp.result_type(jnp.float32, leaf.dtype)   # bfloat16 J: summed in float32
    return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1,
                         preferred_element_type=wide).astype(leaf.dtype)
  return jax.tree.map(one, jacobian)


def task_sum(x: jax.Array) -> jax.Array:
  """sum_t x_t over the leading (task) axis, as a product with a vector of ones (at the
  highest precision): XLA's CPU backend runs ``x.sum(0)`` of a fused expression such as
  ``abs(x)`` several times slower (7.7 ms against 1.1 ms for [8, 266752] float32)."""
  return jnp.tensordot(jnp.ones(x.shape[:1], x.dtype), x, axes=1,
                       precision=jax.lax.Precision.HIGHEST)


def row_major(jacobian):
  """``jacobian`` with every leaf laid out row-major in memory (task axis outermost).

  The rows of a dense layer's weight come out of the vmapped pullback as [T, out, in] and are
  transposed to the kernel's [in, out]; XLA would otherwise fuse that transpose into every
  consumer, so a method that reads J several times (a trimmed mean, GradDrop, ExcessMTL) reads
  it with strides each time (on the CPU, 2-3 x slower than one copy and contiguous reads)."""
  fix = lambda leaf: with_layout_constraint(
      leaf, Layout(major_to_minor=tuple(range(jnp.ndim(leaf)))))
  return jax.tree.map(fix, jacobian)


def constrain_rows(jacobian, sharding):
  """``jacobian`` with the leading (task) axis of every leaf split as ``sharding`` says (a
  ``NamedSharding`` such as ``P('model')``: each device then pulls back its share of the
  tasks, and the Gram matrix and the combined direction are reduced across devices by XLA);
  leaves whose task axis the sharding does not divide, and any ``jacobian`` when ``sharding``
  is None, are left unconstrained."""
  if sharding is None:
    return jacobian
  names = sharding.spec[0] if len(sharding.spec) else None
  names = (names,) if isinstance(names, str) else tuple(names or ())
  size = math.prod(sharding.mesh.shape[n] for n in names)

  def fix(leaf):
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] % size:
      return leaf
    return jax.lax.with_sharding_constraint(leaf, sharding)

  return jax.tree.map(fix, jacobian)


def flatten(jacobian) -> jax.Array:
  """The task-stacked ``jacobian`` as one ``[T, P]`` matrix (leaves in pytree order, each
  row-major), for methods that keep parameter-sized vectors (``unflatten`` inverts it)."""
  leaves = jax.tree_util.tree_leaves(jacobian)
  t = num_tasks(jacobian)
  return jnp.concatenate([jnp.reshape(leaf, (t, -1)) for leaf in leaves], axis=1)


def unflatten(vector: jax.Array, jacobian):
  """A ``[P]`` vector as a pytree shaped like one task row of ``jacobian`` (its dtypes)."""
  leaves, treedef = jax.tree.flatten(jacobian)
  sizes = [math.prod(leaf.shape[1:]) for leaf in leaves]
  parts = jnp.split(vector, list(itertools.accumulate(sizes))[:-1]) if leaves else []
  return jax.tree.unflatten(treedef, [p.reshape(leaf.shape[1:]).astype(leaf.dtype)
                                      for p, leaf in zip(parts, leaves)])


def size(shared) -> int:
  """P: the total number of entries of the pytree ``shared`` (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(shared))
