"""Bad input gets an error that names the task or field."""

import numpy as np
import pytest

from mtl_jax import tasks as T, weighting
from mtl_jax._src import config_validation
from mtl_jax.data import make_synthetic
from tests.conftest import tiny_config

B = 8
TASKS = T.TaskSet([T.regression('depth', 2), T.multiclass('seg', 3)])


def _batch(**changes):
  batch = {'inputs': np.zeros((B, 4), np.float32),
           'labels': {'depth': np.zeros((B, 2)), 'seg': np.zeros(B, int)}}
  for key, value in changes.items():
    batch['labels'][key] = value
  return batch


PREDS = {'depth': np.zeros((B, 2), np.float32), 'seg': np.zeros((B, 3), np.float32)}


def test_unknown_task_in_batch():
  batch = _batch(normals=np.zeros((B, 3)))
  with pytest.raises(ValueError, match="unknown task.*'normals'"):
    TASKS.losses(PREDS, batch)


def test_unknown_task_in_masks():
  batch = dict(_batch(), masks={'edges': np.ones(B)})
  with pytest.raises(ValueError, match="masks.*'edges'"):
    TASKS.check_batch(batch)


def test_missing_label_key():
  batch = _batch()
  del batch['labels']['seg']
  with pytest.raises(ValueError, match="missing the label for task 'seg'"):
    TASKS.losses(PREDS, batch)


def test_label_shape_mismatch():
  with pytest.raises(ValueError, match="task 'depth'.*label shape"):
    TASKS.losses(PREDS, _batch(depth=np.zeros((B, 3))))


def test_prediction_shape_mismatch():
  with pytest.raises(ValueError, match="task 'seg'.*prediction shape"):
    TASKS.losses(dict(PREDS, seg=np.zeros((B, 4), np.float32)), _batch())


def test_nan_and_inf_in_inputs():
  batch = _batch()
  batch['inputs'] = {'image': np.zeros((B, 4)), 'meta': np.array([[np.inf]] * B)}
  with pytest.raises(ValueError, match=r"batch\['inputs'\]\['meta'\]"):
    TASKS.check_values(batch)


def test_nan_label_is_an_error_unless_masked():
  depth = np.zeros((B, 2))
  depth[3, 1] = np.nan
  with pytest.raises(ValueError, match="task 'depth': NaN"):
    TASKS.check_values(_batch(depth=depth))
  masks = {'depth': np.arange(B) != 3}
  TASKS.check_values(dict(_batch(depth=depth), masks=masks))  # masked out: fine


def test_class_labels_out_of_range():
  with pytest.raises(ValueError, match=r"task 'seg': class labels must be integers in \[0, 3\)"):
    TASKS.check_values(_batch(seg=np.array([0, 1, 2, 3, 0, 0, 0, 0])))
  masks = {'seg': np.arange(B) != 3}
  TASKS.check_values(dict(_batch(seg=np.array([0, 1, 2, -1, 0, 0, 0, 0])), masks=masks))
  TASKS.check_batch(_batch(seg=np.zeros((B, 1), int)))  # [B, 1] class labels are accepted


def test_dataset_with_nan_inputs_names_split():
  ds = make_synthetic(2, 0.5, input_dim=4, sizes=(10, 5, 5))
  split = dict(ds.split('val'))
  split['inputs'] = split['inputs'].copy()
  split['inputs'][0, 0] = np.nan
  with pytest.raises(ValueError, match="split 'val'.*NaN or inf in batch\\['inputs'\\]"):
    type(ds)('bad', ds.tasks, {'val': split})


def test_duplicate_and_unknown_task_names():
  with pytest.raises(ValueError, match="duplicate task names: \\['a'\\]"):
    T.TaskSet([T.binary('a'), T.binary('a')])
  with pytest.raises(KeyError, match="unknown task 'z'"):
    TASKS.index('z')
  with pytest.raises(ValueError, match="unknown kind"):
    T.Task('x', 'ranking', 1, None, ())


