"""Multi-task data: in-memory data sets, batch iterators, generators."""

from mtl_jax.data.dataset import (BatchIterator, MultiTaskDataset, eval_batches, num_examples,
                                  select_tasks, take, with_all_masks)
from mtl_jax.data.synthetic import make_synthetic

__all__ = ['BatchIterator', 'MultiTaskDataset', 'eval_batches', 'make_synthetic',
           'num_examples', 'select_tasks', 'take', 'with_all_masks']
