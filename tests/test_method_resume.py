"""The new stateful methods' state goes into the checkpoint: a run resumed from an earlier
checkpoint ends bitwise equal to the uninterrupted run, weighting state included; and a
stateless new method trains under task sampling from the command-line config."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtl_jax import train
from tests.conftest import tiny_config

RUN = {'train.steps': 6, 'train.checkpoint_every': 3, 'train.keep_checkpoints': 2,
       'train.log_every': 1, 'data.synthetic.num_tasks': 3,
       'data.synthetic.sizes': (192, 64, 64), 'model.dropout': 0.1}
# MoCo: a parameter-sized tracked Jacobian; FORUM: bilevel, its multipliers' running average;
# CR-MOGM over GradVac: a wrapper's EMA around a random method's EMA targets.
METHODS = {'moco': {}, 'forum': {}, 'cr_mogm': {'weighting.cr_mogm.base': 'gradvac'}}


def _state(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))


@pytest.mark.parametrize('name', sorted(METHODS))
def test_resumed_run_equals_uninterrupted_run_with_the_method_state(name, tmp_path):
  config = tiny_config(**RUN, **METHODS[name], **{'weighting.name': name})
  full, resumed = tmp_path / 'full', tmp_path / 'resumed'
  train.train_and_evaluate(config, str(full))
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '6')          # as if killed after step 3's save
  os.remove(resumed / 'results.json')
  results = train.train_and_evaluate(config, str(resumed))
  assert results['resumed_from_step'] == 3 and results['steps'] == 6

  a, b = _state(full, 6), _state(resumed, 6)
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert np.array_equal(x, y), f'{name}: differs at {jax.tree_util.keystr(path)}'
  # the weighting state is really there, and moved from its start
  start = _state(full, 3)['weighting_state']
  moved = jax.tree.map(lambda u, v: not np.array_equal(u, v), start, a['weighting_state'])
  assert jax.tree.leaves(a['weighting_state']) and any(jax.tree.leaves(moved)), name
  log_a = (full / 'metrics.jsonl').read_text().splitlines()
  log_b = (resumed / 'metrics.jsonl').read_text().splitlines()
  assert len(log_a) == 6 and log_a == log_b


@pytest.mark.parametrize('name', ['con_fig', 'fairgrad'])
def test_a_stateless_new_method_trains_under_task_sampling(name, tmp_path):
  """4 tasks, 3 drawn per step: the logged weights are 0 on exactly one task."""
  config = tiny_config(**{**RUN, 'data.synthetic.num_tasks': 4, 'model.dropout': 0.0,
                          'train.task_sampling': 3, 'weighting.name': name})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['steps'] == 6 and results['rejected_steps'] == 0
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  for line in lines:
    weights = np.array([line[f'weight/y{t}'] for t in range(1, 5)])
    assert np.all(np.isfinite(weights)) and np.sum(weights == 0) == 1, weights
