"""The grain pipeline over in-memory splits and lazy record sources (a real tfds data source),
and the checks of every record as it is read."""

import json

import numpy as np
import pytest

from mtl_jax import data, tasks as T


def _split(n):
  return {'inputs': np.arange(n, dtype=np.float32)[:, None], 'labels': {'y': np.zeros(n)}}


def _records(split):
  """The same examples as a lazy source of records."""
  n = len(split['inputs'])
  rows = [{'inputs': split['inputs'][i], 'labels': {k: v[i] for k, v in split['labels'].items()}}
          for i in range(n)]
  return data.RecordSource(rows, lambda r: r, 'toy/train')


def test_iterator_epochs_are_fresh_permutations():
  it = data.BatchIterator(_split(20), batch_size=6, seed=0)  # 3 batches per epoch, 2 dropped
  epochs = [np.concatenate([next(it)['inputs'][:, 0] for _ in range(3)]) for _ in range(3)]
  for seen in epochs:
    assert len(set(seen)) == 18 and set(seen) <= set(range(20))
  assert not np.array_equal(epochs[0], epochs[1])
  in_order = data.BatchIterator(_split(20), batch_size=6, seed=0, shuffle=False)
  np.testing.assert_array_equal(next(in_order)['inputs'][:, 0], np.arange(6))


def test_num_epochs_ends_the_stream():
  it = data.BatchIterator(_split(20), batch_size=6, seed=0, num_epochs=2)
  assert len(list(it)) == 6


def test_iterator_state_round_trip_reproduces_the_stream():
  reference = data.BatchIterator(_split(20), batch_size=6, seed=7)
  stream = [next(reference)['inputs'][:, 0] for _ in range(10)]
  it = data.BatchIterator(_split(20), batch_size=6, seed=7)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  resumed = data.BatchIterator(_split(20), batch_size=6, seed=7)
  resumed.set_state(state)
  for k in range(4, 10):
    np.testing.assert_array_equal(next(resumed)['inputs'][:, 0], stream[k])
  with pytest.raises(ValueError, match='does not match'):
    data.BatchIterator(_split(20), batch_size=5, seed=7).set_state(state)
  with pytest.raises(ValueError, match='num_examples 20 != 26'):
    data.BatchIterator(_split(26), batch_size=6, seed=7).set_state(state)


def test_process_shards_are_disjoint_and_cover_the_epoch():
  split = _split(40)
  shards = [data.BatchIterator(split, batch_size=8, seed=3, process_index=i, process_count=4)
            for i in range(4)]
  assert all(s.batches_per_epoch == 5 for s in shards)
  for epoch in range(2):
    seen = [np.concatenate([next(s)['inputs'][:, 0] for _ in range(5)]) for s in shards]
    assert all(len(p) == 10 for p in seen)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(40))
    for i, part in enumerate(seen):  # process i reads its own share only
      assert set(part.astype(int) % 4) == {i}
  with pytest.raises(ValueError, match='split evenly over 3 processes'):
    data.BatchIterator(split, batch_size=8, seed=3, process_index=0, process_count=3)


def test_batches_always_carry_a_mask_per_task():
  split = _split(10)
  split['labels']['z'] = np.ones(10)
  split['masks'] = {'z': np.arange(10) % 2 == 0}
  batch = next(data.BatchIterator(split, batch_size=4, seed=0, shuffle=False))
  assert set(batch['masks']) == {'y', 'z'}
  np.testing.assert_array_equal(batch['masks']['y'], True)
  np.testing.assert_array_equal(batch['masks']['z'], [True, False, True, False])


def test_a_record_source_gives_the_same_batches_as_its_arrays():
  split = _split(30)
  arrays, lazy = (data.BatchIterator(s, batch_size=7, seed=5) for s in (split, _records(split)))
  for _ in range(9):
    a, b = next(arrays), next(lazy)
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['labels']['y'], b['labels']['y'])


def test_worker_processes_give_the_same_stream_and_resume():
  split = _split(30)
  expected = data.BatchIterator(split, batch_size=7, seed=5)
  workers = data.BatchIterator(_records(split), batch_size=7, seed=5, worker_count=2)
  for _ in range(3):
    np.testing.assert_array_equal(next(workers)['inputs'], next(expected)['inputs'])
  state = json.loads(json.dumps(workers.get_state()))
  resumed = data.BatchIterator(_records(split), batch_size=7, seed=5, worker_count=2)
  resumed.set_state(state)
  for _ in range(4):
    np.testing.assert_array_equal(next(resumed)['inputs'], next(expected)['inputs'])


