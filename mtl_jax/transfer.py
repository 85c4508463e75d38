"""Transfer learning: graft pretrained parameters, freeze them or scale their learning rate."""

from mtl_jax._src.transfer import (frozen_mask, graft, load_params, partition_optimizer,
                                   subtree)

__all__ = ['frozen_mask', 'graft', 'load_params', 'partition_optimizer', 'subtree']
