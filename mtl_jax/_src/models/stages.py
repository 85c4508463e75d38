"""The backbone protocol: named stages with a hook after each.

Every backbone is a flax module with

* ``stage_names``: a tuple of names, known before ``init`` (e.g. ``('layer0', 'layer1')``);
* ``__call__(x, train=False, hook=None)``: after stage ``name`` produces ``h``, the backbone
  continues with ``hook(name, h)`` (``h`` itself if ``hook`` is None).

Architectures that act between stages (cross-stitch mixing, MTAN attention masks, residual
links between task columns) do it through the hook, so they work over any backbone.
"""

from typing import Callable, Optional, Sequence

import jax

Hook = Callable[[str, jax.Array], jax.Array]


def run_hook(hook: Optional[Hook], name: str, h: jax.Array) -> jax.Array:
  return h if hook is None else hook(name, h)


def resolve_stages(module: str, field: str, selected, available: Sequence[str]) -> tuple:
  """``selected`` ('all', 'last', a name or a sequence of names) as a tuple of stage names;
  an unknown name raises an error naming ``module.field`` and the available stages."""
  if isinstance(selected, str):
    if selected == 'all':
      return tuple(available)
    if selected == 'last':
      return tuple(available[-1:])
    selected = (selected,)
  selected = tuple(selected)
  unknown = [s for s in selected if s not in available]
  if unknown:
    raise ValueError(f'{module}.{field}: unknown stage {unknown[0]!r}; the backbone has '
                     f'{list(available)}')
  return selected
