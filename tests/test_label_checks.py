"""One rule for labels and masks, on every path (issue 11).

The host check (``TaskSet.validate``, also run by the data pipeline on every record) raises on
an invalid label or mask, naming the task and the field; the jitted losses and metrics mask
such samples out and ``invalid_labels`` counts them.  Expected values are NumPy computations
over the valid samples only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import data, tasks as T

B = 8
RNG = np.random.default_rng(11)
TASKS = T.TaskSet([T.regression('r', 2), T.binary('b'), T.multiclass('c', 3),
                   T.multilabel('m', 2)])
PREDS = {'r': RNG.normal(size=(B, 2)), 'b': RNG.normal(size=(B, 1)),
         'c': RNG.normal(size=(B, 3)), 'm': RNG.normal(size=(B, 2))}
PREDS = {k: v.astype(np.float32) for k, v in PREDS.items()}


def _batch(labels=None, masks=None):
  """Good labels for TASKS (float class labels for 'c'), with ``labels`` / ``masks`` replaced."""
  good = {'r': RNG.normal(size=(B, 2)), 'b': np.arange(B) % 2 * 1.0,
          'c': np.arange(B) % 3 * 1.0, 'm': (np.arange(2 * B).reshape(B, 2) % 3 == 0) * 1.0}
  batch = {'inputs': np.zeros((B, 3), np.float32), 'labels': {**good, **(labels or {})}}
  if masks:
    batch['masks'] = masks
  return batch


def _per_sample(name, y):
  """NumPy per-sample loss of task ``name`` (labels already valid)."""
  p = PREDS[name].astype(np.float64)
  if name == 'r':
    return ((p - y) ** 2).mean(-1)
  if name == 'c':
    z = p - p.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(B), y.astype(int)]
  y = y.reshape(B, -1)
  return (np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))).mean(-1)


def _expected(batch, valid):
  """NumPy losses [T], metric counts and accuracies over the samples ``valid[task]`` only."""
  losses, counts, acc = [], {}, {}
  for name in TASKS.names:
    keep = valid[name]
    y = np.where(keep.reshape((B,) + (1,) * (np.ndim(batch['labels'][name]) - 1)),
                 batch['labels'][name], 0)
    losses.append(_per_sample(name, y)[keep].mean() if keep.any() else 0.0)
    counts[name] = keep.sum()
    if name == 'c':
      acc[name] = (PREDS['c'].argmax(-1) == y)[keep].mean()
  return np.array(losses), counts, acc


# (task, labels or None, mask or None, samples excluded); sample 2 (and 5) are the bad ones.
def _at(values, index, default):
  out = np.array(default, dtype=np.float64)
  for i in np.atleast_1d(index):
    out[i] = values
  return out


CLASS = np.arange(B) % 3 * 1.0
BIN = np.arange(B) % 2 * 1.0
BAD_CASES = {
    'multiclass -1': ('c', _at(-1, 2, CLASS), None, [2]),
    'multiclass int -1': ('c', _at(-1, 2, CLASS).astype(np.int32), None, [2]),
    'multilabel 2': ('m', _at(2, 2, np.zeros((B, 2))), None, [2]),
    'multiclass 2.7': ('c', _at(2.7, 2, CLASS), None, [2]),
    'multiclass K': ('c', _at(3, [2, 5], CLASS), None, [2, 5]),
    'multiclass NaN': ('c', _at(np.nan, 2, CLASS), None, [2]),
    'binary 1.5': ('b', _at(1.5, 2, BIN), None, [2]),
    'binary -0.1': ('b', _at(-0.1, 2, BIN), None, [2]),
    'regression NaN': ('r', None, None, [2]),
    'mask 0.3': ('b', None, _at(0.3, 2, np.ones(B)), [2]),
    'mask 2': ('c', None, _at(2, [2, 5], np.ones(B)), [2, 5]),
    'mask NaN': ('r', None, _at(np.nan, 2, np.ones(B)), [2]),
}


def _bad_batch(case):
  name, label, mask, bad = BAD_CASES[case]
  labels = {}
  if label is not None:
    labels[name] = label
  elif mask is None:  # regression NaN
    labels[name] = np.array(_batch()['labels'][name])
    labels[name][2, 1] = np.nan
  batch = _batch(labels, {name: mask} if mask is not None else None)
  valid = {n: np.ones(B, bool) for n in TASKS.names}
  valid[name][bad] = False
  return batch, name, len(bad), valid


@pytest.mark.parametrize('case', list(BAD_CASES))
def test_invalid_samples_are_masked_out_and_counted(case):
  batch, name, num_bad, valid = _bad_batch(case)
  losses, counts, acc = _expected(batch, valid)
  np.testing.assert_allclose(TASKS.losses(PREDS, batch), losses, rtol=1e-5)
  expected_invalid = [num_bad if n == name else 0 for n in TASKS.names]
  np.testing.assert_array_equal(TASKS.invalid_labels(batch), expected_invalid)
  got = TASKS.finalize_metrics(TASKS.metric_sums(PREDS, batch))
  for n in TASKS.names:
    assert got[n]['count'] == counts[n], n
  np.testing.assert_allclose(got['c']['accuracy'], acc['c'], rtol=1e-6)
  grads = jax.grad(lambda p: TASKS.losses(p, batch).sum())(jax.tree.map(jnp.asarray, PREDS))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  np.testing.assert_array_equal(grads[name][np.array(valid[name]) == 0], 0.0)


@pytest.mark.parametrize('case', list(BAD_CASES))
def test_host_check_names_task_field_count_and_value(case):
  batch, name, num_bad, _ = _bad_batch(case)
  section = 'masks' if BAD_CASES[case][2] is not None else 'labels'
  field = rf"batch\['{section}'\]\['{name}'\]"
  with pytest.raises(ValueError, match=rf"task '{name}'.*{field}.* {num_bad} sample\(s\), "
                                       r'e\.g\. \S+ at sample 2'):
    TASKS.validate(batch)


def test_jitted_loss_of_label_2_7_is_not_the_loss_of_class_2():
  loss = jax.jit(TASKS.losses)
  with_2_7 = _batch({'c': _at(2.7, 0, CLASS)})
  with_2 = _batch({'c': _at(2, 0, CLASS)})
  c = TASKS.index('c')
  assert not np.isclose(loss(PREDS, with_2_7)[c], loss(PREDS, with_2)[c])
  np.testing.assert_allclose(loss(PREDS, with_2_7)[c], _per_sample('c', CLASS)[1:].mean(),
                             rtol=1e-5)
  assert jax.jit(TASKS.invalid_labels)(with_2_7)[c] == 1


@pytest.mark.parametrize('labels,masks', [
    ({'c': np.arange(B) % 3}, None),                                        # int labels
    ({'c': (np.arange(B) % 3).astype(np.int32), 'b': BIN.astype(bool)}, None),
    (None, {n: np.arange(B) != 2 for n in TASKS.names}),                    # bool masks
    (None, {n: (np.arange(B) != 2).astype(np.float32) for n in TASKS.names}),
    (None, {n: (np.arange(B) != 2).astype(np.int64) for n in TASKS.names}),
])
def test_good_labels_and_masks_of_every_dtype(labels, masks):
  batch = _batch(labels, masks)
  valid = {n: np.ones(B, bool) if masks is None else np.asarray(masks[n]).astype(bool)
           for n in TASKS.names}
  TASKS.validate(batch)
  np.testing.assert_allclose(TASKS.losses(PREDS, batch), _expected(batch, valid)[0], rtol=1e-5)
  np.testing.assert_array_equal(TASKS.invalid_labels(batch), np.zeros(len(TASKS)))


def test_masked_out_nan_and_out_of_range_labels_are_fine():
  labels = {'r': np.full((B, 2), np.nan), 'c': _at(np.nan, 3, _at(7, 2, CLASS)),
            'b': _at(5.0, 2, BIN)}
  masks = {'r': np.zeros(B), 'c': ~np.isin(np.arange(B), [2, 3]), 'b': np.arange(B) != 2}
  batch = _batch(labels, masks)
  TASKS.validate(batch)
  assert np.isfinite(TASKS.losses(PREDS, batch)).all()
  np.testing.assert_array_equal(TASKS.invalid_labels(batch), np.zeros(len(TASKS)))


def test_nonfinite_inputs_count_samples_and_the_host_check_names_the_leaf():
  batch = _batch()
  batch['inputs'] = {'x': np.zeros((B, 3), np.float32), 'n': np.zeros((B, 2), np.float32),
                     'ids': np.arange(B)}
  assert int(jax.jit(TASKS.nonfinite_inputs)(batch)) == 0
  batch['inputs']['x'][[1, 4], 0] = np.nan
  batch['inputs']['n'][4, 1] = np.inf
  batch['inputs']['n'][6, 0] = -np.inf
  assert int(jax.jit(TASKS.nonfinite_inputs)(batch)) == 3
  with pytest.raises(ValueError, match=r"batch\['inputs'\]\['n'\] at 2 entries of "
                                       r'2 sample\(s\), e\.g\. inf at sample 4'):
    TASKS.validate(batch)


def test_host_check_includes_structure():
  batch = _batch()
  del batch['labels']['m']
  with pytest.raises(ValueError, match="missing the label for task 'm'"):
    TASKS.validate(batch)


def test_the_pipeline_rejects_a_record_with_mask_0_3_naming_it():
  tasks = T.TaskSet([T.regression('y'), T.binary('b')])
  rows = [{'inputs': np.full(2, i, np.float32), 'labels': {'y': np.float32(i), 'b': i % 2},
           'masks': {'b': np.float32(1.0)}} for i in range(12)]
  rows[7] = dict(rows[7], masks={'b': np.float32(0.3)})
  dataset = data.MultiTaskDataset('toy', tasks, {'train': data.RecordSource(
      rows, lambda r: r, 'toy/train')})
  data.take(dataset.split('train'), np.arange(4))
  with pytest.raises(ValueError, match=r"data set 'toy', split 'train', record 7: task 'b': "
                                       r".*batch\['masks'\]\['b'\].*0\.3"):
    data.take(dataset.split('train'), np.arange(4, 8))
  in_memory = data.stack(rows)
  with pytest.raises(ValueError, match=r"split 'train': task 'b'.*e\.g\. 0\.3 at sample 7"):
    data.MultiTaskDataset('toy', tasks, {'train': in_memory})
