"""Multi-task data: data sets (in memory or lazy sources), the grain pipeline, the registry.

Importing this package registers 'synthetic' (and 'multimnist', whose builder is public);
``registry.DATASETS`` imports ``catalog`` (every data-set module) on first lookup.
"""

from mtl_jax._src.data.dataset import (MultiTaskDataset, num_examples, select_tasks, take,
                                       with_all_masks)
from mtl_jax._src.data.multimnist import make_multimnist
from mtl_jax._src.data.pipeline import BatchIterator, eval_batches
from mtl_jax._src.data.registry import load, names, options, register
from mtl_jax._src.data.sources import CheckedSource, RecordSource, stack
from mtl_jax._src.data.synthetic import make_synthetic

__all__ = ['BatchIterator', 'CheckedSource', 'MultiTaskDataset', 'RecordSource', 'eval_batches',
           'load', 'make_multimnist', 'make_synthetic', 'names', 'num_examples', 'options',
           'register', 'select_tasks', 'stack', 'take', 'with_all_masks']
