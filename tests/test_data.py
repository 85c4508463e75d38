"""The synthetic generator."""

import numpy as np
import pytest

from mtl_jax.data import make_synthetic, num_examples
from mtl_jax._src.data.synthetic import PRESETS, task_vectors


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
