"""Multi-task models (flax.linen).

Every model's parameters split into two top-level subtrees: ``'shared'`` (used by all tasks)
and ``'task'`` (task-specific).  ``model.apply(variables, inputs, train)`` returns predictions
``{task: [B, out_dim]}``.
"""

from typing import Callable

import flax.linen as nn

from mtl_jax.models.heads import StackedTowers, TaskHeads, Tower
from mtl_jax.models.mlp import MLP
from mtl_jax.models.shared_bottom import SharedBottom
from mtl_jax.tasks import TaskSet

SHARED, TASK = 'shared', 'task'


def _mlp_backbone(hidden=(64,), dropout=0.0):
  return MLP(tuple(hidden), dropout=dropout)


_BACKBONES: dict[str, Callable[..., nn.Module]] = {'mlp': _mlp_backbone}


def _shared_bottom(tasks, backbone, tower_hidden=(), dropout=0.0):
  return SharedBottom(shared=backbone, task=TaskHeads(tasks, tuple(tower_hidden), dropout))


_MODELS: dict[str, Callable[..., nn.Module]] = {'shared_bottom': _shared_bottom}


def backbone_names() -> list[str]:
  return sorted(_BACKBONES)


def names() -> list[str]:
  return sorted(_MODELS)


def _call(kind, registry, name, kwargs, *args):
  if name not in registry:
    raise ValueError(f'unknown {kind} {name!r}; available: {sorted(registry)}')
  try:
    return registry[name](*args, **kwargs)
  except TypeError as e:
    raise TypeError(f'{kind} {name!r}: bad options {sorted(kwargs)}: {e}') from None


def get_backbone(name: str, **kwargs) -> nn.Module:
  """A backbone module by name (``backbone_names()`` lists them)."""
  return _call('backbone', _BACKBONES, name, kwargs)


def get(name: str, tasks: TaskSet, backbone: nn.Module, **kwargs) -> nn.Module:
  """A multi-task model by name over ``backbone`` (``names()`` lists them)."""
  return _call('model', _MODELS, name, kwargs, tasks, backbone)


__all__ = ['MLP', 'SHARED', 'TASK', 'SharedBottom', 'StackedTowers', 'TaskHeads', 'Tower',
           'backbone_names', 'get', 'get_backbone', 'names']
