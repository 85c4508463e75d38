"""Checkpointing: a run killed with SIGKILL and resumed ends bitwise equal to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO, run_python

ARGS = ['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py', '--config.train.steps=400',
        '--config.train.checkpoint_every=25', '--config.train.keep_checkpoints=2',
        '--config.model.dropout=0.1']


def _final_state(workdir, step=400):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))


def _finished_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return [int(name) for name in os.listdir(directory) if name.isdigit()]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
  proc = run_python(ARGS + [f'--workdir={full}'])
  assert proc.returncode == 0, proc.stderr[-3000:]

  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  child = subprocess.Popen([sys.executable, *ARGS, f'--workdir={killed}'], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not any(s >= 50 for s in _finished_steps(killed)):
    assert child.poll() is None, 'the run ended before it could be killed'
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.005)
  assert child.poll() is None, 'the run finished before the kill: make it longer'
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert child.returncode == -signal.SIGKILL
  interrupted_at = max(_finished_steps(killed))
  assert 50 <= interrupted_at < 400

  proc = run_python(ARGS + [f'--workdir={killed}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(killed, 'results.json')))
  assert results['resumed_from_step'] >= interrupted_at and results['steps'] == 400

  a, b = _final_state(full), _final_state(killed)
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert len(flat_a) == len(flat_b) > 10
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert np.array_equal(x, y), f'differs at {jax.tree_util.keystr(path)}'
  # The per-step log of the resumed run is the uninterrupted run's log, line for line.
  log_a = open(os.path.join(full, 'metrics.jsonl')).read().splitlines()
  log_b = open(os.path.join(killed, 'metrics.jsonl')).read().splitlines()
  assert len(log_a) == 400 and log_a == log_b


def _as_saved_by_0_1(config) -> dict:
  """``config`` as version 0.1 wrote it to config.json: the synthetic data's options at the
  top of ``data``, '' for unset data-set paths, and no optimizer blocks."""
  saved = json.loads(config.to_json_best_effort())
  saved['data'].update(saved['data'].pop('synthetic'))
  for name in ('multimnist', 'celeb_a', 'census_income'):
    saved['data'][name] = {k: '' if v is None else v for k, v in saved['data'][name].items()}
  for name in [k for k, v in saved['optim'].items() if isinstance(v, dict)]:
    del saved['optim'][name]
  return saved


def test_a_run_checkpointed_by_version_0_1_resumes():
  """Checkpoints written before the config blocks moved resume (the keys are translated),
  and a real change is still refused, naming the key."""
  from mtl_jax.train import ConfigError
  from mtl_jax._src.config_validation import check_resumable  # the resume check, on purpose
  from tests.conftest import tiny_config
  config = tiny_config()
  check_resumable(_as_saved_by_0_1(config), config)
  changed = _as_saved_by_0_1(config)
  changed['data']['num_tasks'] = 3
  try:
    check_resumable(changed, config)
  except ConfigError as e:
    assert 'config.data.synthetic.num_tasks: 3 in the checkpointed run, 2 now' in str(e)
  else:
    raise AssertionError('a changed number of tasks was accepted')
