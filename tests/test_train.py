"""train_and_evaluate: outputs, one compilation, resume, non-finite losses, the CLI."""

import glob
import json
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtl_jax import train
from mtl_jax.train import ConfigError
from tests.conftest import run_python, tiny_config, train_tiny

RESULT_KEYS = {'config_name', 'status', 'tasks', 'metrics', 'split_metrics', 'higher_is_better', 'model',
               'weighting', 'steps', 'rejected_steps', 'num_params', 'resumed_from_step', 'train_step_traces',
               'train_time_s', 'wall_time_s', 'jax_version', 'devices'}


def test_outputs_and_a_single_compilation(tmp_path, capsys):
  workdir = str(tmp_path)
  results = train.train_and_evaluate(tiny_config(**{'data.synthetic.num_tasks': 3}), workdir)
  assert set(results) == RESULT_KEYS
  on_disk = json.load(open(os.path.join(workdir, 'results.json')))
  assert on_disk == json.loads(json.dumps(results))
  assert results['tasks'] == ['y1', 'y2', 'y3'] and results['steps'] == 30
  assert results['train_step_traces'] == 1
  assert results['jax_version'] == jax.__version__ and results['devices']
  assert set(results['metrics']['y2']) == {'mse', 'mae', 'count'}
  assert results['metrics']['y2']['count'] == 96
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == list(range(1, 31))
  assert {'loss/y3', 'weight/y1', 'grad_norm', 'param_norm', 'lr', 'rejected',
          'invalid_labels/y2', 'nonfinite_inputs'} <= set(lines[0])
  assert lines[0]['invalid_labels/y2'] == 0 and results['status'] == 'completed'
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert steps == [10, 20, 30]
  table = capsys.readouterr().out
  assert 'test metrics after 30 steps' in table and 'mse ↓' in table and 'y3' in table

  # Running again resumes from the final checkpoint: nothing to train, the same results.
  again = train.train_and_evaluate(tiny_config(**{'data.synthetic.num_tasks': 3}), workdir)
  assert again['resumed_from_step'] == 30 and again['metrics'] == results['metrics']
  assert len(open(os.path.join(workdir, 'metrics.jsonl')).readlines()) == 30


def test_static_weights_from_the_config(tmp_path):
  results = train.train_and_evaluate(
      tiny_config(**{'weighting.name': 'static', 'weighting.static.weights': (2.0, 0.25)}),
      str(tmp_path))
  line = json.loads(open(os.path.join(tmp_path, 'metrics.jsonl')).readline())
  assert (line['weight/y1'], line['weight/y2']) == (2.0, 0.25)
  assert line['loss'] == pytest.approx(2.0 * line['loss/y1'] + 0.25 * line['loss/y2'], rel=1e-5)
  assert results['weighting'] == 'static'


DIVERGENT = {'optim.name': 'sgd', 'optim.lr': 1e3, 'optim.momentum': 0.0,
             'train.checkpoint_every': 1, 'train.steps': 40}


def test_nonfinite_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(train.NonFiniteLossError,
                     match=r'step (\d+): (non-finite (loss|gradient)|the update overflowed)') as e:
    train.train_and_evaluate(tiny_config(**DIVERGENT, **{'train.on_nonfinite': 'raise'}),
                             str(tmp_path))
  bad_step = int(e.value.args[0].split()[1].rstrip(':'))
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps and max(steps) == bad_step - 1  # nothing saved at or after the bad step
  restored = ocp.StandardCheckpointer().restore(str(tmp_path / 'checkpoints' / str(max(steps))
                                                    / 'state'))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored['params']))
  assert int(restored['num_rejected']) == 0


def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
  # max_rejected_fraction=1: never stop (most of these updates are rejected).
  results = train.train_and_evaluate(
      tiny_config(**DIVERGENT, **{'train.max_rejected_fraction': 1.0}), str(tmp_path))
  assert 0 < results['rejected_steps'] < 40 and results['steps'] == 40
  restored = ocp.StandardCheckpointer().restore(str(tmp_path / 'checkpoints' / '40' / 'state'))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored['params']))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert sum(l['rejected'] for l in lines) == results['rejected_steps']
  assert any(math.isnan(l['loss']) or math.isinf(l['loss']) for l in lines)
  # A rejected step leaves the params as they were: the same norm as the step before.
  for before, now in zip(lines, lines[1:]):
    if now['rejected']:
      assert now['param_norm'] == before['param_norm']


