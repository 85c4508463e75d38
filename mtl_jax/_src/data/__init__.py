"""Multi-task data: data sets (in memory or lazy sources), the grain pipeline, loaders."""

from mtl_jax._src.data import loaders
from mtl_jax._src.data.dataset import (MultiTaskDataset, num_examples, select_tasks, take,
                                  with_all_masks)
from mtl_jax._src.data.pipeline import BatchIterator, eval_batches
from mtl_jax._src.data.sources import RecordSource, stack
from mtl_jax._src.data.synthetic import make_synthetic

__all__ = ['BatchIterator', 'loaders', 'MultiTaskDataset', 'RecordSource', 'eval_batches',
           'make_synthetic', 'num_examples', 'select_tasks', 'stack', 'take', 'with_all_masks']
