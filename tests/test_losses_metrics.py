"""Losses and metrics against hand computations (numpy), masked and unmasked."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import tasks as T
from mtl_jax.data import eval_batches

RNG = np.random.default_rng(0)
B = 12


def _softmax_ce(logits, y):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


def _bce(logit, y):
  return np.maximum(logit, 0) - logit * y + np.log1p(np.exp(-np.abs(logit)))


TASKS = T.TaskSet([T.regression('r', 3), T.binary('b'), T.multiclass('c', 5),
                   T.multilabel('m', 4), T.regression('r2', 3)])


def _random_data(n, label_rate):
  """Random predictions, labels and masks (a fraction ``label_rate`` labelled) for TASKS."""
  preds = {'r': RNG.normal(size=(n, 3)), 'b': RNG.normal(size=(n, 1)),
           'c': RNG.normal(size=(n, 5)), 'm': RNG.normal(size=(n, 4)),
           'r2': RNG.normal(size=(n, 3))}
  labels = {'r': RNG.normal(size=(n, 3)), 'b': RNG.integers(0, 2, n).astype(float),
            'c': RNG.integers(0, 5, n), 'm': RNG.integers(0, 2, (n, 4)).astype(float),
            'r2': RNG.normal(size=(n, 3))}
  masks = {name: RNG.random(n) < label_rate for name in TASKS.names}
  return {k: v.astype(np.float32) for k, v in preds.items()}, labels, masks


@pytest.fixture
def setting():
  return (TASKS, *_random_data(B, 0.6))


def _hand_losses(preds, labels):
  return {
      'r': ((preds['r'] - labels['r']) ** 2).mean(-1),
      'b': _bce(preds['b'][:, 0], labels['b']),
      'c': _softmax_ce(preds['c'], labels['c']),
      'm': _bce(preds['m'], labels['m']).mean(-1),
      'r2': ((preds['r2'] - labels['r2']) ** 2).mean(-1),
  }


def test_losses_unmasked_match_hand_computation(setting):
  tasks, preds, labels, _ = setting
  got = tasks.losses(preds, {'inputs': np.zeros((B, 1)), 'labels': labels})
  hand = _hand_losses(preds, labels)
  np.testing.assert_allclose(got, [hand[n].mean() for n in tasks.names], rtol=1e-5)


def test_losses_masked_match_hand_computation(setting):
  tasks, preds, labels, masks = setting
  got = tasks.losses(preds, {'inputs': np.zeros((B, 1)), 'labels': labels, 'masks': masks})
  hand = _hand_losses(preds, labels)
  expected = [hand[n][masks[n]].mean() for n in tasks.names]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_groups_vectorise_identical_tasks(setting):
  tasks = setting[0]
  assert [g.names for g in tasks.groups] == [('r', 'r2'), ('b',), ('c',), ('m',)]


def test_task_without_labels_gets_zero_loss_and_no_nan(setting):
  tasks, preds, labels, masks = setting
  masks = dict(masks, c=np.zeros(B, bool), r=np.zeros(B, bool))
  labels = dict(labels, r=np.full((B, 3), np.nan))  # missing labels stored as NaN
  batch = {'inputs': np.zeros((B, 1)), 'labels': labels, 'masks': masks}
  losses = tasks.losses(preds, batch)
  assert losses[tasks.index('c')] == 0 and losses[tasks.index('r')] == 0
  grads = jax.grad(lambda p: tasks.losses(p, batch).sum())(
      {k: jnp.asarray(v) for k, v in preds.items()})
  chex.assert_tree_all_finite(grads)
  np.testing.assert_array_equal(grads['r'], 0.0)


def test_eval_metrics_over_padded_batches_match_numpy():
  tasks = TASKS
  n = 50
  preds, labels, masks = _random_data(n, 0.7)
  # The "model" looks its predictions up by example index, so that padding can be checked.
  split = {'inputs': np.arange(n), 'labels': labels, 'masks': masks}
  total = None
  for batch in eval_batches(split, 16, tasks):  # 50 = 3 * 16 + 2: the last batch is padded
    p = {k: v[batch['inputs']].astype(np.float32) for k, v in preds.items()}
    sums = tasks.metric_sums(p, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  got = tasks.finalize_metrics(total)

  def numpy_metric(name, metric):
    p, y, m = preds[name], labels[name], masks[name]
    per_sample = {
        'mse': lambda: ((p - y) ** 2).mean(-1),
        'mae': lambda: np.abs(p - y).mean(-1),
        'accuracy': lambda: (p.argmax(-1) == y) if name == 'c' else
                            ((p > 0) == (y.reshape(n, -1) > 0.5)).mean(-1),
        'loss': lambda: _softmax_ce(p, y) if name == 'c' else _bce(p, y.reshape(n, -1)).mean(-1),
    }[metric]()
    return per_sample[m].mean()

  checked = 0
  for name in tasks.names:
    assert got[name]['count'] == masks[name].sum()
    for metric in tasks[name].metrics:
      np.testing.assert_allclose(got[name][metric.name], numpy_metric(name, metric.name),
                                 rtol=1e-5, err_msg=f'{name}/{metric.name}')
      checked += 1
  assert checked == 10


def test_rmse_finalizes_with_sqrt():
  from mtl_jax import metrics
  from mtl_jax import losses as losses_lib
  tasks = T.TaskSet([T.Task("r", "regression", 1, losses_lib.squared_error, (metrics.RMSE,))])
  pred, y = RNG.normal(size=(20, 1)), RNG.normal(size=(20, 1))
  sums = tasks.metric_sums({'r': pred.astype(np.float32)},
                           {'inputs': np.zeros((20, 1)), 'labels': {'r': y}})
  got = tasks.finalize_metrics(sums)['r']['rmse']
  np.testing.assert_allclose(got, np.sqrt(((pred - y) ** 2).mean()), rtol=1e-5)


def test_delta_m_signs_each_metric_by_its_direction():
  from mtl_jax.metrics import delta_m
  metrics = {'seg': {'accuracy': 0.66, 'loss': 9.0}, 'depth': {'mse': 0.9}}
  baselines = {'seg': {'accuracy': 0.60, 'loss': 1.0, 'count': 5}, 'depth': {'mse': 1.0}}
  higher = {'seg': {'accuracy': True, 'loss': False}, 'depth': {'mse': False}}
  # accuracy +10% (better: -10), mse -10% (better: -10); the loss and count are skipped.
  np.testing.assert_allclose(delta_m(metrics, baselines, higher), -10.0)
  with pytest.raises(ValueError, match='no metric'):
    delta_m({}, {'seg': {'loss': 1.0}}, higher)
