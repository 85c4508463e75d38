"""Multi-task data sets: named splits for a ``TaskSet``.

A split is either in memory, ``{'inputs': [N, ...], 'labels': {task: [N, ...]},
'masks': {task: [N]}}`` (masks optional) of numpy arrays, or a lazy ``RecordSource`` of
records (one example each, the same layout without the batch axis), e.g. over a tfds
``data_source``.  ``take`` reads a batch from either; ``mtl_jax.data.BatchIterator`` and
``eval_batches`` iterate.

Every record is checked once by ``TaskSet.validate`` (the same check as for a hand-made
batch: label shapes, finite float inputs, masks 0 or 1, finite and in-range labels where not
masked out), with errors naming the data set, the split and the task or field: an
in-memory split whole when the ``MultiTaskDataset`` is built, a lazy split on its first
record then, and batch by batch as it is read (the data set wraps it in a ``CheckedSource``,
whose errors also name the record).  Training and
evaluation loops need no checks of their own.
"""

import dataclasses
from typing import Mapping

import jax
import numpy as np

from mtl_jax._src.data import sources
from mtl_jax._src.tasks import TaskSet


@dataclasses.dataclass
class MultiTaskDataset:
  """Named splits of arrays for a ``TaskSet``.

  ``per_task_inputs``: inputs are [N, T, ...], task t's input at [:, t] (one per task)."""
  name: str
  tasks: TaskSet
  splits: Mapping[str, Mapping]
  per_task_inputs: bool = False

  def __post_init__(self):
    splits = {}
    for split_name, split in self.splits.items():
      where = f'data set {self.name!r}, split {split_name!r}'
      while isinstance(split, sources.CheckedSource):  # re-checked for these tasks below
        split = split.source
      size = num_examples(split)
      if size == 0:
        raise ValueError(f'data set {self.name!r}: split {split_name!r} is empty')
      # A lazy split is checked on its first record here, and batch by batch when read.
      sample = take(split, np.arange(1)) if sources.is_source(split) else split
      try:
        _BatchCheck(self.tasks)(sample)
      except ValueError as e:
        raise ValueError(f'{where}: {e}') from None
      if self.per_task_inputs:
        shape = jax.tree_util.tree_leaves(sample['inputs'])[0].shape
        shape = (size,) + shape[1:]
        if len(shape) < 3 or shape[1] != len(self.tasks):
          raise ValueError(f'{where}: per-task inputs must be [N, T={len(self.tasks)}, ...], '
                           f'got {shape}')
      if sources.is_source(split):
        split = sources.CheckedSource(split, _BatchCheck(self.tasks), where)
      splits[split_name] = split
    self.splits = splits

  def split(self, name: str) -> Mapping:
    if name not in self.splits:
      raise KeyError(f'data set {self.name!r} has no split {name!r}; splits: '
                     f'{sorted(self.splits)}')
    return self.splits[name]


@dataclasses.dataclass(frozen=True)
class _BatchCheck:
  """Checks a batch against ``tasks`` with ``TaskSet.validate`` (raises ``ValueError``); a
  picklable callable, so that grain's worker processes can run it."""
  tasks: TaskSet

  def __call__(self, batch: Mapping) -> None:
    self.tasks.validate(batch)


def num_examples(split) -> int:
  if sources.is_source(split):
    return len(split)
  return int(jax.tree_util.tree_leaves(split['inputs'])[0].shape[0])


def take(split, index) -> dict:
  """The examples ``index`` (an integer array) of a split, as a batch."""
  if sources.is_source(split):
    return split.read(index)
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


def select_tasks(dataset: MultiTaskDataset, names) -> MultiTaskDataset:
  """The data set restricted to the tasks ``names`` (in that order): e.g. one task, to
  pretrain an encoder or train a single-task baseline.  Per-task inputs keep those tasks'."""
  names = tuple(names)
  unknown = [n for n in names if n not in dataset.tasks.names]
  if unknown:
    raise ValueError(f'data set {dataset.name!r} has no task(s) {unknown}; its tasks are '
                     f'{list(dataset.tasks.names)}')
  if not names or len(set(names)) != len(names):
    raise ValueError(f'data set {dataset.name!r}: tasks must be distinct names among '
                     f'{list(dataset.tasks.names)}, got {list(names)}')
  index = np.array([dataset.tasks.index(n) for n in names])

  def restrict(split):
    split = dict(split)
    split['labels'] = {n: split['labels'][n] for n in names}
    if 'masks' in split:
      split['masks'] = {n: m for n, m in split['masks'].items() if n in names}
    if dataset.per_task_inputs:
      split['inputs'] = jax.tree.map(lambda a: a[:, index], split['inputs'])
    return split

  splits = {}
  for split_name, split in dataset.splits.items():
    if sources.is_source(split):
      # Records carry no batch axis: per-task inputs are [T, ...], restrict then re-index.
      def restrict_record(record, restrict=restrict):
        batched = restrict(jax.tree.map(lambda a: np.asarray(a)[None], record))
        return jax.tree.map(lambda a: a[0], batched)
      splits[split_name] = sources.RecordSource(split, restrict_record, split.name)
    else:
      splits[split_name] = restrict(split)
  return MultiTaskDataset(dataset.name, TaskSet([dataset.tasks[n] for n in names]), splits,
                          per_task_inputs=dataset.per_task_inputs)
