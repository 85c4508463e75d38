"""The Gramian mode: G = J J^T from each layer's inputs and per-task output cotangents.

A Gram method needs only G[s, t] = <g_s, g_t> of the per-task gradients of the shared
parameters, and then d = J^T alpha (one more VJP).  Forming J costs T weight gradients and
T^2 P for G.  For a parameter W that enters the model once, through y = x W (a dense layer;
any ``dot_general`` with W as one operand), task t's gradient is x^T Delta_t with
Delta_t = dL_t/dy, so

    G_W[s, t] = <x^T Delta_s, x^T Delta_t> = <Delta_s, (x x^T) Delta_t>

needs no weight gradient: B^2 in for K = x x^T, T B^2 out for K Delta_t and T^2 B out for the
inner products, instead of T B in out + T^2 in out (TorchJD's ``autogram`` engine rests on
the same identity).  The first layer then needs no backward pass at all, the others only the
propagation of the T cotangents.

How the model's code stays unchanged: ``gram_vjp`` traces the loss function to a jaxpr and
re-evaluates it with a *tap* on each rule-covered layer: a zero ``eps`` added to its output
y, whose cotangent is Delta, and a record of its other operand x.  The tapped parameters
are found in the jaxpr, through nested ``jit`` calls: a shared parameter used exactly once,
possibly through inner-product-preserving ops (``convert_element_type``, ``reshape``,
``transpose``, ``squeeze``, ``expand_dims``, ``copy``), as an operand of

* ``dot_general`` (dense layers, ``einsum``, attention projections, experts and columns
  stacked with ``vmap``, which become dot batch dimensions): the identity above per batch
  index, K = x_b x_b^T over x's free (sample) dimensions;
* ``conv_general_dilated`` (the kernel; no feature or batch groups): the same identity over
  the patches (``lax.conv_general_dilated_patches``), K = P P^T over batch x positions;
* ``gather`` of rows of a table (``nn.Embed``, ``jnp.take(axis=0)``): K[i, j] = [id_i = id_j]
  over the looked-up ids (ids out of range, dropped by the gather, count nowhere).

For each tapped layer the rule takes, at trace time from the shapes, the cheaper of the
identity and the explicit per-task gradients (the layer's own VJP under ``vmap``, dropped
after its Gram block: never the whole J).  Every other shared parameter (biases, layer and
batch norm scales and offsets, a weight used twice, a parameter inside ``scan``,
``custom_vjp`` or ``remat``) gets its exact per-task gradient from the same vmapped VJP;
vectors of that kind cost T B C, as much as any identity would.  So G is always exact up to
floating-point rounding, whatever the model.

One forward pass serves both: ``vjp`` (ordinary cotangents, e.g. alpha) and ``gram`` (the
Gram matrix of the pullbacks of k cotangent rows).  Under ``jit``, the weight gradients of
tapped parameters that ``gram`` does not use are dead code.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mtl_jax._src.weighting import jacobian

PyTree = Any
_CALLS = ('pjit', 'jit', 'closed_call', 'core_call')
_PASS = ('convert_element_type', 'reshape', 'transpose', 'squeeze', 'expand_dims', 'copy',
         'copy_p')
_RULES = ('dot_general', 'conv_general_dilated', 'gather')
POLICIES = ('cheapest', 'identity', 'explicit')


class Tap(NamedTuple):
  """A tapped layer: shared leaf ``leaf`` enters ``eqn`` as operand ``operand``; ``direct``:
  with the leaf's own layout (only ``convert_element_type``/``copy`` on the way)."""
  leaf: int
  eqn: Any
  operand: int
  direct: bool = True


def _sub_jaxpr(eqn):
  """The ClosedJaxpr of a call equation (``jit`` and friends), else None."""
  if eqn.primitive.name not in _CALLS:
    return None
  sub = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
  return sub if hasattr(sub, 'consts') else None


def _var(v):
  """``v`` if it is a variable (not a literal), else None."""
  return v if hasattr(v, 'aval') and not hasattr(v, 'val') else None


_SAME_LAYOUT = ('convert_element_type', 'copy', 'copy_p')


