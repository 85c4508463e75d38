"""Multi-task models (flax.linen) over any backbone (implementation of ``mtl_jax.models``).

Every model's parameters split into two top-level subtrees: ``'shared'`` (parameters on which
more than one task's loss depends) and ``'task'`` (task-specific).
``model.apply(variables, inputs, train)`` returns predictions ``{task: [B, out_dim]}``.
Models may add auxiliary losses with ``self.sow('aux_loss', name, value)``; the train step
adds them to the objective with weight 1 (outside the weighting).

Each architecture registers its builder where it is defined (``registry.MODELS``,
``registry.BACKBONES``); ``zoo`` imports every such module.  Backbones follow the stage
protocol of ``stages``.  The names below are the lookups the trainer uses.
"""

from mtl_jax._src.models.common import SHARED, TASK
from mtl_jax._src.models.lookup import (backbone_hyperparameters, backbone_names, get,
                                        get_backbone, hyperparameters, names)

__all__ = ['SHARED', 'TASK', 'backbone_hyperparameters', 'backbone_names', 'get',
           'get_backbone', 'hyperparameters', 'names']
