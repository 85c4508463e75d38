"""Multi-task models (flax.linen) over any backbone.

Every model's parameters split into two top-level subtrees: ``'shared'`` (parameters on which
more than one task's loss depends) and ``'task'`` (task-specific).
``model.apply(variables, inputs, train)`` returns predictions ``{task: [B, out_dim]}``.
Models may add auxiliary losses with ``self.sow('aux_loss', name, value)``; the train step
adds them to the objective with weight 1 (outside the weighting).

Backbones follow the stage protocol of ``mtl_jax.models.stages``.
"""

import inspect
from typing import Callable

import flax.linen as nn

from mtl_jax._src.models import (adversarial, cnn, columns, experts, gated_fusion, lenet, mtan,
                            task_attention, transformer)
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.heads import StackedTowers, TaskHeads, Tower
from mtl_jax._src.models.independent import Independent, IndependentColumns
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.shared_bottom import SharedBottom
from mtl_jax._src.models.stacked import Stacked
from mtl_jax._src.models.stages import resolve_stages
from mtl_jax._src.tasks import TaskSet

SHARED, TASK = 'shared', 'task'


def _mlp_backbone(hidden=(64,), dropout=0.0):
  return MLP(check_widths('mlp.hidden', hidden), dropout=dropout)


_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    'mlp': _mlp_backbone, **cnn.BUILDERS, **lenet.BUILDERS, **transformer.BUILDERS}


def _heads(tasks, tower_hidden, dropout):
  return TaskHeads(tasks, tuple(tower_hidden), dropout)


def _shared_bottom(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False):
  return SharedBottom(shared=backbone, task=_heads(tasks, tower_hidden, dropout),
                      per_task_inputs=per_task_inputs)


def _independent(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False):
  return Independent(task=IndependentColumns(backbone, _heads(tasks, tower_hidden, dropout),
                                             len(tasks), per_task_inputs))


# name -> builder(tasks, backbone, tower_hidden=(), dropout=0.0, **options); each family's
# module exports BUILDERS, its builders' options (keyword defaults) are its config block.
_MODELS: dict[str, Callable[..., nn.Module]] = {
    'shared_bottom': _shared_bottom,
    'independent': _independent,
    **experts.BUILDERS,
    **columns.BUILDERS,
    **mtan.BUILDERS,
    **task_attention.BUILDERS,
    **gated_fusion.BUILDERS,
    **adversarial.BUILDERS,
}
# Options every builder may take that are not config-block options: ``per_task_inputs``
# (set by the trainer from the data: inputs [B, T, ...], task t's input at [:, t]).
_COMMON = ('tower_hidden', 'dropout', 'per_task_inputs')


def backbone_names() -> list[str]:
  return sorted(_BACKBONES)


def names() -> list[str]:
  return sorted(_MODELS)


def _options(registry, name, skip):
  return {k: p.default for k, p in inspect.signature(registry[name]).parameters.items()
          if p.default is not inspect.Parameter.empty and k not in skip}


def hyperparameters(name: str) -> dict:
  """A model's own options and their defaults (beyond ``tower_hidden`` and ``dropout``)."""
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; available: {names()}')
  return _options(_MODELS, name, _COMMON)


def backbone_hyperparameters(name: str) -> dict:
  """A backbone's options and their defaults (beyond ``dropout``)."""
  if name not in _BACKBONES:
    raise ValueError(f'unknown backbone {name!r}; available: {backbone_names()}')
  return _options(_BACKBONES, name, ('dropout',))


def _call(kind, registry, name, kwargs, *args):
  if name not in registry:
    raise ValueError(f'unknown {kind} {name!r}; available: {sorted(registry)}')
  known = set(inspect.signature(registry[name]).parameters)
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise TypeError(f'{name}.{unknown[0]}: unknown option of {kind} {name!r} (it takes '
                    f'{sorted(known - {"tasks", "backbone"})})')
  return registry[name](*args, **kwargs)


def get_backbone(name: str, **kwargs) -> nn.Module:
  """A backbone module by name (``backbone_names()`` lists them)."""
  return _call('backbone', _BACKBONES, name, kwargs)


def get(name: str, tasks: TaskSet, backbone: nn.Module, **kwargs) -> nn.Module:
  """A multi-task model by name over ``backbone`` (``names()`` lists them).

  Bad options raise ``ValueError``/``TypeError`` naming ``<model>.<field>``."""
  if not kwargs.get('per_task_inputs', True):
    kwargs.pop('per_task_inputs')
  if 'per_task_inputs' in kwargs and 'per_task_inputs' not in inspect.signature(
      _MODELS.get(name, lambda: None)).parameters:
    raise ValueError(f'{name}.per_task_inputs: model {name!r} does not support one input per '
                     'task')
  return _call('model', _MODELS, name, kwargs, tasks, backbone)


__all__ = ['Independent', 'check', 'check_widths', 'MLP', 'SHARED', 'Stacked', 'SharedBottom', 'StackedTowers', 'TASK',
           'TaskHeads', 'Tower', 'backbone_hyperparameters', 'backbone_names', 'get',
           'get_backbone', 'hyperparameters', 'names', 'resolve_stages']
