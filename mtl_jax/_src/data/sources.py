"""Random-access sources of multi-task records, read lazily (e.g. a tfds ``data_source``).

A *record* is one example in the batch layout without the batch axis:

    {'inputs': array or pytree, 'labels': {task: array}, 'masks': {task: bool}}

``RecordSource`` wraps any random-access source (``len`` and ``[i]``: a tfds
``data_source``, an ``array_record`` file, a list) with a transform from its raw examples to
records.  Every read error names the source and the record, and ``stack`` names the field and
record whose shape differs from the others.  ``CheckedSource`` checks every batch it reads
(a ``MultiTaskDataset`` wraps its lazy splits in one, so records are checked as the pipeline
reads them) and names the first bad record.
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np


class RecordSource:
  """``transform(source[i])`` for every index ``i``: a lazy split of a multi-task data set.

  Args:
    source: random-access examples (``__len__``, ``__getitem__``).
    transform: raw example -> record; raises ``ValueError``/``KeyError`` on bad examples.
    name: used in error messages, e.g. ``'celeb_a/train'``.
  """

  def __init__(self, source: Sequence, transform: Callable[[Any], dict], name: str):
    self.source, self.transform, self.name = source, transform, name

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if isinstance(self.source, RecordSource):  # its own errors already name the record
      raw = self.source[index]
    else:
      try:
        raw = self.source[index]
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'{self.name}: cannot read record {index} (corrupt or truncated '
                         f'file?): {type(e).__name__}: {e}') from e
    try:
      return self.transform(raw)
    except (ValueError, KeyError, TypeError, IndexError) as e:
      raise ValueError(f'{self.name}, record {index}: {e}') from e

  def read(self, indices) -> dict:
    """The records ``indices`` stacked into a batch (one batched read where the source has
    ``__getitems__``, as tfds's array_record sources do)."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    records = None
    if hasattr(self.source, '__getitems__') and not isinstance(self.source, RecordSource):
      try:
        raws = self.source.__getitems__(indices)
      except Exception:  # pylint: disable=broad-except
        raws = None      # fall back to record-by-record reads, which name the bad record
      if raws is not None:
        records = []
        for index, raw in zip(indices, raws):
          try:
            records.append(self.transform(raw))
          except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f'{self.name}, record {index}: {e}') from e
    if records is None:
      records = [self[i] for i in indices]
    return stack(records, self.name, indices)

  def __repr__(self):
    return f'RecordSource({self.name!r}, {len(self)} records)'


def _identity(record):
  return record


class CheckedSource(RecordSource):
  """``source`` (a ``RecordSource``) whose batches pass ``check`` when read.

  ``check(batch)`` raises ``ValueError`` on a bad batch; the batch is then checked record by
  record and the error names the first bad one: ``'{where}, record {index}: {error}'``.
  Single records (``source[i]``) are not checked: the pipeline reads batches (``read``).

  Args:
    source: the lazy split.
    check: batch -> None, raises ``ValueError`` naming the task or field.
    where: used in error messages, e.g. ``"data set 'celeb_a', split 'train'"``.
  """

  def __init__(self, source: RecordSource, check: Callable[[dict], None], where: str):
    super().__init__(source, _identity, getattr(source, 'name', where))
    self.check, self.where = check, where

  def read(self, indices) -> dict:
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    batch = self.source.read(indices)
    try:
      self.check(batch)
    except ValueError as error:
      for row, index in enumerate(indices):  # name the first bad record
        try:
          self.check(jax.tree.map(lambda a, row=row: a[row:row + 1], batch))
        except ValueError as e:
          raise ValueError(f'{self.where}, record {index}: {e}') from None
      raise ValueError(f'{self.where}, records {indices}: {error}') from None
    return batch

  def __repr__(self):
    return f'CheckedSource({self.name!r}, {len(self)} records)'


def stack(records: Sequence[Mapping], name: str = 'records',
          indices: Optional[Sequence[int]] = None) -> dict:
  """Stacks records into a batch; a field whose shape or structure differs from the first
  record's raises an error naming the field and the record."""
  if not len(records):
    raise ValueError(f'{name}: no records to stack')
  indices = list(range(len(records))) if indices is None else [int(i) for i in indices]
  first = jax.tree_util.tree_flatten_with_path(records[0])
  first_paths = [jax.tree_util.keystr(p) for p, _ in first[0]]
  first_shapes = [np.shape(v) for _, v in first[0]]
  for index, record in zip(indices[1:], records[1:]):
    leaves = jax.tree_util.tree_flatten_with_path(record)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    if paths != first_paths:
      raise ValueError(f'{name}, record {index}: fields {paths} differ from record '
                       f'{indices[0]}\'s {first_paths}')
    for path, (_, value), shape in zip(paths, leaves, first_shapes):
      if np.shape(value) != shape:
        raise ValueError(f'{name}, record {index}: field {path} has shape {np.shape(value)}, '
                         f'expected {shape} (as record {indices[0]})')
  return jax.tree.map(lambda *xs: np.stack(xs), *records)


def is_source(split) -> bool:
  """True for a lazy split (records read on demand), False for a dict of arrays."""
  return not isinstance(split, Mapping)