def test_task_vector_names_the_field_and_task():
  with pytest.raises(ValueError, match="weights: unknown task.*'sge'"):
    TASKS.vector({'depth': 1.0, 'sge': 2.0}, 'weights')
  with pytest.raises(ValueError, match='weights: expected 2 values'):
    TASKS.vector([1.0, 2.0, 3.0], 'weights')


def test_unknown_weighting_and_hyperparameter():
  with pytest.raises(ValueError, match="unknown weighting method 'mgdaa'"):
    weighting.get('mgdaa')
  with pytest.raises(ValueError, match="'ew': unknown hyperparameter.*'reduce'"):
    weighting.get('ew', reduce='mean')
  with pytest.raises(ValueError, match='static: 3 weights given for 2 tasks'):
    weighting.get('static', weights=[1.0, 1.0, 1.0]).init(2)


@pytest.mark.parametrize('key,value,message', [
    ('optim.lr', -1.0, 'config.optim.lr: must be > 0'),
    ('train.on_nonfinite', 'ignore', 'config.train.on_nonfinite'),
    ('model.name', 'transformerx', 'config.model.name'),
    ('weighting.name', 'nope', 'config.weighting.name'),
    ('optim.momentum', -0.9, 'config.optim.momentum'),
    ('model.tower_hidden', (True,), 'config.model.tower_hidden'),
    ('train.batch_size', 0, 'config.train.batch_size'),
    ('model.mlp.hidden', (16, -2), 'config.model.mlp.hidden'),
])
def test_bad_config_values_name_the_field(key, value, message):
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(tiny_config(**{key: value}))


@pytest.mark.parametrize('overrides,message', [
    ({'data.synthetic.correlation': 1.5},
     r'config.data.synthetic: correlation must be in \[-1, 1\]'),
    ({'data.synthetic.num_tasks': 4, 'data.synthetic.correlation': -0.5},
     r'correlation must be in \[-0.333333, 1\]'),
    ({'data.synthetic.preset': 'paper'}, 'config.data.synthetic: unknown preset'),
    ({'data.synthetic.noise_std': -1.0}, 'config.data.synthetic: need .*noise_std >= 0'),
])
def test_bad_data_config_names_the_field(overrides, message):
  from mtl_jax import train
  with pytest.raises(config_validation.ConfigError, match=message):
    train.build_dataset(tiny_config(**overrides))


def test_unknown_config_key_names_the_field():
  config = tiny_config()
  with config.unlocked():
    config.optim.learning_rate = 0.1
  with pytest.raises(config_validation.ConfigError, match='config.optim.learning_rate: unknown'):
    config_validation.validate(config)



def test_labels_out_of_range_name_the_data_set_split_and_task():
  tasks = T.TaskSet([T.binary('smiling'), T.multiclass('digit', 10)])
  split = {'inputs': np.zeros((4, 2), np.float32),
           'labels': {'smiling': np.array([0.0, 1.0, 2.0, 0.0]), 'digit': np.arange(4)}}
  from mtl_jax.data import MultiTaskDataset, RecordSource
  with pytest.raises(ValueError, match=r"data set 'faces', split 'train': task 'smiling': "
                                       r'binary labels must be in \[0, 1\]'):
    MultiTaskDataset('faces', tasks, {'train': split})
  split['labels']['smiling'] = np.array([0.0, 1.0, 1.0, 0.0])
  split['labels']['digit'] = np.array([1, 10, 2, 3])
  with pytest.raises(ValueError, match=r"split 'test': task 'digit': class labels must be "
                                       r'integers in \[0, 10\)'):
    MultiTaskDataset('faces', tasks, {'test': split})
  # A masked-out label is not checked (it is missing).
  MultiTaskDataset('faces', tasks, {'test': dict(split, masks={'digit': np.arange(4) != 1})})
  # A lazy split is checked on its first record when the data set is built.
  rows = [{'inputs': np.zeros(2, np.float32), 'labels': {'smiling': 3.0, 'digit': 0}}]
  with pytest.raises(ValueError, match=r"split 'val': task 'smiling'"):
    MultiTaskDataset('faces', tasks, {'val': RecordSource(rows, lambda r: r, 'faces/val')})