def _analyse(jaxpr, origin: dict, uses: dict, path=(), moved=frozenset()) -> None:
  """Fills ``uses[leaf]`` with ('tap', path, eqn, operand, direct) or ('other',) for each
  use of a shared leaf; ``origin`` maps variables to the leaf they carry unchanged, ``moved``
  holds those of them whose layout differs from the leaf's (reshaped, transposed)."""
  moved = set(moved)
  for k, eqn in enumerate(jaxpr.eqns):
    found = [(i, origin[_var(v)]) for i, v in enumerate(eqn.invars)
             if _var(v) is not None and _var(v) in origin]
    if not found:
      continue
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      pairs = [(iv, _var(v)) for iv, v in zip(sub.jaxpr.invars, eqn.invars)
               if _var(v) is not None and _var(v) in origin]
      inner = {iv: origin[v] for iv, v in pairs}
      _analyse(sub.jaxpr, inner, uses, path + (k,), {iv for iv, v in pairs if v in moved})
      for ov in sub.jaxpr.outvars:     # a parameter returned by the call
        if _var(ov) is not None and _var(ov) in inner:
          uses.setdefault(inner[_var(ov)], []).append(('other',))
      continue
    name = eqn.primitive.name
    if name in _PASS and len(found) == 1 and len(eqn.outvars) == 1:
      origin[eqn.outvars[0]] = found[0][1]
      if name not in _SAME_LAYOUT or _var(eqn.invars[found[0][0]]) in moved:
        moved.add(eqn.outvars[0])
    elif name in _RULES and len(found) == 1 and (name != 'gather' or found[0][0] == 0):
      direct = _var(eqn.invars[found[0][0]]) not in moved
      uses.setdefault(found[0][1], []).append(('tap', path + (k,), eqn, found[0][0], direct))
    else:
      for _, leaf in found:
        uses.setdefault(leaf, []).append(('other',))
  for v in jaxpr.outvars:
    if _var(v) is not None and _var(v) in origin:
      uses.setdefault(origin[_var(v)], []).append(('other',))


def find_taps(jaxpr, num_leaves: int) -> dict:
  """``{path: Tap}`` for the shared leaves (the first ``num_leaves`` invars) used once, by a
  rule-covered equation; ``path`` is the equation's index path through nested calls."""
  uses: dict = {}
  _analyse(jaxpr, {v: i for i, v in enumerate(jaxpr.invars[:num_leaves])}, uses)
  taps = {}
  for leaf, found in uses.items():
    if len(found) == 1 and found[0][0] == 'tap':
      _, path, eqn, operand, direct = found[0]
      taps[path] = Tap(leaf, eqn, operand, direct)
  return taps


