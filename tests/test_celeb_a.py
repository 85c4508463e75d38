"""The CelebA loader over tfds's mocked ``celeb_a`` data source (no files, no TensorFlow)."""

import jax
import numpy as np
import optax
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

# pylint: disable=g-import-not-at-top
from mtl_jax import data, init_train_state, make_train_step, models, weighting
# celeb_a.load reads a subset of splits (the registered builder reads all three); ATTRIBUTES.
from mtl_jax._src.data import celeb_a

NOWHERE = '/nonexistent/tfds_celeb_a'


def _example(image, male=True):
  """A tfds ``celeb_a`` example (only the fields the loader reads) with every attribute False
  but 'Male'."""
  attributes = {a: np.bool_(False) for a in celeb_a.ATTRIBUTES}
  attributes['Male'] = np.bool_(male)
  return {'image': np.asarray(image, np.uint8), 'attributes': attributes}


def _fake_source(examples):
  """An ``as_data_source_fn`` for ``mock_data``: every split yields ``examples``."""
  def as_data_source(builder, split, **kwargs):
    del builder, split, kwargs
    return list(examples)
  return as_data_source


def test_forty_binary_tasks_in_tfds_order_and_split_names():
  with tfds.testing.mock_data(num_examples=3):
    ds = data.load('celeb_a', seed=5, data_dir=NOWHERE)  # the builder takes no seed
    raw = tfds.data_source('celeb_a', split='train', data_dir=NOWHERE, download=False)
    tfds_order = list(raw[0]['attributes'])
  assert ds.name == 'celeb_a' and sorted(ds.splits) == ['test', 'train', 'val']
  assert len(ds.tasks) == 40 and list(ds.tasks.names) == tfds_order
  assert all(t.kind == 'binary' and t.out_dim == 1 for t in ds.tasks)


def test_labels_and_masks_equal_the_mocked_attributes():
  with tfds.testing.mock_data(num_examples=5):
    ds = celeb_a.load(NOWHERE, splits=('validation',))
    raw = tfds.data_source('celeb_a', split='validation', data_dir=NOWHERE, download=False)
    batch = data.take(ds.split('val'), np.arange(5))
    expected = {a: np.array([float(raw[i]['attributes'][a]) for i in range(5)])
                for a in celeb_a.ATTRIBUTES}
  assert list(ds.splits) == ['val']
  seen = np.stack([expected[a] for a in celeb_a.ATTRIBUTES])
  assert 0 < seen.mean() < 1  # the mock draws both values
  for a in celeb_a.ATTRIBUTES:
    assert batch['labels'][a].dtype == np.float32 and batch['labels'][a].shape == (5,)
    np.testing.assert_array_equal(batch['labels'][a], expected[a])
    np.testing.assert_array_equal(batch['masks'][a], np.ones(5, bool))


def test_image_shape_and_range():
  with tfds.testing.mock_data(num_examples=2):
    for size in (64, 20):
      record = celeb_a.load(NOWHERE, image_size=size, splits=('test',)).split('test')[1]
      image = record['inputs']
      assert image.shape == (size, size, 3) and image.dtype == np.float32
      assert 0.0 <= image.min() < image.max() <= 1.0


def test_constant_image_keeps_its_value():
  """Bilinear resizing preserves a constant image: every pixel is 200 / 255."""
  with tfds.testing.mock_data(as_data_source_fn=_fake_source(
      [_example(np.full((218, 178, 3), 200))])):
    record = celeb_a.load(NOWHERE, image_size=16, splits=('train',)).split('train')[0]
  np.testing.assert_allclose(record['inputs'], np.full((16, 16, 3), 200 / 255), atol=1e-6)


def test_center_crop_drops_the_top_and_bottom_rows():
  """An image white in its top and bottom 20 rows and black elsewhere: the central 178 x 178
  square (rows 20:198) is all black; the whole image resized is not."""
  image = np.zeros((218, 178, 3))
  image[:20] = image[-20:] = 255
  with tfds.testing.mock_data(as_data_source_fn=_fake_source([_example(image)])):
    cropped = celeb_a.load(NOWHERE, image_size=8, splits=('train',), center_crop=True)
    whole = celeb_a.load(NOWHERE, image_size=8, splits=('train',))
    cropped, whole = cropped.split('train')[0]['inputs'], whole.split('train')[0]['inputs']
  np.testing.assert_array_equal(cropped, np.zeros((8, 8, 3)))
  assert whole[0].min() > 0.5 and whole[-1].min() > 0.5 and whole[4].max() == 0.0


