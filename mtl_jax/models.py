"""Multi-task models (flax.linen) over any backbone, by name."""

from mtl_jax._src.models import *  # noqa: F401,F403  (temporary; replaced by explicit names)
from mtl_jax._src.models import __all__  # noqa: F401