def _bind(eqn, invals):
  """``eqn``'s primitive applied to ``invals``, as ``jax.core.eval_jaxpr`` does."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns, params = params if isinstance(params, tuple) else ((), params)
  with eqn.ctx.manager if hasattr(eqn, 'ctx') else _null():
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return out if eqn.primitive.multiple_results else [out]


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


def _evaluate(jaxpr, consts, args, taps: dict, eps: dict, records: dict, path=(),
              shared_copy=frozenset()):
  """``jaxpr`` on ``args`` with ``eps[path]`` added to each tapped output and the tapped
  equation's operands stored in ``records[path]``; returns the outputs.  The dense taps at
  the paths ``shared_copy`` run on copy 0 of their (equal) parameter copies
  (``_on_first_copy``)."""
  env = {}
  read = lambda v: v.val if _var(v) is None else env[v]
  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for k, eqn in enumerate(jaxpr.eqns):
    here = path + (k,)
    invals = [read(v) for v in eqn.invars]
    sub = _sub_jaxpr(eqn)
    if sub is not None and any(p[:len(here)] == here for p in taps):
      outs = _evaluate(sub.jaxpr, sub.consts, invals, taps, eps, records, here, shared_copy)
    else:
      outs = (_on_first_copy(taps[here], invals) if here in shared_copy
              else _bind(eqn, invals))
      if here in taps:
        records[here] = invals
        outs = [outs[0] + eps[here]]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _on_first_copy(tap: Tap, invals):
  """A dense tap y = dot_general(x, W_c) over equal copies W_c (copy axis: a dot batch
  dimension, ``_copy_dims``) as one product with W_c[0], x's copy dimension free, then moved
  back: the same y, and on CPU one large matrix product (forward and cotangent pass) instead
  of c batched ones."""
  (contract, batch) = tap.eqn.params['dimension_numbers']
  p, q = tap.operand, 1 - tap.operand
  i = _copy_dims(tap)
  x_copy = batch[q][i]
  w_dims = lambda dims: tuple(d - 1 for d in dims)      # W loses its leading (copy) axis
  keep = [j for j in range(len(batch[q])) if j != i]
  new_contract, new_batch = [None, None], [None, None]
  new_contract[p], new_contract[q] = w_dims(contract[p]), tuple(contract[q])
  new_batch[p] = w_dims([batch[p][j] for j in keep])
  new_batch[q] = tuple(batch[q][j] for j in keep)
  operands = [None, None]
  operands[p], operands[q] = invals[p][0], invals[q]
  params = {k: v for k, v in tap.eqn.params.items() if k != 'dimension_numbers'}
  y = tap.eqn.primitive.bind(*operands, dimension_numbers=(
      (tuple(new_contract[0]), tuple(new_contract[1])),
      (tuple(new_batch[0]), tuple(new_batch[1]))), **params)
  # x's free dimensions, the copy one among them, follow the batch (and, W first, W's free).
  x_free = sorted(d for d in range(invals[q].ndim)
                  if d not in tuple(contract[q]) + tuple(new_batch[q]))
  w_free = invals[p].ndim - 1 - len(contract[p]) - len(keep)
  at = len(keep) + (w_free if p == 0 else 0) + x_free.index(x_copy)
  return [jnp.moveaxis(y, at, i)]


class GramVJP(NamedTuple):
  """What ``gram_vjp`` returns.

  Attributes:
    out: ``fn``'s output (without the aux part).
    vjp: ``cotangent -> (grad shared, *grads others)``, as ``jax.vjp``'s function.
    gram: ``rows -> G [k, k]``: the Gram matrix of the shared-parameter gradients pulled back
      from k cotangent rows (a pytree like ``out`` with a leading axis k); with ``copies`` = c,
      G [k c, k c] (``gram_vjp``).
    aux: ``fn``'s aux output (with ``has_aux``), else None.
    taps: ``{path: Tap}``, the layers covered by a rule (for inspection and tests).
  """
  out: Any
  vjp: Callable
  gram: Callable
  aux: Any
  taps: dict


def gram_vjp(fn: Callable, shared, *others, has_aux: bool = False,
             policy: str = 'cheapest', copies: int = 1) -> GramVJP:
  """``jax.vjp`` of ``fn(shared, *others)`` that also gives Gram matrices of ``shared``'s
  per-row gradients through the layer rules of this module.

  Args:
    fn: ``(shared, *others) -> out`` (``(out, aux)`` with ``has_aux``); any JAX function.
    shared: the parameters whose gradients' Gram matrix ``gram`` returns (a pytree).
    others: further differentiable arguments (the task-specific parameters).
    has_aux: ``fn`` returns ``(out, aux)``; aux is not differentiated.
    policy: per tapped layer, 'cheapest' (by multiply-add count), or always 'identity' /
      'explicit' where both apply (for tests).
    copies: c > 1: every shared leaf has a leading axis of c equal copies, ``fn`` running
      sub-batch b on copy b (``vmap``), and ``gram`` gives G [k c, k c] of the copies'
      gradients, row r c + b being copy b's gradient from cotangent row r: the gradients of
      k losses on each of c sub-batches from k pullbacks.  Dense taps whose copy axis is a
      dot batch dimension run on copy 0, so ``vjp``'s gradients of the shared leaves are
      exact summed over the copy axis only (the engine sums them).
  """
  if policy not in POLICIES:
    raise ValueError(f'policy must be one of {POLICIES}, got {policy!r}')
  flat, tree = jax.tree.flatten(shared)
  flat_fn = lambda leaves, *rest: fn(jax.tree.unflatten(tree, leaves), *rest)
  closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(flat, *others)
  taps = find_taps(closed.jaxpr, len(flat))
  out_tree = jax.tree.structure(out_shape)
  for leaf in flat:
    if copies > 1 and (not jnp.ndim(leaf) or jnp.shape(leaf)[0] != copies):
      raise ValueError(f'copies={copies}: every shared leaf needs a leading axis of '
                       f'{copies} copies, got shape {jnp.shape(leaf)}')
  ruled = {p: t for p, t in taps.items() if copies == 1 or _copy_dims(t) is not None}
  first = frozenset(ruled) if copies > 1 else frozenset()

  def tapped(eps, leaves, *rest):
    records = {}
    args = jax.tree.leaves((leaves, rest))
    outs = _evaluate(closed.jaxpr, closed.consts, args, taps, eps, records, (), first)
    result = jax.tree.unflatten(out_tree, outs)
    out, aux = result if has_aux else (result, None)
    return out, (aux, records)

  eps = {p: jnp.zeros(t.eqn.outvars[0].aval.shape, t.eqn.outvars[0].aval.dtype)
         for p, t in taps.items()}
  out, pull, (aux, records) = jax.vjp(tapped, eps, flat, *others, has_aux=True)

  def vjp(cotangent):
    _, leaves, *rest = pull(cotangent)
    return (jax.tree.unflatten(tree, leaves), *rest)

  def gram(rows):
    deltas, leaves = jax.vmap(lambda c: pull(c)[:2])(rows)
    num = jax.tree.leaves(rows)[0].shape[0]
    done = {t.leaf for t in ruled.values()}
    untapped = [_split(g, copies) for i, g in enumerate(leaves) if i not in done]
    g = jacobian.gram(untapped, num * copies)
    for p, t in ruled.items():
      g = g + tap_gram(t, records[p], deltas[p], policy, copies)
    return g.astype(_gram_dtype(flat))

  return GramVJP(out, vjp, gram, aux, taps)


def _gram_dtype(leaves):
  """float64 for float64 parameters (under x64), else float32."""
  wide = any(jnp.dtype(leaf.dtype) == jnp.float64 for leaf in leaves)
  return jnp.float64 if wide else jnp.float32


def tap_gram(tap: Tap, operands, deltas, policy: str = 'cheapest', copies: int = 1):
  """G [k, k] of the tapped parameter's per-row gradients, from the equation's operands and
  the k output cotangents ``deltas`` [k, *out]: by its layer rule, or explicitly.  With
  ``copies`` = c > 1 (a dense tap with a copy axis, ``_copy_dims``): G [k c, k c] over
  (row, copy) pairs."""
  identity, explicit = tap_costs(tap, deltas.shape[0], copies)
  if identity is not None and (policy == 'identity'
                               or (policy == 'cheapest' and identity < explicit)):
    if copies > 1:
      return _dot_identity(tap, operands, deltas, copies, _copy_kernel_gram)
    rule = {'dot_general': _dot_identity, 'conv_general_dilated': _conv_identity,
            'gather': _gather_identity}[tap.eqn.primitive.name]
    return rule(tap, operands, deltas)
  if copies > 1:
    return _dot_identity(tap, operands, deltas, copies, _copy_explicit_gram)
  return _explicit_tap(tap, operands, deltas)


def tap_costs(tap: Tap, k: int, copies: int = 1):
  """Multiply-adds of the layer's rule (None where none applies) and of its k explicit
  per-task gradients with their Gram matrix, from the shapes alone; with ``copies`` = c > 1,
  of the Gram matrix over (row, copy) pairs (``tap_gram``)."""
  name = tap.eqn.primitive.name
  if copies > 1:
    size = _size(tap.eqn.invars[tap.operand])
    explicit = float(k) * forward_cost(tap) + float(k * copies) ** 2 * size / copies
    if _copy_dims(tap) is None:
      return None, explicit
    nb, n, c, r = _dot_sizes(tap)
    rest = nb // copies
    pairs = copies * (copies + 1) / 2 * rest              # blocks a <= b of G
    return pairs * n * n * (c + k * r) + pairs * k * k * n * r, explicit
  if name == 'gather':
    sizes = _gather_sizes(tap)
    if sizes is None:
      return None, float(k) * forward_cost(tap) + float(k) * k * _size(tap.eqn.invars[0])
    n, r, rows = sizes
    return float(k) * n * n * r + float(k) * k * n * r, float(k) * n * r + float(k) * k * rows * r
  sizes = _dot_sizes(tap) if name == 'dot_general' else _conv_sizes(tap)
  if sizes is None:
    return None, float(k) * forward_cost(tap) + float(k) * k * _size(tap.eqn.invars[tap.operand])
  nb, n, c, r = sizes
  identity = float(nb) * n * n * c + float(k) * nb * n * n * r + float(k) * k * nb * n * r
  explicit = float(k) * nb * n * c * r + float(k) * k * nb * c * r
  return identity, explicit


def pays_off(taps: dict, k: int, copies: int = 1) -> bool:
  """Whether the rules' saving over k explicit per-task gradients exceeds the backward pass
  the Gramian mode adds for d = J^T alpha (about twice the tapped layers' forward cost; the
  Jacobian path contracts the J in hand instead).

  With ``copies`` > 1: whether any dense tap has a copy axis (``_copy_dims``).  Those layers
  then run as one product with copy 0 instead of c batched ones, and their G (rule or
  explicit, ``tap_gram``) needs no k c rows of J: on the CPU the Gramian mode measured 1.2 x
  (T = 2), 2.1 x (T = 8) and 1.5 x (T = 32) faster than the Jacobian on the step-time MLP."""
  if copies > 1:
    return any(_copy_dims(t) is not None for t in taps.values())
  saved = 0.0
  for tap in taps.values():
    identity, explicit = tap_costs(tap, k)
    if identity is not None and identity < explicit:
      saved += explicit - identity
  return saved > 2.0 * sum(forward_cost(t) for t in taps.values())


def _copy_dims(tap: Tap):
  """For a dense tap whose parameter keeps its leaf's layout and whose leading (copy) axis is
  a dot batch dimension: that dimension's position in the dot's batch lists (the same for x
  and W); else None."""
  if tap.eqn.primitive.name != 'dot_general' or not tap.direct:
    return None
  batch = tap.eqn.params['dimension_numbers'][1]
  w_batch = list(batch[tap.operand])
  if 0 not in w_batch:
    return None
  return w_batch.index(0)


def _split(grads, copies: int):
  """Per-row gradients [k, c, ...] of a leaf with c copies as [k c, ...] rows (c = 1: as is)."""
  return grads if copies == 1 else grads.reshape((-1,) + grads.shape[2:])


def forward_cost(tap: Tap) -> float:
  """Multiply-adds of the tapped layer's forward pass (its weight gradient costs as much)."""
  if tap.eqn.primitive.name == 'gather':
    return float(_size(tap.eqn.outvars[0]))
  # Every output entry sums over the parameter operand's contracted part.
  out, w = _size(tap.eqn.outvars[0]), tap.eqn.invars[tap.operand].aval.shape
  if tap.eqn.primitive.name == 'dot_general':
    contract = tap.eqn.params['dimension_numbers'][0][tap.operand]
    return float(out) * float(np.prod([w[d] for d in contract]))
  spec = tap.eqn.params['dimension_numbers'].rhs_spec
  return float(out) * float(np.prod(w)) / w[spec[0]]


