"""Two processes through jax.distributed (2 CPU devices each, gloo collectives) train exactly
what one process with 4 devices trains, uninterrupted and resumed; joining fails clearly.

The reference is the single-process run: the same experiment on a 4-device mesh, without
jax.distributed.  Each worker trains 2N steps in one go, and N steps then (a fresh build
restoring the checkpoint) on to 2N, and reports the final params restored from each
workdir's checkpoint; the two processes then try configs that differ in one field.
"""

import json
import os
import textwrap
import time

import numpy as np
import pytest

from mtl_jax._src import distributed
from mtl_jax._src.config_validation import ConfigError
from tests.conftest import free_port, start_python, tiny_config

N = 4                   # steps before the interruption; the runs go on to 2 N
TOLERANCE = 1e-5

WORKER = textwrap.dedent('''
    import json, os, sys
    role, out, pid, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    import jax
    jax.config.update('jax_num_cpu_devices', 4 if role == 'single' else 2)  # before JAX starts
    import numpy as np
    from mtl_jax import train
    from tests.conftest import tiny_config

    N = int(os.environ['MULTIHOST_N'])

    def config(steps, **extra):
        overrides = {'train.steps': steps, 'train.checkpoint_every': N, 'train.log_every': N,
                     'weighting.name': 'uw', 'model.dropout': 0.1, **extra}
        if role == 'multi':
            overrides.update({'distributed.coordinator_address': f'127.0.0.1:{port}',
                              'distributed.num_processes': 2, 'distributed.process_id': pid,
                              'distributed.timeout_s': 120})
        return tiny_config(**overrides)

    full, resumed = os.path.join(out, 'full'), os.path.join(out, 'resumed')
    record = {'full': train.train_and_evaluate(config(2 * N), full)}
    record['first_half'] = train.train_and_evaluate(config(N), resumed)
    record['resumed'] = train.train_and_evaluate(config(2 * N), resumed)
    report = {'process_count': jax.process_count(), 'process_index': jax.process_index(),
              'devices': [str(d) for d in jax.devices()],
              'local_devices': [str(d) for d in jax.local_devices()],
              'resumed_from_step': record['resumed']['resumed_from_step'],
              'metrics': {k: r['metrics'] for k, r in record.items()}}
    for name, workdir in (('full', full), ('resumed', resumed)):
        run = train.build(config(2 * N), workdir)       # the run's own restore, every process
        state, step = train.init_or_restore(run)
        run.checkpointer.close()
        assert step == 2 * N, step
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}  # replicated
        if jax.process_index() == 0:
            np.savez(os.path.join(out, f'params_{name}.npz'), **arrays)
    if role == 'multi':           # process 1 alone sets another learning rate
        try:
            train.train_and_evaluate(config(2 * N, **{'optim.lr': 0.01 if pid else 1e-3}),
                                     os.path.join(out, 'mismatch'))
            report['mismatch'] = None
        except train.ConfigError as e:
            report['mismatch'] = str(e)
    with open(os.path.join(out, f'report_{pid}.json'), 'w') as f:
        json.dump(report, f)
''')

WATCHDOG = textwrap.dedent('''
    import sys, time
    from mtl_jax import parallel
    start = time.monotonic()
    print('joining', flush=True)
    parallel.initialize(f'127.0.0.1:{sys.argv[1]}', num_processes=2, process_id=0, timeout_s=2)
    print('joined: unexpected', flush=True)
''')


def _finish(procs, timeout=600):
  """``[(returncode, stdout, stderr)]`` of the started processes, killing any left over."""
  deadline, out = time.monotonic() + timeout, []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
    except Exception:  # pylint: disable=broad-except  # a timeout: kill it, show its output
      p.kill()
      stdout, stderr = p.communicate()
    out.append((p.returncode, stdout, stderr))
  return out


def _params(directory, name):
  with np.load(os.path.join(directory, f'params_{name}.npz')) as f:
    return {k: f[k] for k in f.files}