def test_resume_with_a_changed_config_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(**{'train.steps': 10}), str(tmp_path))
  with pytest.raises(ConfigError, match=r'config.model.mlp.hidden: \[16\] in the checkpointed run'):
    train.train_and_evaluate(tiny_config(**{'train.steps': 20, 'model.mlp.hidden': (32,)}),
                             str(tmp_path))
  # More steps, same run: allowed, and resumes where it stopped.
  results = train.train_and_evaluate(tiny_config(**{'train.steps': 20}), str(tmp_path))
  assert results['resumed_from_step'] == 10 and results['steps'] == 20


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
  writer = train.MetricWriter(str(tmp_path), ('y1', 'y2'), resume_step=2)
  writer.write(3, {'loss': 0.25})
  writer.close()
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')]
  assert steps == [1, 2, 3]


def test_metrics_every_writes_every_nth_step_but_checks_them_all(tmp_path):
  """With every=3 the file keeps steps 3, 6 and each flush's last; a rejected update at a
  step it does not write still stops an on_nonfinite='raise' run, naming that step."""
  ok = {'loss': 1.0, 'grad_norm': 1.0, 'rejected': 0.0, 'losses': [1.0, 2.0]}
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  writer = train.MetricWriter(str(tmp_path / 'a'), ('y1', 'y2'), every=3)
  for step in range(1, 8):
    writer.add(step, ok)
  assert [s for s, _ in writer.flush()] == list(range(1, 8))     # all checked and returned
  writer.close()
  assert [json.loads(l)['step'] for l in open(tmp_path / 'a' / 'metrics.jsonl')] == [3, 6, 7]
  writer = train.MetricWriter(str(tmp_path / 'b'), ('y1', 'y2'), on_nonfinite='raise', every=3)
  writer.add(1, ok)
  writer.add(2, {**ok, 'rejected': 1.0, 'losses': [float('nan'), 2.0]})
  writer.add(3, ok)
  with pytest.raises(train.NonFiniteLossError, match=r"step 2: non-finite loss for task\(s\) \['y1'\]"):
    writer.flush()


def test_cli_overrides_and_config_errors(tmp_path):
  base = ['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py', f'--workdir={tmp_path}']
  proc = run_python(base + ['--config.train.steps=12', '--config.weighting.ew.reduction=mean'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / 'results.json'))['steps'] == 12
  line = json.loads(open(tmp_path / 'metrics.jsonl').readline())
  assert line['weight/y1'] == 0.5

  proc = run_python(base + ['--config.optim.lr=-1'])
  assert proc.returncode != 0 and 'config.optim.lr: must be > 0' in proc.stderr
  proc = run_python(base + ['--config.optim.lrr=0.1'])
  assert proc.returncode != 0 and 'lrr' in proc.stderr


def test_plateau_schedule_cuts_the_lr_on_a_plateau_down_to_its_floor(tmp_path):
  """schedule 'plateau' with an improvement no positive loss can make (rtol 1): every `every`-step
  window is a plateau, so the logged lr halves every `patience` windows until min_lr."""
  train_tiny(tmp_path, **{'train.steps': 12, 'optim.lr': 0.01, 'optim.schedule': 'plateau',
                          'optim.plateau.rtol': 1.0, 'optim.plateau.every': 2,
                          'optim.plateau.patience': 1, 'optim.plateau.factor': 0.5,
                          'optim.plateau.min_lr': 0.0025})
  lrs = [json.loads(l)['lr'] for l in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  assert lrs[0] == pytest.approx(0.01)
  assert all(b <= a for a, b in zip(lrs, lrs[1:]))
  assert {round(lr, 6) for lr in lrs} == {0.01, 0.005, 0.0025}
  assert lrs[-1] == pytest.approx(0.0025)
