"""Transforms of weighting methods: functions ``Weighting -> Weighting``, in the style of optax.

Each takes a method and returns a new ``Weighting`` whose ``init``/``update`` run the wrapped
one on transformed inputs (and transform its result), so that the combinations papers use
are one line and compose::

    weighting.ema(weighting.normalize(weighting.get('upgrad'), 'l2'), alpha=0.9)
    weighting.log_losses(weighting.get('mgda'))          # LOG_MGDA (FAMO's baselines)
    weighting.grouped(weighting.get('gradvac'), 'leaf')  # GradVac per parameter tensor

* ``normalize(method, by)``: the method sees the normalised gradients g_t / n_t.
* ``log_losses(method, eps)``: the method sees log(L_t + eps) and its gradients.
* ``ema(method, alpha, initial_weights)``: an exponential moving average of its weights.
* ``grouped(method, groups)``: the method on each parameter group's Gram matrix.

The other fields of the wrapped method (``needs``, ``head_grads``, ``min_tasks``, ``random``,
``after_step``, ``direct``, ``state_like_params``, ``sub_batches``, ``head_scale``) carry over
unless a transform says otherwise.  Every ``update`` is pure and jittable.
"""

import dataclasses
import re
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingInputs, WeightingResult
from mtl_jax._src.weighting.jacobian import gram, weighted_sum

PyTree = Any
NORMALIZATIONS = ('none', 'l2', 'loss', 'loss+')


def _check_method(transform: str, method) -> None:
  if not isinstance(method, Weighting):
    raise ValueError(f'{transform}: method must be a Weighting (e.g. weighting.get(name)), '
                     f'got {method!r}')


def _rescaled_inputs(inputs: WeightingInputs, n: jax.Array) -> WeightingInputs:
  """The inputs of the rows g_t / n_t: G / (n n^T) and J / n (each in its own dtype)."""
  g = inputs.gram
  if g is not None:
    g = g / jnp.outer(n, n).astype(g.dtype)

  def scale(leaf):
    column = n.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return (leaf / column).astype(leaf.dtype)

  jac = None if inputs.jacobian is None else jax.tree.map(scale, inputs.jacobian)
  return inputs._replace(gram=g, jacobian=jac)


def _rescaled_result(result: WeightingResult, n: jax.Array) -> WeightingResult:
  """Weights alpha' on the rows g_t / n_t as weights on the rows g_t: alpha = alpha' / n (a
  direct method's direction is the same vector either way)."""
  weights = result.weights
  return result._replace(weights=weights / n.astype(weights.dtype))


def normalize(method: Weighting, by: str = 'l2') -> Weighting:
  """A gradient method run on normalised task gradients g_t / n_t.

  The normalisations of Sener and Koltun (2018), "Multi-Task Learning as Multi-Objective
  Optimization", NeurIPS 2018: n_t = ||g_t|| ('l2'), L_t ('loss'), L_t ||g_t|| ('loss+') or
  1 ('none'), with n_t = 1 where it is below 1e-8 (a zero gradient or loss: no NaN).  The
  method sees G' = G / (n n^T) (and J' = J / n for a JACOBIAN method), the losses unchanged;
  its weights alpha' on the normalised rows become alpha = alpha' / n on the real ones, so
  that d = sum_t alpha'_t g_t / n_t.  A direct method gets J' and its direction is kept (its
  reported weights are divided by n too).  The state is the wrapped method's; every other
  field carries over.

  Args:
    method: a GRAM or JACOBIAN method (a loss-only one reads no gradients to normalise).
    by: n_t: 'l2', 'loss', 'loss+' or 'none'.

  Returns:
    The ``Weighting``, named ``normalize(<name>, by=<by>)``.

  Raises:
    ValueError: for an unknown ``by`` or a loss-only method.
  """
  _check_method('normalize', method)
  checks.choice('normalize', 'by', by, NORMALIZATIONS)
  if method.needs is Needs.LOSSES:
    raise ValueError(f'normalize: weighting {method.name!r} reads loss values only; it has no '
                     'gradients to normalise (use a GRAM or JACOBIAN method)')

  def update(inputs, state, key):
    g, losses = inputs.gram, inputs.losses
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    n = {'none': jnp.ones_like(norms), 'l2': norms, 'loss': losses.astype(g.dtype),
         'loss+': losses.astype(g.dtype) * norms}[by]
    n = jnp.where(n > checks.EPS, n, 1.0).astype(g.dtype)
    return _rescaled_result(method.update(_rescaled_inputs(inputs, n), state, key), n)

  return dataclasses.replace(method, name=f'normalize({method.name}, by={by})', update=update)


