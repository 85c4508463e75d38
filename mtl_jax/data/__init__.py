"""Multi-task data: data sets (in memory or lazy sources), the grain pipeline, loaders."""

from mtl_jax.data import loaders
from mtl_jax.data.dataset import (MultiTaskDataset, num_examples, select_tasks, take,
                                  with_all_masks)
from mtl_jax.data.pipeline import BatchIterator, eval_batches
from mtl_jax.data.sources import RecordSource, stack
from mtl_jax.data.synthetic import make_synthetic

__all__ = ['BatchIterator', 'loaders', 'MultiTaskDataset', 'RecordSource', 'eval_batches',
           'make_synthetic', 'num_examples', 'select_tasks', 'stack', 'take', 'with_all_masks']