def test_eval_batches_cover_the_split_once_and_shard_over_processes():
  tasks = T.TaskSet([T.regression('y')])
  for split in (_split(10), _records(_split(10))):
    whole = list(data.eval_batches(split, 4, tasks))
    assert len(whole) == 3
    seen = np.concatenate([b['inputs'][b['masks']['y'], 0] for b in whole])
    np.testing.assert_array_equal(seen, np.arange(10))
    parts = [list(data.eval_batches(split, 4, tasks, process_index=i, process_count=2))
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
  source = data.RecordSource(rows, lambda r: r, 'toy/test')
  with pytest.raises(ValueError, match=r"toy/test, record 3: field \['inputs'\] has shape "
                                       r"\(4, 3\), expected \(4, 4\)"):
    data.take(source, np.arange(5))
  with pytest.raises(ValueError, match='fields'):
    data.stack([{'a': 1}, {'b': 1}])


def test_an_unreadable_record_is_named():
  class Broken:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      if i == 2:
        raise OSError('bad checksum')
      return {'inputs': np.zeros(2), 'labels': {'y': 0.0}}

  source = data.RecordSource(Broken(), lambda r: r, 'toy/validation')
  with pytest.raises(ValueError, match=r'toy/validation: cannot read record 2 .*bad checksum'):
    data.take(source, np.arange(3))


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
  source = data.RecordSource(raw, lambda e: {'inputs': e['x'], 'labels': {'c': e['label']}},
                        'tiny/train')
  batches = list(data.BatchIterator(source, batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == 3
  x = np.concatenate([b['inputs'][:, 0] for b in batches])
  np.testing.assert_array_equal(np.sort(x), np.arange(12))
  for b in batches:
    np.testing.assert_array_equal(b['labels']['c'], b['inputs'][:, 0].astype(int) % 4)


# ---- records are checked as they are read --------------------------------------------------

CHECKED_TASKS = T.TaskSet([T.regression('y'), T.multiclass('c', 3)])


def _lazy_dataset(bad=None, split='train', n=20):
  """A data set 'toy' with one lazy split of ``n`` good records, ``bad`` = {index: changes}."""
  rows = [{'inputs': np.full(2, i, np.float32), 'labels': {'y': np.float32(i), 'c': i % 3}}
          for i in range(n)]
  for index, changes in (bad or {}).items():
    rows[index] = {**rows[index], **changes}
  source = data.RecordSource(rows, lambda r: r, f'toy/{split}')
  return data.MultiTaskDataset('toy', CHECKED_TASKS, {split: source})


def test_a_nan_input_in_a_lazy_split_raises_from_the_iterator_naming_the_record():
  nan = np.array([0.0, np.nan], np.float32)
  dataset = _lazy_dataset({13: {'inputs': nan}})  # built: the first record is fine
  split = dataset.split('train')
  assert isinstance(split, data.CheckedSource) and isinstance(split, data.RecordSource)
  it = data.BatchIterator(split, batch_size=4, seed=0, shuffle=False)
  for _ in range(3):
    next(it)  # records 0 .. 11
  with pytest.raises(ValueError, match=r"data set 'toy', split 'train', record 13: NaN or inf "
                                       r"in batch\['inputs'\]"):
    next(it)
  with pytest.raises(ValueError, match='record 13: NaN'):  # shuffled: the same record named
    for _ in data.BatchIterator(split, batch_size=4, seed=3, num_epochs=1):
      pass


def test_an_out_of_range_label_in_a_lazy_split_raises_from_eval_batches():
  dataset = _lazy_dataset({6: {'labels': {'y': np.float32(0.0), 'c': 3}}}, split='val')
  batches = data.eval_batches(dataset.split('val'), 4, CHECKED_TASKS)
  next(batches)  # records 0 .. 3
  with pytest.raises(ValueError, match=r"data set 'toy', split 'val', record 6: task 'c': class "
                                       r'labels must be integers in \[0, 3\), got values in '
                                       r'\[3, 3\]'):
    next(batches)
  nan_label = _lazy_dataset({9: {'labels': {'y': np.float32(np.nan), 'c': 0}}})
  with pytest.raises(ValueError, match=r"split 'train', record 9: task 'y': NaN or inf"):
    data.take(nan_label.split('train'), np.arange(8, 12))


def test_a_masked_out_label_is_not_checked_and_shapes_are():
  rows = [{'inputs': np.zeros(2, np.float32), 'labels': {'y': np.float32(0.0), 'c': 7 * (i == 5)},
           'masks': {'c': np.bool_(i != 5)}} for i in range(8)]
  source = data.RecordSource(rows, lambda r: r, 'toy/train')
  dataset = data.MultiTaskDataset('toy', CHECKED_TASKS, {'train': source})
  batch = data.take(dataset.split('train'), np.arange(8))  # class 7 at record 5, masked out
  np.testing.assert_array_equal(batch['masks']['c'], np.arange(8) != 5)
  wide = _lazy_dataset({17: {'labels': {'y': np.zeros(3, np.float32), 'c': 0}}})
  with pytest.raises(ValueError, match=r"split 'train', record 17: task 'y'.*label shape"):
    data.take(wide.split('train'), np.array([17]))


def test_a_bad_record_is_named_from_worker_processes():
  dataset = _lazy_dataset({10: {'inputs': np.array([np.inf, 0.0], np.float32)}})
  it = data.BatchIterator(dataset.split('train'), batch_size=4, seed=0, shuffle=False,
                          worker_count=1)
  with pytest.raises(ValueError, match=r"data set 'toy', split 'train', record 10: NaN or inf"):
    for _ in range(5):
      next(it)


def test_selected_tasks_are_checked_on_their_own_labels():
  dataset = _lazy_dataset({4: {'labels': {'y': np.float32(0.0), 'c': 5}}})
  only_y = data.select_tasks(dataset, ['y'])  # the bad 'c' label is not read
  batch = data.take(only_y.split('train'), np.arange(8))
  assert list(batch['labels']) == ['y']
  with pytest.raises(ValueError, match="split 'train', record 4: task 'c'"):
    data.take(data.select_tasks(dataset, ['c']).split('train'), np.arange(8))


def test_in_memory_splits_are_checked_whole_when_the_data_set_is_built():
  inputs = np.zeros((50, 2), np.float32)
  inputs[37, 1] = np.inf
  split = {'inputs': inputs, 'labels': {'y': np.zeros(50, np.float32), 'c': np.zeros(50, int)}}
  with pytest.raises(ValueError, match=r"data set 'toy', split 'test': NaN or inf in "
                                       r"batch\['inputs'\] at 1 entries"):
    data.MultiTaskDataset('toy', CHECKED_TASKS, {'test': split})
