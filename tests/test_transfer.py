"""Transfer learning: grafting pretrained params, freezing, per-group learning rates,
pretraining on one task, single-task data views."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import os
import pytest

from mtl_jax import train, transfer
from mtl_jax.train import ConfigError
from mtl_jax.data import make_synthetic, select_tasks
from tests.conftest import tiny_config


def _final_params(workdir, step):
  path = os.path.abspath(os.path.join(workdir, 'checkpoints', str(step), 'state'))
  return ocp.StandardCheckpointer().restore(path)['params']


def test_graft_replaces_the_target_and_broadcasts_to_stacked_copies():
  params = {'shared': {'experts': {'w': jnp.zeros((3, 2, 4))}, 'gate': jnp.zeros((5,))},
            'task': {'w': jnp.zeros((2,))}}
  pretrained = {'w': jnp.arange(8.0).reshape(2, 4)}
  out = transfer.graft(params, pretrained, 'shared/experts')
  for copy in range(3):
    np.testing.assert_array_equal(out['shared']['experts']['w'][copy], pretrained['w'])
  assert out['shared']['gate'] is params['shared']['gate'] and out['task'] is params['task']
  with pytest.raises(ValueError, match=r"transfer.target: no 'expert' under shared; it has "
                                       r"\['experts', 'gate'\]"):
    transfer.graft(params, pretrained, 'shared/expert')
  with pytest.raises(ValueError, match=r"transfer.target: shared/experts\['w'\] has shape "
                                       r"\(3, 2, 4\), the pretrained leaf \(4, 2\)"):
    transfer.graft(params, {'w': jnp.zeros((4, 2))}, 'shared/experts')


def test_lr_ratio_scales_only_the_target_group():
  params = {'shared': {'w': jnp.ones((3,))}, 'task': {'w': jnp.ones((2,))}}
  grads = jax.tree.map(lambda p: 2 * jnp.ones_like(p), params)
  make = lambda lr: optax.sgd(lr)
  tx = transfer.partition_optimizer(make, optax.constant_schedule(0.1), 'shared', lr_ratio=0.25)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['shared']['w'], -0.1 * 0.25 * 2)
  np.testing.assert_allclose(updates['task']['w'], -0.1 * 2)
  frozen = transfer.partition_optimizer(make, optax.constant_schedule(0.1), 'shared', freeze=True)
  updates, _ = frozen.update(grads, frozen.init(params), params)
  np.testing.assert_array_equal(updates['shared']['w'], 0)


def test_select_tasks_keeps_one_task():
  ds = make_synthetic(3, 0.5, input_dim=4, sizes=(8, 4, 4))
  one = select_tasks(ds, ['y2'])
  assert one.tasks.names == ('y2',)
  np.testing.assert_array_equal(one.split('train')['labels']['y2'], ds.split('train')['labels']['y2'])
  with pytest.raises(ValueError, match=r"has no task\(s\) \['y4'\]"):
    select_tasks(ds, ['y4'])
  with pytest.raises(ValueError, match="tasks must be distinct names among"):
    select_tasks(ds, ['y1', 'y1'])


def test_init_from_an_earlier_run_then_frozen_fine_tuning(tmp_path):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(tiny_config(**{'train.steps': 10}), source)
  pretrained = _final_params(source, 10)['shared']
  config = tiny_config(**{'train.steps': 10, 'data.synthetic.num_tasks': 3,
                          'transfer.init_from': source, 'transfer.freeze': True,
                          'weighting.name': 'mgda'})
  # The state the run starts from: the pretrained encoder grafted, fresh heads.
  start = train.build(config, str(tmp_path / 'start'))
  initial, _ = train.init_or_restore(start)
  jax.tree.map(np.testing.assert_array_equal, initial.params['shared'], pretrained)
  before = train.evaluate_splits(start, initial)['test']
  target = str(tmp_path / 'target')
  results = train.train_and_evaluate(config, target)
  assert results['rejected_steps'] == 0
  tuned = _final_params(target, 10)
  # Frozen: the encoder is exactly the pretrained one after 10 steps; the heads trained on
  # it: they moved, and every task's test MSE went down.
  jax.tree.map(np.testing.assert_array_equal, tuned['shared'], pretrained)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), tuned['task'],
                       jax.device_get(initial.params['task']))
  assert min(jax.tree_util.tree_leaves(moved)) > 0, moved
  for task in results['tasks']:
    assert results['metrics'][task]['mse'] < before[task]['mse'], (task, before, results)


def test_pretrain_on_one_task_then_fine_tune_everything(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(**{'train.steps': 10, 'transfer.pretrain_task': 'y2',
                          'transfer.pretrain_steps': 10, 'transfer.lr_ratio': 0.1})
  results = train.train_and_evaluate(config, workdir)
  pre = os.path.join(workdir, 'pretrain')
  import json
  pre_results = json.load(open(os.path.join(pre, 'results.json')))
  assert pre_results['tasks'] == ['y2'] and results['tasks'] == ['y1', 'y2']
  pretrained = _final_params(pre, 10)['shared']
  tuned = _final_params(workdir, 10)['shared']
  # Fine-tuned at a tenth of the learning rate: moved, but not far from the pretrained one.
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(pretrained)))
  assert 0 < diff < 10 * 1e-3 * 0.1 * 1.01 + 1e-6   # Adam moves each weight <= ~lr per step


@pytest.mark.parametrize('overrides,message', [
    ({'transfer.lr_ratio': 0.0}, 'config.transfer.lr_ratio: must be > 0'),
    ({'transfer.init_from': '/nonexistent', 'train.steps': 2},
     "transfer.init_from: no directory '/nonexistent'"),
    ({'transfer.pretrain_task': 'y9', 'train.steps': 2}, 'config.data.tasks: .*y9'),
    ({'transfer.target': 'shared/nope', 'transfer.freeze': True, 'train.steps': 2},
     "transfer.target: no 'nope' under shared"),
])
def test_bad_transfer_options_name_the_field(tmp_path, overrides, message):
  with pytest.raises((ConfigError, FileNotFoundError), match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
