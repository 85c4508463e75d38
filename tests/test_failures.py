"""Failing loudly: runs that stop learning stop, the CLI's errors are short, batch runs report
progress, and a finished run says it has nothing to do."""

import io
import json
import os
import subprocess
import sys

import pytest

from mtl_jax import train
from mtl_jax._src import monitor
from tests.conftest import REPO, tiny_config

HOPELESS = {'optim.name': 'sgd', 'optim.lr': 1e30, 'optim.momentum': 0.0}


def _policy(out, **kw):
  return monitor.RejectionPolicy(**{'window': 10, 'max_fraction': 0.5, 'warn_fraction': 0.1,
                                    'causes': 'X.', 'out': out, **kw})


def test_rejection_policy_warns_then_stops():
  out = io.StringIO()
  policy = _policy(out)
  for step in range(1, 11):                   # 1 of 10 rejected: above 10%? no (= 10%)
    policy.observe(step, step == 4)
  policy.check(10)
  assert out.getvalue() == ''
  policy.observe(11, True)                    # window 2..11: 2 of 10 rejected, first at 4
  policy.check(11)
  assert out.getvalue().count('\n') == 1 and '2 of the last 10' in out.getvalue()
  assert 'first at step 4' in out.getvalue()
  policy.observe(12, True)
  policy.check(12)                            # warned at most once per window
  assert out.getvalue().count('\n') == 1
  for step in range(13, 17):                  # window 7..16: 6 of 10 rejected (11..16)
    policy.observe(step, True)
  with pytest.raises(monitor.TrainingStopped, match=r'step 16: 6 of the last 10 updates were '
                                                    r'rejected .* first of them at step 11'
                                                    r' \(7 rejected since step 4\).* X\.') as e:
    policy.check(16)
  assert (e.value.step, e.value.rejected) == (16, 7)


def test_rejection_policy_judges_a_short_session_at_its_end_only():
  policy = _policy(io.StringIO())
  for step in (1, 2, 3):
    policy.observe(step, step > 1)
  policy.check(3)                             # window not full, not the end: no verdict
  with pytest.raises(monitor.TrainingStopped, match='2 of the last 3'):
    policy.check(3, final=True)
  never = _policy(io.StringIO(), max_fraction=1.0)
  for step in range(1, 21):
    never.observe(step, True)
  never.check(20, final=True)                 # 1.0: never stops


def test_progress_lines_without_a_terminal():
  out = io.StringIO()
  progress = monitor.Progress(100, 40, ('a', 'b'), out=out, terminal=False)
  scalars = lambda r: {'loss': 3.0, 'loss/a': 1.0, 'loss/b': 2.0, 'rejected': r}
  progress.update([(50, scalars(1)), (60, scalars(0))])
  progress.update([])
  progress.close()
  (line,) = out.getvalue().splitlines()
  assert line.startswith('step 60/100  loss a=1 b=2  ') and line.endswith('rejected 1')
  assert 'steps/s' in line and 'ETA ' in line


def test_a_run_that_learns_nothing_stops_with_its_reason(tmp_path):
  config = tiny_config(**HOPELESS, **{'train.steps': 30, 'train.rejected_window': 10})
  with pytest.raises(train.TrainingStopped) as e:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  # Step 1's gradients are finite, so its (overflowing) update is applied; every later
  # step's losses are not finite, and those updates are rejected.
  assert message.startswith('step 10: 9 of the last 10 updates were rejected')
  assert 'config.optim.lr=1e+30' in message and 'first of them at step 2' in message
  record = json.load(open(tmp_path / 'results.json'))
  assert record['status'] == 'stopped' and record['steps'] == 10
  assert record['rejected_steps_this_session'] == 9 and record['stop_reason'] == message
  # The stop comes before the step-10 checkpoint: nothing of the stuck run is saved.
  assert not [d for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]


def test_a_finished_run_says_so_and_states_rejected_updates(tmp_path, capsys):
  first = train.train_and_evaluate(tiny_config(**{'train.steps': 10}), str(tmp_path))
  assert first['status'] == 'completed' and first['rejected_steps'] == 0
  assert 'tiny: 10 steps, 0 updates rejected as non-finite (0.0%)' in capsys.readouterr().out
  again = train.train_and_evaluate(tiny_config(**{'train.steps': 10}), str(tmp_path))
  out = capsys.readouterr().out
  assert out.index('already trained to step 10') < out.index('test metrics after 10 steps')
  assert 'nothing to do' in out and again['resumed_from_step'] == 10


