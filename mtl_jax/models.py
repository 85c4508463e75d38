"""Multi-task models (flax.linen) over any backbone, by name.

Every model's parameters split into ``params['shared']`` (``SHARED``: parameters on which more
than one task's loss depends) and ``params['task']`` (``TASK``: task-specific);
``model.apply(variables, inputs, train)`` returns ``{task: [B, out_dim]}``.  Models with a
representation split also define ``representation(x)`` (shared parameters only) and
``heads(z, train, stacked, inputs)`` (task parameters only).

* ``get(name, tasks, backbone, **options)``, ``names()``, ``hyperparameters(name)``: the
  models; ``get_backbone``, ``backbone_names``, ``backbone_hyperparameters``: the backbones.
* ``register(name)`` / ``register_backbone(name)``: decorators that add a builder
  ``(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False, **own options)`` /
  ``(dropout=0.0, **own options)``; its keyword defaults become its config block.
* Building blocks: ``TaskHeads`` (vmapped towers per task group), ``Stacked`` (n vmapped copies
  of a module), the backbone stage protocol (``Hook``, ``run_hook``, ``resolve_stages``) and
  the option checks (``check``, ``check_widths``).
"""

from mtl_jax._src import registry as _registry
from mtl_jax._src.models.adversarial import AdversarialSharedPrivate
from mtl_jax._src.models.cnn import SmallCNN
from mtl_jax._src.models.columns import ColumnModel
from mtl_jax._src.models.common import SHARED, TASK, check, check_widths
from mtl_jax._src.models.dselect_k import DSelectK
from mtl_jax._src.models.experts import MMoE
from mtl_jax._src.models.gated_fusion import GatedFusion
from mtl_jax._src.models.heads import StackedTowers, TaskHeads, Tower
from mtl_jax._src.models.independent import Independent
from mtl_jax._src.models.lenet import LeNet
from mtl_jax._src.models.lookup import (backbone_hyperparameters, backbone_names, get,
                                        get_backbone, hyperparameters, names)
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.mtan import MTAN
from mtl_jax._src.models.ple import PLE
from mtl_jax._src.models.resnet import ResNet
from mtl_jax._src.models.shared_bottom import SharedBottom
from mtl_jax._src.models.stacked import Stacked
from mtl_jax._src.models.stages import Hook, resolve_stages, run_hook
from mtl_jax._src.models.task_attention import TaskAttention
from mtl_jax._src.models.transformer import TransformerEncoder

register = _registry.MODELS.register
register_backbone = _registry.BACKBONES.register

__all__ = [
    # models
    'AdversarialSharedPrivate', 'ColumnModel', 'DSelectK', 'GatedFusion', 'Independent',
    'MMoE', 'MTAN', 'PLE', 'SharedBottom', 'TaskAttention',
    # backbones
    'LeNet', 'MLP', 'ResNet', 'SmallCNN', 'TransformerEncoder',
    # building blocks
    'Hook', 'Stacked', 'StackedTowers', 'TaskHeads', 'Tower', 'check', 'check_widths',
    'resolve_stages', 'run_hook', 'SHARED', 'TASK',
    # by name
    'backbone_hyperparameters', 'backbone_names', 'get', 'get_backbone', 'hyperparameters',
    'names', 'register', 'register_backbone',
]
