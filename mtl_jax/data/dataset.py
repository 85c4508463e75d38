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
  """Named splits of arrays for a ``TaskSet``.

  ``per_task_inputs``: inputs are [N, T, ...], task t's input at [:, t] (one per task)."""
  name: str
  tasks: TaskSet
  splits: Mapping[str, Mapping]
  per_task_inputs: bool = False

  def __post_init__(self):
    for split_name, split in self.splits.items():
      size = num_examples(split)
      try:
        self.tasks.check_batch(split)
        self.tasks.check_values(split)
      except ValueError as e:
        raise ValueError(f'data set {self.name!r}, split {split_name!r}: {e}') from None
      if size == 0:
        raise ValueError(f'data set {self.name!r}: split {split_name!r} is empty')
      if self.per_task_inputs:
        shape = jax.tree_util.tree_leaves(split['inputs'])[0].shape
        if len(shape) < 3 or shape[1] != len(self.tasks):
          raise ValueError(f'data set {self.name!r}, split {split_name!r}: per-task inputs '
                           f'must be [N, T={len(self.tasks)}, ...], got {shape}')

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


def with_all_masks(batch: Mapping) -> dict:
  """The batch with a mask for every labelled task (ones where none was given), so that every
  batch of a data set has the same pytree structure."""
  batch = dict(batch)
  masks = dict(batch.get('masks') or {})
  for name, label in batch['labels'].items():
    if name not in masks:
      masks[name] = np.ones(len(label), bool)
  batch['masks'] = masks
  return batch


class BatchIterator:
  """Endless shuffled batches; ``get_state``/``set_state`` save and restore the position.

  ``batch_size`` is the global batch.  With ``process_count > 1`` every process draws the same
  global batch and yields its own contiguous ``batch_size / process_count`` rows of it.
  """

  def __init__(self, split: Mapping, batch_size: int, seed: int, *, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1):
    size = num_examples(split)
    if not 0 < batch_size <= size:
      raise ValueError(f'batch_size must be in [1, {size}] for a split of {size} examples, '
                       f'got {batch_size}')
    if batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f'batch_size {batch_size} must split evenly over {process_count} '
                       f'processes (process_index {process_index})')
    self._split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
    self._local = slice(process_index * batch_size // process_count,
                        (process_index + 1) * batch_size // process_count)
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
    if self._index >= self.batches_per_epoch:
      self._epoch, self._index = self._epoch + 1, 0
      self._order = self._permutation(self._epoch)
    start = self._index * self.batch_size
    self._index += 1
    rows = self._order[start:start + self.batch_size][self._local]
    return with_all_masks(take(self._split, rows))

  def get_state(self) -> dict:
    return {'epoch': self._epoch, 'index': self._index, 'seed': self.seed,
            'batch_size': self.batch_size, 'num_examples': num_examples(self._split)}

  def set_state(self, state: Mapping) -> None:
    mine = self.get_state()
    changed = [k for k in ('seed', 'batch_size', 'num_examples') if state.get(k) != mine[k]]
    if changed:
      raise ValueError('iterator state does not match this iterator: ' + ', '.join(
          f'{k} {state.get(k)} != {mine[k]}' for k in changed))
    self._epoch, self._index = int(state['epoch']), int(state['index'])
    self._order = self._permutation(self._epoch)


def eval_batches(split: Mapping, batch_size: int, tasks: TaskSet, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Every example once, in order; the last batch is padded to ``batch_size`` with masks 0,
  so that one compiled eval step serves the whole split.  With ``process_count > 1`` each
  process yields its contiguous ``batch_size / process_count`` rows of every global batch.
  """
  size = num_examples(split)
  local = batch_size // process_count
  for start in range(0, size, batch_size):
    index = np.arange(start, start + batch_size)[process_index * local:(process_index + 1) * local]
    valid = index < size
    batch = with_all_masks(take(split, np.minimum(index, size - 1)))
    batch['masks'] = {n: np.asarray(batch['masks'][n]).astype(bool) & valid
                      for n in tasks.names}
    yield batch


def select_tasks(dataset: MultiTaskDataset, names) -> MultiTaskDataset:
  """The data set restricted to the tasks ``names`` (in that order): e.g. one task, to
  pretrain an encoder or train a single-task baseline.  Per-task inputs keep those tasks'."""
  names = tuple(names)
  unknown = [n for n in names if n not in dataset.tasks.names]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f'data set {dataset.name!r}: tasks must be distinct names among '
                     f'{list(dataset.tasks.names)}, got {list(names)}')
  index = np.array([dataset.tasks.index(n) for n in names])
  splits = {}
  for split_name, split in dataset.splits.items():
    split = dict(split)
    split['labels'] = {n: split['labels'][n] for n in names}
    if 'masks' in split:
      split['masks'] = {n: m for n, m in split['masks'].items() if n in names}
    if dataset.per_task_inputs:
      split['inputs'] = jax.tree.map(lambda a: a[:, index], split['inputs'])
    splits[split_name] = split
  return MultiTaskDataset(dataset.name, TaskSet([dataset.tasks[n] for n in names]), splits,
                          per_task_inputs=dataset.per_task_inputs)