def _cli(workdir, *args):
  return subprocess.Popen(
      [sys.executable, '-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py',
       f'--workdir={workdir}', *args], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))


CLI_ERRORS = [  # (arguments, exit status, the message's start)
    (['--config.optim.lrr=1'], 2,
     'mtl_jax: config.optim.lrr: unknown config key; did you mean config.optim.lr?'),
    (['--config.optimm.lr=1'], 2, 'mtl_jax: config.optimm.lr: unknown config key'),
    (['--config=mtl_jax/configs/nope.py'], 2,
     'mtl_jax: --config=mtl_jax/configs/nope.py: no such file; the built-in configs are'),
    (['--config.optim.lr=abc'], 2, 'mtl_jax: --config.optim.lr=abc: could not convert'),
    (['--config.train.steps=0'], 2, 'mtl_jax: config.train.steps: must be an integer > 0'),
    (['--config.train.num_devices=64'], 2, 'mtl_jax: config.train.num_devices: must be in'),
    (['--config.train.max_rejected_fraction=0'], 2,
     'mtl_jax: config.train.max_rejected_fraction: must be in (0, 1]'),
    (['surplus'], 2, "mtl_jax: unexpected arguments ['surplus']"),
    ([*(f'--config.{k}={v}' for k, v in HOPELESS.items()), '--config.train.steps=20',
      '--config.train.rejected_window=20'], 1,
     'mtl_jax: TrainingStopped: step 20: 19 of the last 20 updates were rejected'),
]


def test_cli_errors_are_two_lines_with_the_exit_status(tmp_path):
  (tmp_path / 'a_file').write_text('')
  cases = CLI_ERRORS + [([f'--workdir={tmp_path / "a_file"}'], 2,
                         f"mtl_jax: workdir '{tmp_path / 'a_file'}' is a file, not a directory")]
  procs = [_cli(tmp_path / f'run{i}', *args) for i, (args, _, _) in enumerate(cases)]
  outputs = {}
  for (args, status, start), proc in zip(cases, procs):
    out, err = proc.communicate(timeout=300)
    outputs[status] = (out, err)
    lines = [l for l in err.splitlines() if not l.startswith('warning: ')]
    assert proc.returncode == status, (args, err[-2000:])
    assert len(lines) <= 2 and lines[0].startswith(start), (args, err[-2000:])
    assert 'Traceback' not in err
  # The stopped run (the only one with status 1) reported progress on stdout (no terminal)
  # and warned on the way.
  out, err = outputs[1]
  assert 'step 10/20  loss y1=' in out and out.rstrip().endswith('rejected 19')
  assert 'warning: step 10: 9 of the last 10 updates were rejected' in err


def test_cli_debug_flag_keeps_the_traceback(tmp_path):
  proc = _cli(tmp_path, '--config.optim.lrr=1', '--debug')
  _, err = proc.communicate(timeout=300)
  assert proc.returncode != 0 and 'Traceback' in err and 'lrr' in err


def test_the_api_step_counts_bad_labels_and_inputs_in_its_metrics():
  """Through make_train_step (no data pipeline): class -1 and 2.7 and a mask 0.3 are left out
  of the loss and counted; a NaN input makes the update rejected and is counted."""
  import jax
  import numpy as np
  import optax
  from mtl_jax import init_train_state, make_train_step, models, tasks as T, weighting
  tasks = T.TaskSet([T.multiclass('c', 3), T.regression('r')])
  model = models.get('shared_bottom', tasks, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=())
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(8, 4)).astype(np.float32),
           'labels': {'c': np.array([0, 1, 2, -1, 2.7, 1, 0, 2], np.float32),
                      'r': rng.normal(size=(8,)).astype(np.float32)},
           'masks': {'r': np.array([1, 1, 0.3, 1, 1, 0, 1, 1], np.float32)}}
  state = init_train_state(model, tasks, optax.sgd(0.1), weighting.get('ew'), batch['inputs'],
                           jax.random.PRNGKey(0))
  step = make_train_step(model, tasks, optax.sgd(0.1), weighting.get('ew'))
  _, metrics = step(state, batch)
  np.testing.assert_array_equal(metrics['invalid_labels'], [2, 1])
  assert int(metrics['rejected']) == 0 and int(metrics['nonfinite_inputs']) == 0
  batch['inputs'][5, 1] = np.nan
  state = init_train_state(model, tasks, optax.sgd(0.1), weighting.get('ew'), batch['inputs'],
                           jax.random.PRNGKey(0))
  _, metrics = step(state, batch)
  assert int(metrics['rejected']) == 1 and int(metrics['nonfinite_inputs']) == 1
