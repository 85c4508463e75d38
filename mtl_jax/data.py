"""Multi-task data sets, the grain input pipeline and the data-set registry.

Data sets: ``load(name, seed=..., **options)`` builds a registered data set ('synthetic',
'multimnist', 'celeb_a', 'census_income'; ``names()``), ``options(name)`` lists its options and
their defaults (its config block, ``config.data.<name>``), ``register(name)`` adds one.  A
``MultiTaskDataset`` has named splits: arrays in memory or a lazy ``RecordSource``; every
record is checked once (in memory: when the data set is built; lazy: as batches are read).

Pipeline: ``BatchIterator`` (shuffled training batches with a resumable state) and
``eval_batches`` (every example once, padded); ``take`` reads a batch from a split.
"""

from mtl_jax._src.data.dataset import MultiTaskDataset
from mtl_jax._src.data.dataset import num_examples
from mtl_jax._src.data.dataset import select_tasks
from mtl_jax._src.data.dataset import take
from mtl_jax._src.data.dataset import with_all_masks
from mtl_jax._src.data.multimnist import make_multimnist
from mtl_jax._src.data.pipeline import BatchIterator
from mtl_jax._src.data.pipeline import eval_batches
from mtl_jax._src.data.registry import load
from mtl_jax._src.data.registry import names
from mtl_jax._src.data.registry import options
from mtl_jax._src.data.registry import register
from mtl_jax._src.data.sources import CheckedSource
from mtl_jax._src.data.sources import RecordSource
from mtl_jax._src.data.sources import stack
from mtl_jax._src.data.synthetic import make_synthetic

__all__ = (
    'BatchIterator',
    'CheckedSource',
    'MultiTaskDataset',
    'RecordSource',
    'eval_batches',
    'load',
    'make_multimnist',
    'make_synthetic',
    'names',
    'num_examples',
    'options',
    'register',
    'select_tasks',
    'stack',
    'take',
    'with_all_masks',
)
