"""In-memory multi-task data sets and their batch iterators.

A split is ``{'inputs': [N, ...], 'labels': {task: [N, ...]}, 'masks': {task: [N]}}``
(masks optional) of numpy arrays.  ``BatchIterator`` draws a fresh permutation each epoch
from ``(seed, epoch)``, so its whole position is two integers that can be checkpointed.
"""

import dataclasses
from typing import Iterator, Mapping

import jax
import numpy as np

from mtl_jax.tasks import TaskSet


@dataclasses.dataclass
class MultiTaskDataset:
  """Named splits of arrays for a ``TaskSet``."""
  name: str
  tasks: TaskSet
  splits: Mapping[str, Mapping]

  def __post_init__(self):
    for split_name, split in self.splits.items():
      size = num_examples(split)
      self.tasks.check_batch(split)
      try:
        self.tasks.check_values(split)
      except ValueError as e:
        raise ValueError(f'data set {self.name!r}, split {split_name!r}: {e}') from None
      if size == 0:
        raise ValueError(f'data set {self.name!r}: split {split_name!r} is empty')

  def split(self, name: str) -> Mapping:
    if name not in self.splits:
      raise KeyError(f'data set {self.name!r} has no split {name!r}; splits: '
                     f'{sorted(self.splits)}')
    return self.splits[name]


def num_examples(split: Mapping) -> int:
  return int(jax.tree_util.tree_leaves(split['inputs'])[0].shape[0])


def take(split: Mapping, index) -> dict:
  """The examples ``index`` (an integer array) of a split, as a batch."""
  return jax.tree.map(lambda a: a[index], dict(split))


class BatchIterator:
  """Endless shuffled batches; ``get_state``/``set_state`` save and restore the position."""

  def __init__(self, split: Mapping, batch_size: int, seed: int, *, shuffle: bool = True):
    size = num_examples(split)
    if not 0 < batch_size <= size:
      raise ValueError(f'batch_size must be in [1, {size}] for a split of {size} examples, '
                       f'got {batch_size}')
    self._split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
    self.batches_per_epoch = size // batch_size  # the remainder of each epoch is dropped
    self._epoch, self._index = 0, 0
    self._order = self._permutation(0)

  def _permutation(self, epoch):
    size = num_examples(self._split)
    if not self.shuffle:
      return np.arange(size)
    return np.random.default_rng([self.seed, epoch]).permutation(size)

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._index == self.batches_per_epoch:
      self._epoch, self._index = self._epoch + 1, 0
      self._order = self._permutation(self._epoch)
    start = self._index * self.batch_size
    self._index += 1
    return take(self._split, self._order[start:start + self.batch_size])

  def get_state(self) -> dict:
    return {'epoch': self._epoch, 'index': self._index, 'seed': self.seed,
            'batch_size': self.batch_size}

  def set_state(self, state: Mapping) -> None:
    if (state['seed'], state['batch_size']) != (self.seed, self.batch_size):
      raise ValueError(f'iterator state for seed {state["seed"]}, batch size '
                       f'{state["batch_size"]} does not match this iterator (seed {self.seed}, '
                       f'batch size {self.batch_size})')
    self._epoch, self._index = int(state['epoch']), int(state['index'])
    self._order = self._permutation(self._epoch)


def eval_batches(split: Mapping, batch_size: int, tasks: TaskSet) -> Iterator[dict]:
  """Every example once, in order; the last batch is padded to ``batch_size`` with masks 0,

  so that one compiled eval step serves the whole split.
  """
  size = num_examples(split)
  for start in range(0, size, batch_size):
    index = np.arange(start, start + batch_size)
    valid = index < size
    batch = take(split, np.minimum(index, size - 1))
    masks = dict(batch.get('masks') or {})
    batch['masks'] = {n: (np.asarray(masks[n]).astype(bool) if n in masks else
                          np.ones(batch_size, bool)) & valid for n in tasks.names}
    yield batch