def log_losses(method: Weighting, eps: float = 1e-8) -> Weighting:
  """The scale-invariant variant of a method: it runs on the log-losses log(L_t + eps).

  As in the scale-invariant baseline of Navon et al. (2022), "Multi-Task Learning as a
  Bargaining Game", ICML 2022, FAMO's LOG_MGDA / LOG_CAGrad / LOG_IMTLG baselines (Liu et al.
  (2023), NeurIPS 2023) and DB-MTL's loss-scale balancing (Lin et al. (2023)).  With
  n_t = L_t + eps, the method sees the losses log n_t and the gradients of log n_t,
  g_t / n_t (G' = G / (n n^T), J' = J / n); its weights alpha' on those become
  alpha = alpha' / n on the g_t, so d = sum_t alpha'_t grad log(L_t + eps).  A loss-only
  method sees the log-losses only (its alpha changes the same way).  Task-specific
  parameters: weighted ones get alpha_t grad L_t = alpha'_t grad log n_t; unweighted ones get
  grad log n_t through ``head_scale(L) = 1 / n`` (times the wrapped method's
  ``head_scale`` at log n).  ``after_step`` (FAMO) gets the log-losses too.  The losses
  must be non-negative (log of a negative number is NaN: the step is rejected as
  non-finite).  The state is the wrapped method's.

  Args:
    method: any method (a direct one keeps its direction, computed from J').
    eps: added to the losses (> 0): a zero loss gives log(eps), not -inf.

  Returns:
    The ``Weighting``, named ``log_losses(<name>)``.
  """
  _check_method('log_losses', method)
  eps = checks.check_finite('log_losses', 'eps', eps, minimum=0.0, strict=True)
  inner_scale, inner_after = method.head_scale, method.after_step

  def update(inputs, state, key):
    n = inputs.losses + eps
    if inputs.gram is not None:
      n = n.astype(inputs.gram.dtype)
    inner = _rescaled_inputs(inputs._replace(losses=jnp.log(inputs.losses + eps)), n)
    return _rescaled_result(method.update(inner, state, key), n)

  def head_scale(losses):
    n = losses + eps
    scale = 1 / n
    return scale if inner_scale is None else scale * inner_scale(jnp.log(n))

  after_step = None
  if inner_after is not None:
    after_step = lambda state, before, after: inner_after(state, jnp.log(before + eps),
                                                          jnp.log(after + eps))
  return dataclasses.replace(method, name=f'log_losses({method.name})', update=update,
                             head_scale=head_scale, after_step=after_step)


class EMAState(NamedTuple):
  """The state of ``ema``."""
  inner: PyTree            # the wrapped method's state
  weights: jax.Array       # lambda_{k-1} [T] (k * T for a method reading k sub-batches)
  started: jax.Array       # scalar bool: weights holds lambda_{k-1} (else the next is hat)



