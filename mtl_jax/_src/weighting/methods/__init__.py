"""The weighting methods, one module each; importing this package registers them all.

Adding a method: a module here whose builder is decorated
``@registry.WEIGHTINGS.register('<name>')``, one import line below, and its tests.
"""

# pylint: disable=unused-import
from mtl_jax._src.weighting.methods import aligned_mtl
from mtl_jax._src.weighting.methods import cagrad
from mtl_jax._src.weighting.methods import dualproj
from mtl_jax._src.weighting.methods import dwa
from mtl_jax._src.weighting.methods import ew
from mtl_jax._src.weighting.methods import famo
from mtl_jax._src.weighting.methods import gls
from mtl_jax._src.weighting.methods import gradnorm
from mtl_jax._src.weighting.methods import imtl_g
from mtl_jax._src.weighting.methods import mgda
from mtl_jax._src.weighting.methods import nash_mtl
from mtl_jax._src.weighting.methods import pcgrad
from mtl_jax._src.weighting.methods import rlw
from mtl_jax._src.weighting.methods import si
from mtl_jax._src.weighting.methods import static
from mtl_jax._src.weighting.methods import upgrad
from mtl_jax._src.weighting.methods import uw
