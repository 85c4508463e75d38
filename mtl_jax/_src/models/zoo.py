"""Every module that registers a model or a backbone, imported for its registrations.

``registry.MODELS`` and ``registry.BACKBONES`` import this module on first use.  Adding an
architecture is one new module (its builder decorated ``@registry.MODELS.register(name)``), one
import line here and its tests.
"""

# pylint: disable=unused-import
from mtl_jax._src.models import adversarial  # noqa: F401
from mtl_jax._src.models import cnn  # noqa: F401
from mtl_jax._src.models import columns  # noqa: F401
from mtl_jax._src.models import dselect_k  # noqa: F401
from mtl_jax._src.models import experts  # noqa: F401
from mtl_jax._src.models import gated_fusion  # noqa: F401
from mtl_jax._src.models import independent  # noqa: F401
from mtl_jax._src.models import lenet  # noqa: F401
from mtl_jax._src.models import mlp  # noqa: F401
from mtl_jax._src.models import mpnn  # noqa: F401
from mtl_jax._src.models import mtan  # noqa: F401
from mtl_jax._src.models import ple  # noqa: F401
from mtl_jax._src.models import resnet  # noqa: F401
from mtl_jax._src.models import shared_bottom  # noqa: F401
from mtl_jax._src.models import task_attention  # noqa: F401
from mtl_jax._src.models import transformer  # noqa: F401