def ema(method: Weighting, alpha: float = 0.9,
        initial_weights: Optional[Sequence[float]] = None) -> Weighting:
  """An exponential moving average of a method's weights across steps.

  The weight smoothing of Zhou, Zhang, Jiang, Zhong, Gu and Zhu (2022), "On the Convergence
  of Stochastic Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022 (CR-MOGM),
  with the conventions of TorchJD's ``CRMOGMWeighting``: with lambda^_k the wrapped method's
  weights at step k,

      lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda^_k,

  lambda_0 = ``initial_weights`` if given, else lambda^_1 (so the first output is lambda^_1
  whatever alpha).  d_k = sum_t lambda_{k,t} g_t with the current gradients.  alpha = 0 is
  the wrapped method; alpha = 1 freezes the weights at lambda_0.  The state is ``EMAState``
  (the wrapped state, lambda_{k-1} in the default float dtype, a started flag); every other
  field carries over (``after_step`` acts on the wrapped state).

  Args:
    method: a method that returns weights (not a direct one: its weights are no
      coefficients of the gradients).
    alpha: the coefficient of the previous weights, in [0, 1].
    initial_weights: optional lambda_0, one value per weight (T; k * T for a method
      reading k sub-batches).

  Returns:
    The ``Weighting``, named ``ema(<name>)``.

  Raises:
    ValueError: for a direct method, alpha outside [0, 1] or bad ``initial_weights``
      (their length is checked by ``init``).
  """
  _check_method('ema', method)
  if method.direct:
    raise ValueError(f'ema: weighting {method.name!r} returns the direction itself (direct); '
                     'its weights are not coefficients of the gradients and cannot be '
                     'averaged')
  alpha = checks.check_finite('ema', 'alpha', alpha, minimum=0.0)
  if alpha > 1:
    raise ValueError(f'ema: alpha must be <= 1.0, got {alpha}')
  initial = checks.check_vector('ema', 'initial_weights', initial_weights, optional=True)
  name = f'ema({method.name})'

  def init(num_tasks, *shared):
    size = method.sub_batches * num_tasks
    if initial is not None and initial.shape != (size,):
      raise ValueError(f'ema: initial_weights has {initial.size} entries for {size} weights '
                       f'({num_tasks} tasks)')
    weights = jnp.zeros((size,), float) if initial is None else jnp.asarray(initial, float)
    return EMAState(method.init(num_tasks, *shared), weights, jnp.asarray(initial is not None))

  def update(inputs, state, key):
    result = method.update(inputs, state.inner, key)
    hat = result.weights
    previous = jnp.where(state.started, state.weights.astype(hat.dtype), hat)
    weights = alpha * previous + (1 - alpha) * hat
    new_state = EMAState(result.state, weights.astype(state.weights.dtype), jnp.asarray(True))
    return result._replace(weights=weights, state=new_state)

  after_step = None
  if method.after_step is not None:
    inner_after = method.after_step
    after_step = lambda state, before, after: state._replace(
        inner=inner_after(state.inner, before, after))
  return dataclasses.replace(method, name=name, init=init, update=update,
                             after_step=after_step)


def _compile(patterns) -> list:
  if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
    raise ValueError("grouped: groups must be 'leaf', 'all' or a non-empty sequence of "
                     f'regular expressions, got {patterns!r}')
  compiled = []
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f'grouped: groups must hold regular expressions (strings), got '
                       f'{pattern!r}')
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f'grouped: groups pattern {pattern!r} is not a regular expression: '
                       f'{e}') from None
  return compiled


def group_members(tree: PyTree, groups: Union[str, Sequence[str]]) -> list[list[int]]:
  """The groups of ``tree``'s leaves (indices in ``jax.tree.leaves`` order), as ``grouped``
  forms them: one per leaf ('leaf'), one of all ('all'), or one per regular expression
  (``re.search`` on the leaf's path ``jax.tree_util.keystr(path)``, the first match wins)
  plus one of the unmatched leaves, if any.

  Raises:
    ValueError: if ``tree`` has no leaves, or a pattern gets no leaf.
  """
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
  if not paths:
    raise ValueError('grouped: the shared parameters have no leaves to group')
  if groups == 'leaf':
    return [[i] for i in range(len(paths))]
  if groups == 'all':
    return [list(range(len(paths)))]
  compiled = _compile(groups)
  members = [[] for _ in range(len(compiled) + 1)]
  for i, path in enumerate(paths):
    k = next((k for k, c in enumerate(compiled) if c.search(path)), len(compiled))
    members[k].append(i)
  for c, found in zip(compiled, members):
    if not found:
      raise ValueError(f'grouped: groups pattern {c.pattern!r} matches no leaf of the shared '
                       f'parameters (not already matched by an earlier pattern); leaf paths: '
                       f'{paths}')
  return members if members[-1] else members[:-1]


