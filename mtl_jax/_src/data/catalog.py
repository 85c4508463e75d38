"""Every data-set module, imported for its ``@registry.DATASETS.register(...)`` builder.

``registry.DATASETS`` imports this module the first time a data set is looked up, so that
``import mtl_jax`` stays light (no tensorflow_datasets).  Adding a data set: one module in
``mtl_jax/_src/data/`` that registers its builder, one import line here, and its tests.
"""

# pylint: disable=unused-import
from mtl_jax._src.data import celeb_a
from mtl_jax._src.data import census_income
from mtl_jax._src.data import multimnist
from mtl_jax._src.data import qm9
from mtl_jax._src.data import synthetic