def _size(var) -> int:
  return int(np.prod(var.aval.shape))


def _explicit_tap(tap, operands, deltas):
  """The k gradients of the tapped operand from the equation's own VJP, and their Gram."""
  def one(delta):
    f = lambda w: _bind(tap.eqn, operands[:tap.operand] + [w] + operands[tap.operand + 1:])[0]
    return jax.vjp(f, operands[tap.operand])[1](delta)[0]
  return jacobian.gram(jax.vmap(one)(deltas))


def _exact_einsum(*args):
  """``jnp.einsum`` at full float32 (float64) precision: on GPUs and TPUs the default for
  float32 products is TF32 / one bfloat16 pass (about 3 significant digits), too coarse for
  a Gram matrix whose solver compares nearly parallel gradients.  (No effect on the CPU.)"""
  return jnp.einsum(*args, precision=lax.Precision.HIGHEST)


def _wide(dtype):
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _kernel_gram(x, deltas):
  """sum_b <Delta_s,b, (x_b x_b^T) Delta_t,b> for x [nb, N, C], deltas [k, nb, N, R]."""
  dtype = _wide(jnp.result_type(x.dtype, deltas.dtype))
  x, deltas = x.astype(dtype), deltas.astype(dtype)
  kernel = _exact_einsum('bnc,bmc->bnm', x, x)
  kd = _exact_einsum('bnm,tbmr->tbnr', kernel, deltas)
  return _exact_einsum('sbnr,tbnr->st', deltas, kd)


