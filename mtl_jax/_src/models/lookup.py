"""Models and backbones by name, over ``registry.MODELS`` and ``registry.BACKBONES``.

A model builder has the signature ``(tasks, backbone, tower_hidden=(), dropout=0.0,
per_task_inputs=False, <own options with defaults>)``; its own options are its config block
``config.model.<name>``.  A backbone builder takes ``dropout`` and its own options
(``config.model.<backbone>``).  ``per_task_inputs`` (inputs [B, T, ...], task t's at [:, t]) is
set by the trainer from the data, never by the config.
"""

import flax.linen as nn

from mtl_jax._src import registry
from mtl_jax._src.tasks import TaskSet


def names() -> list[str]:
  """The registered models' names, sorted."""
  return registry.MODELS.names()


def backbone_names() -> list[str]:
  """The registered backbones' names, sorted."""
  return registry.BACKBONES.names()


def hyperparameters(name: str) -> dict:
  """A model's own options and their defaults (beyond ``tower_hidden``, ``dropout`` and
  ``per_task_inputs``); an unknown name raises ``ValueError``."""
  return registry.MODELS.defaults(name)


def backbone_hyperparameters(name: str) -> dict:
  """A backbone's options and their defaults (beyond ``dropout``)."""
  return registry.BACKBONES.defaults(name)


def get_backbone(name: str, **kwargs) -> nn.Module:
  """A backbone module by name (``backbone_names()`` lists them).  Bad options raise
  ``ValueError`` naming ``<backbone>.<field>``."""
  return registry.BACKBONES.build(name, **kwargs)


def get(name: str, tasks: TaskSet, backbone: nn.Module, **kwargs) -> nn.Module:
  """A multi-task model by name over ``backbone`` (``names()`` lists them).

  ``per_task_inputs=False`` is dropped (every model takes a shared input); ``True`` raises
  for a model whose builder has no ``per_task_inputs`` parameter.  Bad options raise
  ``ValueError`` naming ``<model>.<field>``."""
  if not kwargs.get('per_task_inputs', True):
    kwargs.pop('per_task_inputs')
  if 'per_task_inputs' in kwargs and 'per_task_inputs' not in registry.MODELS.parameters(name):
    raise ValueError(f'{name}.per_task_inputs: model {name!r} does not support one input per '
                     'task')
  return registry.MODELS.build(name, tasks, backbone, **kwargs)