def test_attribute_subset_in_the_given_order():
  with tfds.testing.mock_data(as_data_source_fn=_fake_source(
      [_example(np.zeros((218, 178, 3)), male=m) for m in (True, False, True)])):
    ds = data.load('celeb_a', data_dir=NOWHERE, attributes=['Smiling', 'Male'], image_size=8)
    batch = data.take(ds.split('train'), np.arange(3))
  assert ds.tasks.names == ('Smiling', 'Male')
  assert sorted(batch['labels']) == ['Male', 'Smiling'] == sorted(batch['masks'])
  np.testing.assert_array_equal(batch['labels']['Male'], [1., 0., 1.])
  np.testing.assert_array_equal(batch['labels']['Smiling'], [0., 0., 0.])


def test_unknown_attribute_is_named_with_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['Smiley'\].*'Smiling'"):
    celeb_a.load(NOWHERE, attributes=['Male', 'Smiley'])
  with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['Smiley'\]"):
    data.load('celeb_a', data_dir=NOWHERE, attributes='Smiley')


@pytest.mark.parametrize('shape', [(218, 178), (218, 178, 4)])
def test_bad_image_shape_names_the_field_and_shape(shape):
  with tfds.testing.mock_data(as_data_source_fn=_fake_source([_example(np.zeros(shape))])):
    with pytest.raises(ValueError, match=r"celeb_a/train, record 0: field 'image'.*"
                       + repr(shape).replace('(', r'\(').replace(')', r'\)')):
      celeb_a.load(NOWHERE, splits=('train',))


def test_a_bad_record_later_in_a_split_is_named():
  good = _example(np.zeros((218, 178, 3)))
  examples = [good, good, _example(np.zeros((218, 178, 1))), good]
  with tfds.testing.mock_data(as_data_source_fn=_fake_source(examples)):
    split = celeb_a.load(NOWHERE, image_size=8, splits=('train',)).split('train')
  assert isinstance(split, data.RecordSource)
  data.take(split, np.arange(2))
  with pytest.raises(ValueError, match=r"celeb_a/train, record 2: field 'image'.*\(218, 178, 1\)"):
    data.take(split, np.arange(4))


def test_missing_data_dir_explains_how_to_prepare(tmp_path):
  missing = str(tmp_path / 'no_tfds_here')
  with pytest.raises(FileNotFoundError) as error:
    celeb_a.load(missing, splits=('validation',))
  message = str(error.value)
  assert missing in message and "'validation'" in message
  assert 'manual download' in message and 'list_attr_celeba.txt' in message
  assert 'downloads/manual' in message


def test_bad_split_and_image_size():
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    celeb_a.load(NOWHERE, splits=('train', 'dev'))
  with pytest.raises(ValueError, match='image_size'):
    celeb_a.load(NOWHERE, image_size=0)


def test_one_train_step_through_the_batch_iterator():
  with tfds.testing.mock_data(num_examples=8):
    ds = data.load('celeb_a', data_dir=NOWHERE, image_size=16)
    batch = next(data.BatchIterator(ds.split('train'), batch_size=4, seed=0))
  assert batch['inputs'].shape == (4, 16, 16, 3) and batch['inputs'].dtype == np.float32
  assert sorted(batch['labels']) == sorted(celeb_a.ATTRIBUTES) == sorted(batch['masks'])
  assert all(batch['labels'][a].shape == (4,) and batch['masks'][a].shape == (4,)
             for a in celeb_a.ATTRIBUTES)
  model = models.get('shared_bottom', ds.tasks,
                     models.get_backbone('cnn', channels=(4,), output='mean'), tower_hidden=())
  optimizer, method = optax.adam(1e-2), weighting.get('ew')
  state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  before = jax.tree.map(np.array, state.params)
  state, metrics = make_train_step(model, ds.tasks, optimizer, method)(state, batch)
  assert int(state.step) == 1 and metrics['losses'].shape == (40,)
  assert np.isfinite(np.asarray(metrics['losses'])).all()
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, state.params)
  assert any(jax.tree_util.tree_leaves(moved))