def grouped(method: Weighting, groups: Union[str, Sequence[str]] = 'leaf') -> Weighting:
  """A Gram method run separately on each group of shared parameters.

  Per-group aggregation, as GradVac's per-layer and per-matrix variants (Wang, Tsvetkov, Firat
  and Cao (2021), "Gradient Vaccine", ICLR 2021; LibMTL's grouping, TorchJD's grouping
  example): the parameters are split into groups k = 1..K with Jacobians J_k (J restricted to
  group k's leaves); the method runs on each G_k = J_k J_k^T with its own state (the K runs
  are one ``vmap``; a random method gets K split keys), giving alpha_k; the direction is the
  concatenation of the groups' alpha_k^T J_k.  The reported weights are the mean over groups
  of alpha_k, the method's aux values too.

  groups: 'leaf' (every leaf of the shared parameters its own group), 'all' (one group: the
  method itself, in this form), or a sequence of regular expressions matched with
  ``re.search`` against each leaf's path ``jax.tree_util.keystr(path)`` (e.g.
  ``"['encoder']"``); the first match wins and the unmatched leaves form one last group.  A
  pattern that gets no leaf is an error.

  The result is a direct JACOBIAN method whose state is sized by the parameters
  (``state_like_params``: ``init(num_tasks, shared)`` counts the groups of ``shared`` and
  stacks K copies of the wrapped state along a new leading axis); so it runs in engine mode
  'param' (not 'gram' or 'rep'), and task-specific parameters get unweighted gradients
  (times the wrapped method's ``head_scale``).

  Args:
    method: a GRAM method without ``after_step``, parameter-sized state or sub-batches, and
      not direct.
    groups: 'leaf', 'all' or a sequence of regular expressions (see above).

  Returns:
    The ``Weighting``, named ``grouped(<name>)``.

  Raises:
    ValueError: for a method that does not qualify or bad ``groups``; ``init`` and ``update``
      raise for a pattern without leaves.
  """
  _check_method('grouped', method)
  if isinstance(groups, str):
    checks.choice('grouped', 'groups', groups, ('leaf', 'all'))
  else:
    _compile(groups)
    groups = tuple(groups)
  reasons = [(method.direct, 'returns the direction itself (direct), not weights'),
             (method.state_like_params, 'keeps parameter-sized state'),
             (method.sub_batches > 1, f'reads {method.sub_batches} sub-batches'),
             (method.after_step is not None, 'updates its state after the step (after_step)'),
             (method.needs is Needs.JACOBIAN, 'reads the Jacobian itself, not only G'),
             (method.needs is Needs.LOSSES, 'reads loss values only (the same weights for '
                                            'every group: use it directly)')]
  for refused, why in reasons:
    if refused:
      raise ValueError(f'grouped: weighting {method.name!r} {why}; grouped runs a Gram method '
                       "on each parameter group's Gram matrix")

  def init(num_tasks, shared):
    size = len(group_members(shared, groups))
    state = method.init(num_tasks)
    return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x)[None], size, axis=0), state)

  def update(inputs, state, key):
    leaves, treedef = jax.tree.flatten(inputs.jacobian)
    members = group_members(inputs.jacobian, groups)
    num = inputs.losses.shape[0]
    grams = jnp.stack([gram([leaves[i] for i in m], num) for m in members])

    def one(g, s, k):
      sub = WeightingInputs(losses=inputs.losses, step=inputs.step, gram=g)
      result = method.update(sub, s, k)
      return result.weights, result.state, result.aux

    keys = jax.random.split(key, len(members)) if method.random else None
    weights, new_state, aux = jax.vmap(one, in_axes=(0, 0, 0 if method.random else None))(
        grams, state, keys)
    parts = [None] * len(leaves)
    for k, m in enumerate(members):
      for i, part in zip(m, weighted_sum([leaves[i] for i in m], weights[k])):
        parts[i] = part
    aux = None if aux is None else {name: jnp.mean(v, 0) for name, v in aux.items()}
    return WeightingResult(jnp.mean(weights, 0), new_state, aux,
                           jax.tree.unflatten(treedef, parts))

  return dataclasses.replace(method, name=f'grouped({method.name})', needs=Needs.JACOBIAN,
                             init=init, update=update, head_grads='unweighted', direct=True,
                             state_like_params=True)