def _max_diff(a, b):
  assert sorted(a) == sorted(b)
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def _losses(workdir):
  """``[step, loss/<task>...]`` rows of ``metrics.jsonl``, in file order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  keys = sorted(k for k in lines[0] if k.startswith('loss/'))
  return np.array([[l['step']] + [l[k] for k in keys] for l in lines])


def _metric_diff(a, b):
  return max(abs(a[t][m] - b[t][m]) for t in a for m in a[t])


def test_two_processes_train_what_one_process_with_four_devices_trains(tmp_path):
  port, multi, single = free_port(), tmp_path / 'multi', tmp_path / 'single'
  env = {'MULTIHOST_N': str(N)}
  procs = [start_python(['-c', WORKER, 'multi', str(multi), str(i), str(port)], env=env)
           for i in (0, 1)]
  procs.append(start_python(['-c', WORKER, 'single', str(single), '0', '0'], env=env))
  start = time.monotonic()
  finished = _finish(procs)
  elapsed = time.monotonic() - start
  for code, stdout, stderr in finished:
    assert code == 0, (stdout[-2000:], stderr[-4000:])
  reports = [json.loads((multi / f'report_{i}.json').read_text()) for i in (0, 1)]
  reference = json.loads((single / 'report_0.json').read_text())

  # Really two processes, each with its 2 devices, on one 4-device mesh; the reference alone.
  assert [r['process_count'] for r in reports] == [2, 2]
  assert [r['process_index'] for r in reports] == [0, 1]
  assert len(reports[0]['devices']) == 4 and reports[0]['devices'] == reports[1]['devices']
  assert not set(reports[0]['local_devices']) & set(reports[1]['local_devices'])
  assert reference['process_count'] == 1 and len(reference['devices']) == 4
  assert reports[0]['resumed_from_step'] == reference['resumed_from_step'] == N

  # Final params: uninterrupted and resumed, two processes against one.
  want = _params(single, 'full')
  diffs = {'multi_full': _max_diff(_params(multi, 'full'), want),
           'multi_resumed': _max_diff(_params(multi, 'resumed'), want),
           'single_resumed': _max_diff(_params(single, 'resumed'), want)}
  # Every step's task losses (metrics.jsonl of process 0), and the final test metrics.
  ref_losses = _losses(single / 'full')
  for run in ('full', 'resumed'):
    got = _losses(multi / run)
    assert got.shape == ref_losses.shape == (2 * N, ref_losses.shape[1])  # no line twice
    assert np.array_equal(got[:, 0], np.arange(1, 2 * N + 1))
    diffs[f'losses_{run}'] = float(np.max(np.abs(got[:, 1:] - ref_losses[:, 1:])))
    diffs[f'test_{run}'] = _metric_diff(reports[0]['metrics'][run], reference['metrics']['full'])
  print(f'max differences from the 1-process 4-device run: {diffs}; {elapsed:.0f} s')
  assert max(diffs.values()) <= TOLERANCE, diffs
  assert np.ptp(ref_losses[:, 1:], axis=0).min() > 100 * TOLERANCE   # the losses moved

  # Process 0 alone wrote the logs: one TensorBoard file per session, as the reference.
  for run, sessions in (('full', 1), ('resumed', 2)):
    assert len(os.listdir(multi / run / 'tensorboard')) == sessions
  assert json.loads((multi / 'full' / 'results.json').read_text())['devices'] == \
      reports[0]['devices']

  # Different configs: both processes stop, naming the field and each process's value.
  for r in reports:
    assert r['mismatch'] is not None and r['mismatch'].startswith(
        'the 2 processes were started with different configs: config.optim.lr: 0.001 on '
        'process 0, 0.01 on process 1.'), r['mismatch']
  assert not (multi / 'mismatch').exists()


def test_joining_fails_clearly_within_the_timeout(tmp_path):
  port = free_port()                           # nothing listens there
  cli = start_python(['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py',
                      f'--workdir={tmp_path / "run"}',
                      f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                      '--config.distributed.num_processes=2',
                      '--config.distributed.process_id=1', '--config.distributed.timeout_s=2'])
  alone = start_python(['-c', WATCHDOG, str(free_port())])   # process 0 whose peer never comes
  (code, stdout, stderr), (alone_code, alone_out, alone_err) = _finish([cli, alone], 120)
  # Process 1: the coordinator's port never opens: one line naming address, field, timeout.
  assert code == 2, (stdout, stderr)
  assert stderr.startswith(
      f'mtl_jax: could not reach the coordinator (process 0) at 127.0.0.1:{port} '
      '(config.distributed.coordinator_address) within config.distributed.timeout_s=2 s: '), stderr
  assert len(stderr.splitlines()) == 2 and not (tmp_path / 'run').exists()
  # Process 0: the others never register: the watchdog's line, not jax's abort.
  assert alone_code == 2 and alone_out.startswith('joining'), (alone_out, alone_err)
  assert 'mtl_jax: process 0 of 2 could not join the others at 127.0.0.1:' in alone_err
  assert 'within timeout_s=2 s: not every process registered' in alone_err, alone_err
  assert 'Terminating process' not in alone_err and alone_out.strip() == 'joining'


# What joins, from which values (pure: no process is started).

SLURM = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[1-4]', 'SLURM_NTASKS': '4',
         'SLURM_PROCID': '2', 'SLURM_LOCALID': '0'}


def test_a_single_process_joins_nothing():
  assert distributed.plan(environ={}) is None
  assert distributed.plan(num_processes=1, environ=SLURM) is None     # explicit: one process
  assert distributed.plan(environ=dict(SLURM, SLURM_NTASKS='1')) is None
  assert distributed.plan('10.0.0.1:1234', 2, 0, mode='never', environ={}) is None
  assert distributed.initialize(num_processes=1) is False


def test_values_come_from_arguments_then_mtl_jax_variables_then_the_launcher():
  env = {'MTL_JAX_COORDINATOR': 'h0:99', 'MTL_JAX_NUM_PROCESSES': '3', 'MTL_JAX_PROCESS_ID': '2'}
  p = distributed.plan(environ=env)
  assert (p.coordinator_address, p.num_processes, p.process_id) == ('h0:99', 3, 2)
  assert p.labels['process_id'] == 'MTL_JAX_PROCESS_ID'
  p = distributed.plan(process_id=1, labels={'process_id': 'config.distributed.process_id'},
                       environ=env)
  assert p.process_id == 1 and p.labels['process_id'] == 'config.distributed.process_id'
  p = distributed.plan(environ=SLURM)              # jax's SLURM detection fills the rest
  assert p.launcher == 'SLURM' and p.coordinator_address is None and p.process_id is None
  p = distributed.plan(environ={'TPU_WORKER_HOSTNAMES': 'a,b'})
  assert p.launcher == 'TPU (GKE)'
  p = distributed.plan(environ={'JAX_COORDINATOR_ADDRESS': 'h:1', 'MTL_JAX_NUM_PROCESSES': '2',
                                'MTL_JAX_PROCESS_ID': '0'})
  assert p.coordinator_address == 'h:1' and p.labels['coordinator_address'] == \
      'JAX_COORDINATOR_ADDRESS'
  assert distributed.plan(mode='always', environ={}).num_processes is None  # jax detects


@pytest.mark.parametrize('kwargs, message', [
    (dict(coordinator_address='h:1'),
     'num_processes (or MTL_JAX_NUM_PROCESSES): must be set to run several processes'),
    (dict(num_processes=2, process_id=0), 'coordinator_address (or MTL_JAX_COORDINATOR): must'),
    (dict(coordinator_address='h', num_processes=2, process_id=0),
     "coordinator_address: must be 'host:port' with a port in [1, 65535]"),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     'process_id: must be in [0, 2), got 2'),
    (dict(mode='sometimes'), "mode: must be one of ('auto', 'always', 'never')"),
])
def test_missing_or_bad_values_name_the_field(kwargs, message):
  with pytest.raises(distributed.JoinError) as e:
    distributed.plan(environ={}, **kwargs)
  assert str(e.value).startswith(message), str(e.value)
  with pytest.raises(distributed.JoinError, match='MTL_JAX_PROCESS_ID: must be an integer'):
    distributed.plan(environ={'MTL_JAX_COORDINATOR': 'h:1', 'MTL_JAX_NUM_PROCESSES': '2',
                              'MTL_JAX_PROCESS_ID': 'one'})


@pytest.mark.parametrize('field, value, message', [
    ('distributed.coordinator_address', 'localhost', "must be 'host:port'"),
    ('distributed.coordinator_address', '[::1]:0', "must be 'host:port'"),
    ('distributed.num_processes', -1, 'must be an integer >= 0 (0: unset)'),
    ('distributed.process_id', 2, 'must be in [0, 2) (config.distributed.num_processes=2)'),
    ('distributed.process_id', -2, 'must be in [0, 2)'),
    ('distributed.timeout_s', 0, 'must be a number of seconds > 0'),
    ('distributed.local_device_ids', (0, 0), 'must be distinct device indices'),
    ('distributed.initialize', 'yes', "must be one of ('auto', 'always', 'never')"),
])
def test_bad_config_values_are_config_errors_naming_the_field(field, value, message):
  config = tiny_config(**{'distributed.num_processes': 2, field: value})
  with pytest.raises(ConfigError) as e:
    distributed.initialize_from_config(config)
  assert str(e.value).startswith(f'config.{field}: {message}'), str(e.value)


def test_joining_after_the_backend_started_is_a_clear_error():
  import jax  # pylint: disable=import-outside-toplevel
  jax.devices()                                  # starts the backend (as other tests here do)
  with pytest.raises(distributed.JoinError, match='must be initialised before anything starts'):
    distributed.initialize('127.0.0.1:1', num_processes=2, process_id=0, timeout_s=5)
  assert not jax.distributed.is_initialized()


def test_good_addresses_split():
  assert distributed.split_address('10.0.0.1:1234', 'f') == ('10.0.0.1', 1234)
  assert distributed.split_address('[::1]:8476', 'f') == ('::1', 8476)
  assert distributed.split_address('node-3.cluster:80', 'f') == ('node-3.cluster', 80)


def test_differences_name_every_field_and_process():
  base = distributed.config_fields(tiny_config(), '/runs/a')
  other = dict(base, **{'config.seed': '1'})
  assert distributed.describe_differences([base, base]) is None
  assert distributed.describe_differences([base, other, base]).startswith(
      'the 3 processes were started with different configs: config.seed: 0 on processes 0,2, '
      '1 on process 1. ')
  moved = distributed.config_fields(tiny_config(**{'distributed.process_id': 1}), '/runs/b')
  assert distributed.describe_differences([base, moved]).startswith(   # process_id: own
      "the 2 processes were started with different configs: workdir: '/runs/a' on process 0, "
      "'/runs/b' on process 1.")
