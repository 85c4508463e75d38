"""Multi-task data sets, the grain pipeline and the data-set registry."""

from mtl_jax._src.data import *  # noqa: F401,F403  (temporary; replaced by explicit names)
from mtl_jax._src.data import __all__  # noqa: F401
