"""The input pipeline, on grain, over any split: in-memory arrays or a lazy ``RecordSource``.

Training batches (``BatchIterator``)::

    range(N)[process shard] -> shuffle(a NumPy permutation drawn from (seed, epoch))
        -> batch(B / processes, drop_remainder=True) -> repeat(num_epochs) -> read

The pipeline runs over example *indices*; ``read`` gathers a whole batch at once (one fancy
index of the arrays, or the records of a source, stacked).  Each process reads a disjoint
``1 / process_count`` share of the examples (multi-host data parallelism), and its position
a small dict that the checkpoints store as JSON (grain's iterator state where grain reads:
records, or worker processes; in-memory arrays are read directly, with no per-batch overhead,
which matters with one iterator per vmapped seed).

Evaluation batches (``eval_batches``) visit every example once, in order, the last batch
padded with masks 0, so that one compiled eval step serves a whole split.

Checks: the splits of a ``MultiTaskDataset`` need none here.  Its in-memory splits were
checked whole (``TaskSet.validate``) when it was built, and its lazy splits are
``CheckedSource``s, which validate every batch as it is read (in the worker processes, if any)
and raise naming the data set, the split, the record and the task or field, e.g.
``data set 'celeb_a', split 'train', record 1234: task 'Male': binary labels must be in
[0, 1], ...``.
"""

from typing import Iterator, Mapping, Optional

from absl import flags
import grain
import numpy as np

from mtl_jax._src.data import sources
from mtl_jax._src.data.dataset import num_examples, take, with_all_masks
from mtl_jax._src.tasks import TaskSet


class BatchIterator:
  """Endless (or ``num_epochs``) shuffled training batches; ``get_state``/``set_state``.

  Args:
    split: a split (arrays or ``RecordSource``).
    batch_size: the global batch; each of ``process_count`` processes yields
      ``batch_size / process_count`` rows from its own share of the examples.
    seed: the shuffle seed (epoch e uses a permutation drawn from (seed, e)).
    shuffle: False for the examples in order.
    num_epochs: None for endless batches.
    worker_count: > 0 reads batches in that many worker processes (grain multiprocessing;
      worth it for sources that decode images), 0 in this process.
  """

  def __init__(self, split, batch_size: int, seed: int, *, shuffle: bool = True,
               num_epochs: Optional[int] = None, process_index: int = 0,
               process_count: int = 1, worker_count: int = 0):
    size = num_examples(split)
    if batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f'batch_size {batch_size} must split evenly over {process_count} '
                       f'processes (process_index {process_index})')
    local_size = size // process_count
    local_batch = batch_size // process_count
    if not 0 < local_batch <= local_size:
      raise ValueError(f'batch_size must be in [1, {local_size * process_count}] for a split '
                       f'of {size} examples over {process_count} process(es), got {batch_size}')
    self.batch_size, self.seed = batch_size, seed
    self.batches_per_epoch = local_size // local_batch  # each epoch's remainder is dropped
    self._identity = {'seed': seed, 'batch_size': batch_size, 'num_examples': size,
                      'process_count': process_count, 'shuffle': shuffle}
    self._batches = _IndexBatches(np.arange(local_size * process_count)[process_index::
                                                                       process_count],
                                  local_batch, seed, shuffle, num_epochs)
    read = lambda index: with_all_masks(take(split, index))
    self._read, self._position = read, 0
    self._iterator = None                   # in-memory arrays, no workers: read directly
    if worker_count:
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, pytest)
        flags.FLAGS.mark_as_parsed()
      self._iterator = iter(grain.MapDataset.source(self._batches).map(read).to_iter_dataset()
                            .mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count)))
    elif sources.is_source(split):          # records: grain's threads read ahead
      self._iterator = iter(grain.MapDataset.source(self._batches).map(read))

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._iterator is not None:
      return next(self._iterator)
    if self._position >= len(self._batches):
      raise StopIteration
    batch = self._read(self._batches[self._position])
    self._position += 1
    return batch

  def get_state(self) -> dict:
    """The position (grain's iterator state) and what it is valid for; JSON-serialisable."""
    position = ({'next_index': self._position} if self._iterator is None
                else self._iterator.get_state())
    return {**self._identity, 'grain': position}

  def set_state(self, state: Mapping) -> None:
    changed = [k for k, v in self._identity.items() if state.get(k) != v]
    if changed:
      raise ValueError('iterator state does not match this iterator: ' + ', '.join(
          f'{k} {state.get(k)} != {self._identity[k]}' for k in changed))
    if self._iterator is None:
      self._position = int(state['grain']['next_index'])
    else:
      self._iterator.set_state(state['grain'])


class _IndexBatches:
  """The example indices of batch k of the stream (a grain ``MapDataset`` source): epoch
  ``k // per_epoch`` is a permutation of ``indices`` drawn from NumPy's generator seeded with
  ``(seed, epoch)`` (vectorised: one permutation per epoch, not one draw per element), cut into
  batches, the remainder dropped; ``num_epochs`` None: endless."""

  def __init__(self, indices: np.ndarray, batch_size: int, seed: int, shuffle: bool,
               num_epochs: Optional[int]):
    self.indices, self.batch_size, self.seed, self.shuffle = indices, batch_size, seed, shuffle
    self.per_epoch = len(indices) // batch_size
    self.length = self.per_epoch * num_epochs if num_epochs is not None else 2 ** 62
    self._cached = (-1, indices)      # (epoch, its order): replaced whole, so that grain's
                                      # reading threads never see one epoch with another's order

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, k: int) -> np.ndarray:
    epoch, j = divmod(int(k), self.per_epoch)
    cached = self._cached
    if cached[0] != epoch:
      cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.indices)
                if self.shuffle else self.indices)
      self._cached = cached
    return cached[1][j * self.batch_size:(j + 1) * self.batch_size]


def eval_batches(split, batch_size: int, tasks: TaskSet, *, process_index: int = 0,
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
