"""Per-sample task losses and the masked batch mean.

Every loss maps ``(prediction, label) -> [B]`` per-sample values; the task loss is the
masked batch mean

    L_t = sum_b m_b * l(p_b, y_b) / max(sum_b m_b, 1),

so a sample without a label (m_b = 0) does not count and a batch with no label for a task
gives L_t = 0 (never NaN).
"""

import jax.numpy as jnp
import optax


def squared_error(pred, label):
  """Mean over output dimensions of (p - y)^2; pred and label are [B, K]."""
  return jnp.mean(optax.losses.squared_error(pred, label), axis=-1)


def absolute_error(pred, label):
  """Mean over output dimensions of |p - y|; pred and label are [B, K]."""
  return jnp.mean(jnp.abs(pred - label), axis=-1)


def sigmoid_cross_entropy(logits, label):
  """Binary cross-entropy with logits, averaged over the last axis ([B, K] -> [B])."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label), axis=-1)


def softmax_cross_entropy(logits, label):
  """Categorical cross-entropy with integer labels: logits [B, C], labels [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, label)


def masked_mean(values, mask):
  """sum(m * v) / max(sum(m), 1) over the batch axis; NaNs in masked-out entries are ignored.

  A sample counts where its mask is True or exactly 1: a mask of 0.3 or NaN does not count
  (as in ``TaskSet.losses``, which masks out such samples)."""
  mask = mask if mask.dtype == bool else mask == 1
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1)