def _dot_layout(tap):
  """x's batch, free and contracting dimensions and W's free ones, for y = dot(x, W)."""
  (contract, batch) = tap.eqn.params['dimension_numbers']
  p, q = tap.operand, 1 - tap.operand
  x_ndim = len(tap.eqn.invars[q].aval.shape)
  w_ndim = len(tap.eqn.invars[p].aval.shape)
  x_free = [d for d in range(x_ndim) if d not in contract[q] + batch[q]]
  w_free = [d for d in range(w_ndim) if d not in contract[p] + batch[p]]
  return list(batch[q]), x_free, list(contract[q]), w_free


def _dot_sizes(tap):
  """(nb, n, c, r): dot batch, x's free (sample) and contracting sizes, W's free size."""
  x_b, x_free, x_c, w_free = _dot_layout(tap)
  x = tap.eqn.invars[1 - tap.operand].aval.shape
  w = tap.eqn.invars[tap.operand].aval.shape
  size = lambda shape, dims: int(np.prod([shape[d] for d in dims]))
  return size(x, x_b), size(x, x_free), size(x, x_c), size(w, w_free)


def _dot_identity(tap, operands, deltas, copies: int = 1, over_copies=None):
  """The dense rule: y = dot_general(x, W) (either side), per dot batch index; with
  ``copies`` > 1, over (row, copy) pairs by ``over_copies(x [C, J, N, in], deltas [k, C, J,
  N, out])``, the copy batch dimension (``_copy_dims``) first."""
  x_b, x_free, x_c, w_free = _dot_layout(tap)
  nb, n, c, r = _dot_sizes(tap)
  nbd, nx, nw = len(x_b), len(x_free), len(w_free)
  first = _copy_dims(tap) if copies > 1 else None
  batch = ([first] if first is not None else []) + [i for i in range(nbd) if i != first]
  x_b = [x_b[i] for i in batch]
  xs = jnp.transpose(operands[1 - tap.operand], x_b + x_free + x_c).reshape(nb, n, c)
  # The output is (batch dims, lhs free dims, rhs free dims); make it (batch, x free, W free).
  free = (list(range(nbd, nbd + nx + nw)) if tap.operand == 1 else
          list(range(nbd + nw, nbd + nw + nx)) + list(range(nbd, nbd + nw)))
  k = deltas.shape[0]
  ds = jnp.transpose(deltas, [0] + [i + 1 for i in batch + free]).reshape(k, nb, n, r)
  if copies == 1:
    return _kernel_gram(xs, ds)
  return over_copies(xs.reshape(copies, nb // copies, n, c),
                     ds.reshape(k, copies, nb // copies, n, r))


def _copy_explicit_gram(x, deltas):
  """The same G from the copies' explicit gradients x_a^T Delta_t,a, each laid out as
  (copy, J, row, out, in) by one product, so that G is one more (no transposes at J = 1)."""
  dtype = _wide(jnp.result_type(x.dtype, deltas.dtype))
  num, copies, reps, n, r = deltas.shape
  dt = jnp.transpose(deltas, (1, 2, 3, 0, 4)).reshape(copies, reps, n, num * r)
  grads = jnp.einsum('ajnq,ajnc->ajqc', dt, x)                 # [C, J, k out, in]
  grads = grads.reshape(copies, reps, num, -1).transpose(0, 2, 1, 3)
  g = jacobian.gram(grads.reshape(copies * num, -1).astype(dtype))     # rows (a, t)
  g = g.reshape(copies, num, copies, num).transpose(1, 0, 3, 2)
  return g.reshape(num * copies, num * copies)


def _copy_kernel_gram(x, deltas):
  """G[(s, a), (t, b)] = sum_j <Delta_s,a,j, (x_a,j x_b,j^T) Delta_t,b,j> for x [C, J, N, in]
  (copy a's layer inputs), deltas [k, C, J, N, out]: copy a's gradient is x_a^T Delta_a.

  Block by block over the copy pairs a <= b (G is symmetric), each two plain matrix
  products on a layout made once, (copy, J, row, out, N), so that XLA's CPU backend moves
  no k x C x C intermediate (an einsum over all pairs at once runs twice as long)."""
  dtype = _wide(jnp.result_type(x.dtype, deltas.dtype))
  x, deltas = x.astype(dtype), deltas.astype(dtype)
  num, copies, reps, n, r = deltas.shape
  dt = jnp.transpose(deltas, (1, 2, 0, 4, 3))                  # [C, J, k, out, N]
  blocks = {}
  for a in range(copies):
    for b in range(a, copies):
      kernel = _exact_einsum('jmc,jnc->jmn', x[b], x[a])              # x_b x_a^T [J, N, N]
      kd = _exact_einsum('jtrm,jmn->jtrn', dt[b], kernel)             # (K_ab Delta_t,b)^T
      blocks[a, b] = _exact_einsum('jsq,jtq->st', dt[a].reshape(reps, num, -1),
                                kd.reshape(reps, num, -1))
  rows = [jnp.concatenate([blocks[a, b] if a <= b else blocks[b, a].T
                           for b in range(copies)], 1) for a in range(copies)]
  g = jnp.concatenate(rows, 0)                                 # [(a, s), (b, t)]
  g = g.reshape(copies, num, copies, num).transpose(1, 0, 3, 2)
  return g.reshape(num * copies, num * copies)


def _conv_sizes(tap):
  """(1, n, c, r) for a convolution: n = batch x output positions, c = C_in x window,
  r = C_out; None with feature or batch groups, or the kernel not the rhs."""
  params = tap.eqn.params
  if (tap.operand != 1 or params['feature_group_count'] != 1
      or params['batch_group_count'] != 1):
    return None
  out = tap.eqn.outvars[0].aval.shape
  kernel = tap.eqn.invars[1].aval.shape
  c_out = out[params['dimension_numbers'].out_spec[1]]
  return 1, int(np.prod(out)) // c_out, int(np.prod(kernel)) // c_out, c_out


def _conv_identity(tap, operands, deltas):
  """The convolution rule over patches: K = P P^T, P [batch x positions, C_in x window]."""
  params = tap.eqn.params
  lhs, rhs = operands
  spec = params['dimension_numbers']
  window = [rhs.shape[d] for d in spec.rhs_spec[2:]]
  patches = lax.conv_general_dilated_patches(
      lhs, window, params['window_strides'], params['padding'],
      lhs_dilation=params['lhs_dilation'], rhs_dilation=params['rhs_dilation'],
      dimension_numbers=spec, precision=params['precision'])
  # patches: laid out as the output (out_spec), its feature dimension C_in x window.
  out_spec = spec.out_spec
  to_nsc = (out_spec[0],) + tuple(out_spec[2:]) + (out_spec[1],)
  p = jnp.transpose(patches, to_nsc)
  n = int(np.prod(p.shape[:-1]))
  k = deltas.shape[0]
  ds = jnp.transpose(deltas, (0,) + tuple(d + 1 for d in to_nsc)).reshape(k, 1, n, -1)
  return _kernel_gram(p.reshape(1, n, p.shape[-1]), ds)


def _gather_sizes(tap):
  """(n ids, r entries per row, rows) for a lookup of whole table rows, else None."""
  table = tap.eqn.invars[0].aval.shape
  indices = tap.eqn.invars[1].aval.shape
  dims, params = tap.eqn.params['dimension_numbers'], tap.eqn.params
  rows_only = (tuple(dims.collapsed_slice_dims) == (0,) and tuple(dims.start_index_map) == (0,)
               and not getattr(dims, 'operand_batching_dims', ())
               and tuple(params['slice_sizes']) == (1,) + tuple(table[1:])
               and tuple(dims.offset_dims) == tuple(range(len(indices) - 1,
                                                          len(indices) - 2 + len(table)))
               and indices[-1] == 1)
  if not rows_only:
    return None
  return int(np.prod(indices[:-1])), int(np.prod(table[1:])), table[0]


def _gather_identity(tap, operands, deltas):
  """The embedding rule: rows of a table [V, ...] looked up by ids (``jnp.take(axis=0)``):
  G[s, t] = sum_{i, j: id_i = id_j} <Delta_s,i, Delta_t,j>."""
  table, indices = operands
  ids = indices.reshape(-1)
  mode = str(tap.eqn.params['mode'])
  if 'CLIP' in mode or 'PROMISE' in mode:
    ids = jnp.clip(ids, 0, table.shape[0] - 1)
  valid = (ids >= 0) & (ids < table.shape[0])
  dtype = _wide(deltas.dtype)
  ds = deltas.reshape(deltas.shape[0], ids.shape[0], -1).astype(dtype)
  same = (ids[:, None] == ids[None, :]) & valid[:, None] & valid[None, :]
  kd = _exact_einsum('nm,tmr->tnr', same.astype(dtype), ds)
  return _exact_einsum('snr,tnr->st', ds, kd)
