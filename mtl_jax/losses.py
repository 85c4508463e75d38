"""Per-sample losses ``(prediction, label) -> [B]`` and the masked mean over labelled samples."""

from mtl_jax._src.losses import (absolute_error, masked_mean, sigmoid_cross_entropy,
                                 softmax_cross_entropy, squared_error)

__all__ = ['absolute_error', 'masked_mean', 'sigmoid_cross_entropy', 'softmax_cross_entropy',
           'squared_error']
