"""The grain pipeline over in-memory splits and lazy record sources (a real tfds data source)."""

import json

import numpy as np
import pytest

from mtl_jax import tasks as T
from mtl_jax.data import BatchIterator, RecordSource, eval_batches, stack, take


def _split(n):
  return {'inputs': np.arange(n, dtype=np.float32)[:, None], 'labels': {'y': np.zeros(n)}}


def _records(split):
  """The same examples as a lazy source of records."""
  n = len(split['inputs'])
  rows = [{'inputs': split['inputs'][i], 'labels': {k: v[i] for k, v in split['labels'].items()}}
          for i in range(n)]
  return RecordSource(rows, lambda r: r, 'toy/train')


def test_iterator_epochs_are_fresh_permutations():
  it = BatchIterator(_split(20), batch_size=6, seed=0)  # 3 batches per epoch, 2 dropped
  epochs = [np.concatenate([next(it)['inputs'][:, 0] for _ in range(3)]) for _ in range(3)]
  for seen in epochs:
    assert len(set(seen)) == 18 and set(seen) <= set(range(20))
  assert not np.array_equal(epochs[0], epochs[1])
  in_order = BatchIterator(_split(20), batch_size=6, seed=0, shuffle=False)
  np.testing.assert_array_equal(next(in_order)['inputs'][:, 0], np.arange(6))


def test_num_epochs_ends_the_stream():
  it = BatchIterator(_split(20), batch_size=6, seed=0, num_epochs=2)
  assert len(list(it)) == 6


def test_iterator_state_round_trip_reproduces_the_stream():
  reference = BatchIterator(_split(20), batch_size=6, seed=7)
  stream = [next(reference)['inputs'][:, 0] for _ in range(10)]
  it = BatchIterator(_split(20), batch_size=6, seed=7)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  resumed = BatchIterator(_split(20), batch_size=6, seed=7)
  resumed.set_state(state)
  for k in range(4, 10):
    np.testing.assert_array_equal(next(resumed)['inputs'][:, 0], stream[k])
  with pytest.raises(ValueError, match='does not match'):
    BatchIterator(_split(20), batch_size=5, seed=7).set_state(state)
  with pytest.raises(ValueError, match='num_examples 20 != 26'):
    BatchIterator(_split(26), batch_size=6, seed=7).set_state(state)


def test_process_shards_are_disjoint_and_cover_the_epoch():
  split = _split(40)
  shards = [BatchIterator(split, batch_size=8, seed=3, process_index=i, process_count=4)
            for i in range(4)]
  assert all(s.batches_per_epoch == 5 for s in shards)
  for epoch in range(2):
    seen = [np.concatenate([next(s)['inputs'][:, 0] for _ in range(5)]) for s in shards]
    assert all(len(p) == 10 for p in seen)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(40))
    for i, part in enumerate(seen):  # process i reads its own share only
      assert set(part.astype(int) % 4) == {i}
  with pytest.raises(ValueError, match='split evenly over 3 processes'):
    BatchIterator(split, batch_size=8, seed=3, process_index=0, process_count=3)


def test_batches_always_carry_a_mask_per_task():
  split = _split(10)
  split['labels']['z'] = np.ones(10)
  split['masks'] = {'z': np.arange(10) % 2 == 0}
  batch = next(BatchIterator(split, batch_size=4, seed=0, shuffle=False))
  assert set(batch['masks']) == {'y', 'z'}
  np.testing.assert_array_equal(batch['masks']['y'], True)
  np.testing.assert_array_equal(batch['masks']['z'], [True, False, True, False])


def test_a_record_source_gives_the_same_batches_as_its_arrays():
  split = _split(30)
  arrays, lazy = (BatchIterator(s, batch_size=7, seed=5) for s in (split, _records(split)))
  for _ in range(9):
    a, b = next(arrays), next(lazy)
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['labels']['y'], b['labels']['y'])


def test_worker_processes_give_the_same_stream_and_resume():
  split = _split(30)
  expected = BatchIterator(split, batch_size=7, seed=5)
  workers = BatchIterator(_records(split), batch_size=7, seed=5, worker_count=2)
  for _ in range(3):
    np.testing.assert_array_equal(next(workers)['inputs'], next(expected)['inputs'])
  state = json.loads(json.dumps(workers.get_state()))
  resumed = BatchIterator(_records(split), batch_size=7, seed=5, worker_count=2)
  resumed.set_state(state)
  for _ in range(4):
    np.testing.assert_array_equal(next(resumed)['inputs'], next(expected)['inputs'])


def test_eval_batches_cover_the_split_once_and_shard_over_processes():
  tasks = T.TaskSet([T.regression('y')])
  for split in (_split(10), _records(_split(10))):
    whole = list(eval_batches(split, 4, tasks))
    assert len(whole) == 3
    seen = np.concatenate([b['inputs'][b['masks']['y'], 0] for b in whole])
    np.testing.assert_array_equal(seen, np.arange(10))
    parts = [list(eval_batches(split, 4, tasks, process_index=i, process_count=2))
             for i in range(2)]
    for k, batch in enumerate(whole):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k]['inputs'], parts[1][k]['inputs']]), batch['inputs'])
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k]['masks']['y'], parts[1][k]['masks']['y']]),
          batch['masks']['y'])


def test_a_record_of_the_wrong_shape_is_named():
  rows = [{'inputs': np.zeros((4, 4)), 'labels': {'y': 0.0}} for _ in range(5)]
  rows[3] = {'inputs': np.zeros((4, 3)), 'labels': {'y': 0.0}}
  source = RecordSource(rows, lambda r: r, 'toy/test')
  with pytest.raises(ValueError, match=r"toy/test, record 3: field \['inputs'\] has shape "
                                       r"\(4, 3\), expected \(4, 4\)"):
    take(source, np.arange(5))
  with pytest.raises(ValueError, match='fields'):
    stack([{'a': 1}, {'b': 1}])


def test_an_unreadable_record_is_named():
  class Broken:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      if i == 2:
        raise OSError('bad checksum')
      return {'inputs': np.zeros(2), 'labels': {'y': 0.0}}

  source = RecordSource(Broken(), lambda r: r, 'toy/validation')
  with pytest.raises(ValueError, match=r'toy/validation: cannot read record 2 .*bad checksum'):
    take(source, np.arange(3))


def test_a_tfds_array_record_data_source(tmp_path):
  """A real tfds builder written as array_record and read back with ``tfds.data_source``,
  without TensorFlow, through the pipeline."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class Tiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'x': tfds.features.Tensor(shape=(3,), dtype=np.float32),
          'label': tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(12)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'x': np.full(3, i, np.float32), 'label': i % 4}

  Tiny(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  raw = tfds.data_source('tiny', split='train', data_dir=str(tmp_path))
  source = RecordSource(raw, lambda e: {'inputs': e['x'], 'labels': {'c': e['label']}},
                        'tiny/train')
  batches = list(BatchIterator(source, batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == 3
  x = np.concatenate([b['inputs'][:, 0] for b in batches])
  np.testing.assert_array_equal(np.sort(x), np.arange(12))
  for b in batches:
    np.testing.assert_array_equal(b['labels']['c'], b['inputs'][:, 0].astype(int) % 4)
