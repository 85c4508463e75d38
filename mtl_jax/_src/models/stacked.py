"""``Stacked``: T (or n) copies of any module, parameters stacked on a leading axis.

The copies run as one vmapped module (``nn.vmap``), so compile time does not grow with their
number.  Inside a copy, ``jax.lax.axis_index(axis_name)`` is its index and collectives over
``axis_name`` (``all_gather``, ``psum``) exchange activations between copies: cross-stitch
mixing and residual links between task columns are written this way.
"""

from typing import Optional

import flax.linen as nn

# Collections that hold one value per copy (auxiliary losses sown inside a copy included).
STACKED_COLLECTIONS = {'params': 0, 'batch_stats': 0, 'aux_loss': 0}


class Stacked(nn.Module):
  """``num`` copies of ``module``; output with a leading axis of size ``num``.

  ``in_axis`` None: every copy reads the same ``x``; 0: copy i reads ``x[i]``.  Extra
  positional arguments are shared by all copies; keyword arguments (e.g. ``train``,
  ``hook``) are passed through unchanged.
  """
  module: nn.Module
  num: int
  in_axis: Optional[int] = None
  axis_name: str = 'copy'

  @nn.compact
  def __call__(self, x, *args, **kwargs):
    def call(module, x, *args):
      return module(x, *args, **kwargs)

    vmapped = nn.vmap(call, in_axes=(self.in_axis,) + (None,) * len(args), out_axes=0,
                      variable_axes=STACKED_COLLECTIONS,
                      split_rngs={'params': True, 'dropout': True},
                      axis_size=self.num, axis_name=self.axis_name)
    return vmapped(self.module, x, *args)
