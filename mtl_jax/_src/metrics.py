"""Per-sample evaluation metrics with a direction (higher or lower is better).

A metric's value over a data set is the masked mean of its per-sample values, optionally
passed through ``finalize`` (e.g. sqrt for RMSE).  Per-sample values make metrics exact
under batching, padding and data-parallel sharding: only (sum, count) is accumulated.
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from mtl_jax._src import losses


@dataclasses.dataclass(frozen=True)
class Metric:
  """An evaluation metric.

  Attributes:
    name: key under which the metric is reported.
    per_sample: ``(prediction, label) -> [B]`` per-sample values.
    higher_is_better: the metric's direction (used by Δm and model selection).
    finalize: applied to the data-set mean (identity for most metrics).
  """
  name: str
  per_sample: Callable
  higher_is_better: bool
  finalize: Callable = lambda x: x


def _accuracy_binary(logits, label):
  return jnp.mean(((logits > 0) == (label > 0.5)).astype(jnp.float32), axis=-1)


def _accuracy_multiclass(logits, label):
  return (jnp.argmax(logits, axis=-1) == label).astype(jnp.float32)


MSE = Metric('mse', losses.squared_error, higher_is_better=False)
RMSE = Metric('rmse', losses.squared_error, higher_is_better=False, finalize=jnp.sqrt)
MAE = Metric('mae', losses.absolute_error, higher_is_better=False)
BINARY_ACCURACY = Metric('accuracy', _accuracy_binary, higher_is_better=True)
MULTICLASS_ACCURACY = Metric('accuracy', _accuracy_multiclass, higher_is_better=True)
BINARY_CROSS_ENTROPY = Metric('loss', losses.sigmoid_cross_entropy, higher_is_better=False)
CROSS_ENTROPY = Metric('loss', losses.softmax_cross_entropy, higher_is_better=False)

def delta_m(metrics: dict, baselines: dict, higher_is_better: dict,
            skip: tuple = ('loss', 'count'), only: tuple = ()) -> float:
  """Delta-m% against single-task baselines, averaged over every (task, metric) pair:

      Delta-m% = 100 / K sum_k (-1)^{h_k} (M_k - B_k) / B_k,   h_k = 1 if higher is better,

  lower is better (negative: the model beats its baselines).  ``metrics`` and ``baselines``
  are ``{task: {metric: value}}``; metrics named in ``skip`` (the training loss) are left out,
  and if ``only`` names metrics, every other one too.
  """
  terms = []
  for task, base in baselines.items():
    for name, b in base.items():
      if name in skip or (only and name not in only):
        continue
      sign = -1.0 if higher_is_better[task][name] else 1.0
      terms.append(sign * (metrics[task][name] - b) / b)
  if not terms:
    raise ValueError('delta_m: no metric to compare')
  return 100.0 * sum(terms) / len(terms)


__all__ = ['Metric', 'delta_m', 'MSE', 'RMSE', 'MAE', 'BINARY_ACCURACY', 'MULTICLASS_ACCURACY',
           'BINARY_CROSS_ENTROPY', 'CROSS_ENTROPY']
