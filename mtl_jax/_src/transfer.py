"""Transfer learning: start part of a model from a pretrained encoder, then freeze it or give
it its own learning rate.

* ``load_params(path)``: the params of the latest checkpoint of an earlier run (its workdir or
  its ``checkpoints/`` directory), restored with orbax.
* ``graft(params, pretrained, target)``: ``params`` with the subtree at ``target`` (a
  '/'-separated path such as ``'shared'``) replaced by ``pretrained``; a target leaf with
  extra leading axes (stacked copies: experts, task columns) gets the pretrained leaf in
  every copy.
* ``partition_optimizer(make, schedule, target, freeze, lr_ratio)``: ``optax.multi_transform``
  with the params under ``target`` labelled ``'target'``: ``optax.set_to_zero()`` if frozen,
  else the same optimizer with learning rate ``lr_ratio * schedule``.  Learning-rate ratios act
  after gradient aggregation: the weighting sees raw gradients.
* ``frozen_mask(params, target)``: where the train step stops gradients, so that Jacobians
  and Gram matrices cover the trainable parameters only.
"""

import os
from typing import Any, Callable

import jax
import optax
import orbax.checkpoint as ocp

PyTree = Any


def _split_path(path: str) -> tuple[str, ...]:
  return tuple(p for p in path.split('/') if p)


def subtree(tree: PyTree, path: str, field: str = 'transfer.target') -> PyTree:
  """The subtree of nested dicts at ``path``; a missing key raises naming ``field``."""
  node = tree
  for i, key in enumerate(_split_path(path)):
    if not isinstance(node, dict) or key not in node:
      here = '/'.join(_split_path(path)[:i]) or '(root)'
      options = sorted(node) if isinstance(node, dict) else []
      raise ValueError(f'{field}: no {key!r} under {here}; it has {options}')
    node = node[key]
  return node


def load_params(path: str) -> PyTree:
  """Params of the latest checkpoint under ``path`` (a run's workdir or checkpoint dir)."""
  directory = os.path.abspath(path)
  if os.path.isdir(os.path.join(directory, 'checkpoints')):
    directory = os.path.join(directory, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'transfer.init_from: no directory {path!r}')
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'transfer.init_from: no checkpoint in {directory!r}')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  state = restored['state']
  return state['params'] if isinstance(state, dict) else state.params


def graft(params: PyTree, pretrained: PyTree, target: str) -> PyTree:
  """``params`` with ``pretrained`` at ``target`` (shapes checked; copies broadcast)."""
  current = subtree(params, target)
  want = jax.tree_util.tree_structure(current)
  have = jax.tree_util.tree_structure(pretrained)
  if want != have:
    raise ValueError(f'transfer.target: the model\'s {target!r} subtree {want} does not match '
                     f'the pretrained one {have}')

  def fit(path, old, new):
    if old.shape == new.shape:
      return new.astype(old.dtype)
    extra = len(old.shape) - len(new.shape)
    if extra > 0 and old.shape[extra:] == new.shape:      # stacked copies
      return jax.numpy.broadcast_to(new, old.shape).astype(old.dtype)
    raise ValueError(f'transfer.target: {target}{jax.tree_util.keystr(path)} has shape '
                     f'{old.shape}, the pretrained leaf {new.shape}')

  grafted = jax.tree_util.tree_map_with_path(fit, current, pretrained)
  keys = _split_path(target)
  if not keys:
    return grafted

  def put(node, i):
    node = dict(node)
    node[keys[i]] = grafted if i == len(keys) - 1 else put(node[keys[i]], i + 1)
    return node
  return put(params, 0)


def _under(path, keys) -> bool:
  names = tuple(getattr(p, 'key', None) for p in path[:len(keys)])
  return names == keys


def frozen_mask(params: PyTree, target: str) -> PyTree:
  """A bool pytree like ``params``: True for leaves under ``target``."""
  subtree(params, target)
  keys = _split_path(target)
  return jax.tree_util.tree_map_with_path(lambda path, _: _under(path, keys), params)


def partition_optimizer(make: Callable[[Callable], optax.GradientTransformation],
                        schedule: Callable, target: str, *, freeze: bool = False,
                        lr_ratio: float = 1.0) -> optax.GradientTransformation:
  """``make(schedule)`` for every param, except those under ``target``: frozen (zero
  updates, no optimizer state) or with the schedule scaled by ``lr_ratio``."""
  keys = _split_path(target)
  inner = optax.set_to_zero() if freeze else make(lambda step: lr_ratio * schedule(step))
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: 'target' if _under(path, keys) else 'rest', params)
  return optax.multi_transform({'rest': make(schedule), 'target': inner}, labels)
