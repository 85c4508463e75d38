"""Writes docs/bad_inputs.md: every bad input we tried, tried again, and what each gets.

    JAX_PLATFORMS=cpu .venv/bin/python docs/make_bad_inputs.py     # about two minutes

Each case runs here, now (the command line in subprocesses, the library in-process), and is
classified from what actually happened:

* **clear error**: an exception or exit whose message names the field, task or step given in
  the case (the first line is quoted);
* **handled**: no error, and the documented handling was observed (the case checks it: the
  bad samples masked out and counted, the update rejected, the damaged checkpoint skipped);
* **unclear error** / **silent**: an error that does not name what is wrong, or nothing at
  all.  The script exits 1 if any case lands there.
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PATH = os.path.join(REPO, 'docs', 'bad_inputs.md')

CASES = []   # (group, what, function returning ('handled' | 'silent', text) or raising)


def case(group, what, expect):
  """Registers a case; ``expect``: the text a clear error message must contain."""
  def register(fn):
    CASES.append((group, what, expect, fn))
    return fn
  return register


def cli(*args, workdir=None):
  """``(exit status, stderr)`` of ``python -m mtl_jax.main`` on the tiny config."""
  workdir = workdir or tempfile.mkdtemp()
  proc = subprocess.run([sys.executable, '-m', 'mtl_jax.main',
                         '--config=mtl_jax/configs/tiny.py', f'--workdir={workdir}', *args],
                        cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  return proc.returncode, proc.stderr, proc.stdout


class CliFailure(Exception):
  pass


def cli_error(*args, workdir=None):
  status, err, _ = cli(*args, workdir=workdir)
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith('warning: ')]
  if status == 0:
    return 'silent', 'exit status 0'
  raise CliFailure(f'exit {status}, {len(lines)} line(s): {lines[0] if lines else ""}')


# ---- the command line and the config ---------------------------------------------------------

for flag, expect in [
    ('--config.optim.lrr=0.1', 'did you mean config.optim.lr'),
    ('--config.optimm.lr=0.1', 'config.optimm.lr'),
    ('--config=mtl_jax/configs/nope.py', 'no such file'),
    ('--config.optim.lr=abc', '--config.optim.lr'),
    ('--config.train.steps=0', 'config.train.steps'),
    ('--config.optim.lr=-1', 'config.optim.lr'),
    ('--config.train.num_devices=64', 'config.train.num_devices'),
    ('--config.train.mesh_shape=(3,2)', 'config.train.mesh_shape'),
    ('--config.train.shard=fsdp', 'config.train.shard'),
    ('--config.train.compute_dtype=float16', 'config.train.compute_dtype'),
    ('--config.train.grad_dtype=int8', 'config.train.grad_dtype'),
    ('--config.distributed.coordinator_address=127.0.0.1:9 --config.distributed.num_processes=2 '
     '--config.distributed.process_id=1 --config.distributed.timeout_s=2',
     'config.distributed.coordinator_address'),
    ('--config.distributed.num_processes=2 --config.distributed.process_id=5',
     'config.distributed.process_id'),
    ('--config.weighting.name=nope', 'config.weighting.name'),
    ('--config.model.name=nope', 'config.model.name'),
    ('--config.data.name=nope', 'config.data.name'),
    ('--config.optim.name=nope', 'config.optim.name'),
    ('--config.train.batch_size=100000', 'config.train.batch_size'),
    ('--config.weighting.name=famo --config.weighting.famo.beta=-1', 'config.weighting.famo'),
    ('--config.weighting.name=famo --config.train.task_sampling=1',
     'config.train.task_sampling'),
    ('--config.optim.warmup_steps=50', 'config.optim.warmup_steps'),
    ("--config.eval.splits=('dev',)", 'config.eval.splits'),
    ('--config.model.dropout=1.5', 'config.model.dropout'),
    ('--config.train.max_rejected_fraction=0', 'config.train.max_rejected_fraction'),
    ('--config.train.diagnostics_every=-1', 'config.train.diagnostics_every'),
    ('--config.eval.every=-5', 'config.eval.every'),
    ('--config.weighting.mode=nope', 'config.weighting.mode'),
    ('--config.weighting.name=mgda --config.weighting.mode=gram --config.weighting.chunk_size=2',
     'config.weighting.chunk_size'),
    ('--config.weighting.name=gradnorm --config.weighting.gradnorm.layer=last '
     '--config.weighting.mode=gram', 'reads the Jacobian'),
    ('--config.weighting.name=gradvac --config.weighting.gradvac.betta=0.1',
     'config.weighting.gradvac.betta'),
    ('--config.weighting.name=cr_mogm --config.weighting.cr_mogm.base=nope',
     'config.weighting.cr_mogm'),
    ('--config.weighting.name=cr_mogm --config.weighting.cr_mogm.base=cr_mogm',
     'config.weighting.cr_mogm'),
    ('--config.weighting.name=trimmed_mean --config.weighting.trimmed_mean.trim_number=1',
     'config.weighting.trimmed_mean'),
    ('--config.weighting.name=krum --config.data.synthetic.num_tasks=3 '
     '--config.data.synthetic.sizes=(192,64,64) --config.weighting.krum.n_byzantine=1',
     'config.weighting.krum'),
    ('--config.weighting.name=graddrop --config.weighting.graddrop.leak=(0.1,0.2,0.3)',
     'config.weighting.graddrop'),
    ('--config.weighting.name=pcd --config.weighting.pcd.tau=(0.1,0.2)', 'config.weighting.pcd'),
    ('--config.weighting.name=modo --config.train.batch_size=31', 'config.train.batch_size'),
    ('--config.weighting.name=modo --config.weighting.mode=rep --config.train.batch_size=30',
     'config.weighting.mode'),
    ('--config.weighting.name=moco --config.weighting.mode=rep', 'config.weighting.mode'),
    ('--config.weighting.name=forum --config.train.task_sampling=1',
     'config.train.task_sampling'),
    ('--config.weighting.name=auto_lambda --config.weighting.normalize=l2',
     'config.weighting.normalize'),
    ('--config.weighting.name=stch --config.weighting.groups=leaf', 'config.weighting.groups'),
    ('--config.weighting.name=mgda --config.weighting.normalize=l3',
     'config.weighting.normalize'),
    ('--config.weighting.name=mgda --config.weighting.groups=nomatch',
     'config.weighting.groups'),
    ('surplus', 'unexpected arguments'),
    ('--config.optim.schedule=plateau --config.optim.plateau.factor=2',
     'config.optim.plateau.factor'),
    ("--config.eval.delta_m_metrics=('',)", 'config.eval.delta_m_metrics'),
    ('--config.train.metrics_every=0', 'config.train.metrics_every'),
]:
  case('command line', f'`{flag}`', expect)(lambda flag=flag: cli_error(*flag.split()))


@case('command line', '`--workdir` is a file', 'is a file, not a directory')
def _workdir_file():
  path = tempfile.mktemp()
  open(path, 'w').close()
  return cli_error(workdir=path)


@case('command line', 'resume with a changed `--config.model.mlp.hidden`',
      'config.model.mlp.hidden')
def _changed_resume():
  workdir = tempfile.mkdtemp()
  cli('--config.train.steps=5', workdir=workdir)
  return cli_error('--config.train.steps=10', '--config.model.mlp.hidden=(32,)',
                   workdir=workdir)


def sweep_error(*args):
  """The error of ``python -m mtl_jax.sweep`` on the tiny config with ``args``."""
  proc = subprocess.run([sys.executable, '-m', 'mtl_jax.sweep', '--config=mtl_jax/configs/tiny.py',
                         f'--workdir={tempfile.mkdtemp()}', *args], cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith('warning: ')]
  if proc.returncode == 0:
    return 'silent', 'exit status 0'
  raise CliFailure(f'exit {proc.returncode}, {len(lines)} line(s): {lines[0] if lines else ""}')


for flags_, expect in [('--methods=ew,nope --seeds=2', '--methods: unknown weighting method'),
                       ('--methods=ew --seeds=0', '--seeds: must be an integer >= 1'),
                       ('--methods=ew --seeds=two', '--seeds: must be an integer >= 1'),
                       ('--methods=ew,ew', '--methods: a method is named twice'),
                       ('--methods=ew --sequential_check=mgda', '--sequential_check')]:
  case('sweep', f'`python -m mtl_jax.sweep {flags_}`', expect)(
      lambda flags_=flags_: sweep_error(*flags_.split()))


# ---- runs that go wrong ----------------------------------------------------------------------

@case('training', 'learning rate 1e30 (every update after the first rejected)',
      'updates were rejected')
def _hopeless():
  return cli_error('--config.optim.name=sgd', '--config.optim.lr=1e30', '--config.train.steps=20',
                   '--config.train.rejected_window=10')


@case('training', "a diverging run with `on_nonfinite='raise'`", 'The update was rejected')
def _raise():
  return cli_error('--config.optim.name=sgd', '--config.optim.lr=1e3',
                   '--config.train.on_nonfinite=raise', '--config.train.steps=40')


@case('training', 'a finished run started again', '')
def _finished():
  workdir = tempfile.mkdtemp()
  cli(workdir=workdir)
  status, _, out = cli(workdir=workdir)
  if status == 0 and 'already trained to step 30' in out and 'nothing to do' in out:
    return 'handled', '"tiny: already trained to step 30 in DIR; nothing to do", then its results'
  return 'silent', out[:200]


# ---- batches given to the train step by hand (no data pipeline) ------------------------------

def step_metrics(labels=None, masks=None, inputs=None):
  """The metrics of one ``make_train_step`` step on a hand-made batch of 8 samples of a
  3-class task 'c' and a regression task 'r'."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from mtl_jax import init_train_state, make_train_step, models, tasks as T, weighting
  tasks = T.TaskSet([T.multiclass('c', 3), T.regression('r')])
  model = models.get('shared_bottom', tasks, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=())
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(8, 4)).astype(np.float32) if inputs is None else inputs,
           'labels': {'c': np.array([0, 1, 2, 0, 1, 2, 0, 1]),
                      'r': rng.normal(size=(8,)).astype(np.float32), **(labels or {})},
           'masks': masks or {}}
  state = init_train_state(model, tasks, optax.sgd(0.1), weighting.get('ew'),
                           np.zeros((8, 4), np.float32), jax.random.PRNGKey(0))
  step = make_train_step(model, tasks, optax.sgd(0.1), weighting.get('ew'))
  _, metrics = step(state, batch)
  return jax.device_get(metrics), tasks, batch


def masked_and_counted(task_index, expected, **batch):
  metrics, tasks, full = step_metrics(**batch)
  counted = int(metrics['invalid_labels'][task_index])
  try:
    tasks.validate(full)
    host = 'validate() accepts it'
  except ValueError as e:
    host = f'validate() raises "{str(e)[:90]}..."'
  if counted == expected and not metrics['rejected']:
    return 'handled', (f'in the step: left out of the loss and metrics, counted in '
                       f'invalid_labels/{tasks.names[task_index]} = {counted}; on the host, '
                       f'{host}')
  return 'silent', f'invalid_labels {metrics["invalid_labels"]}, rejected {metrics["rejected"]}'


for value in (-1, 2.7, 3, float('nan')):
  labels = np.array([0, 1, 2, 0, value, 2, 0, 1], np.float32)
  case('batch (API path)', f'multiclass label {value}', '')(
      lambda labels=labels: masked_and_counted(0, 1, labels={'c': labels}))
for value in (0.3, 2.0, float('nan')):
  mask = np.array([1, 1, value, 1, 1, 1, 0, 1], np.float32)
  case('batch (API path)', f'mask {value}', '')(
      lambda mask=mask: masked_and_counted(1, 1, masks={'r': mask}))
case('batch (API path)', 'regression label NaN, unmasked', '')(
    lambda: masked_and_counted(1, 1, labels={'r': np.array([0, 1, np.nan, 0, 0, 1, 0, 1],
                                                           np.float32)}))
case('batch (API path)', 'regression label NaN, masked out', '')(
    lambda: masked_and_counted(1, 0, labels={'r': np.array([0, 1, np.nan, 0, 0, 1, 0, 1],
                                                           np.float32)},
                               masks={'r': np.array([1, 1, 0, 1, 1, 1, 1, 1], np.float32)}))


@case('batch (API path)', 'NaN in the inputs', '')
def _nan_inputs():
  inputs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  inputs[3, 1] = np.nan
  metrics, _, _ = step_metrics(inputs=inputs)
  if metrics['rejected'] and metrics['nonfinite_inputs'] == 1:
    return 'handled', 'the update is rejected; nonfinite_inputs = 1 in the metrics'
  return 'silent', str(metrics['rejected'])


@case('batch (API path)', 'label of the wrong shape', "task 'r'")
def _label_shape():
  step_metrics(labels={'r': np.zeros((8, 3), np.float32)})
  return 'silent', ''


@case('batch (API path)', 'a task\'s label missing from the batch', "task 'c'")
def _missing_label():
  from mtl_jax import tasks as T  # pylint: disable=import-outside-toplevel
  tasks = T.TaskSet([T.multiclass('c', 3), T.regression('r')])
  tasks.validate({'inputs': np.zeros((4, 2)), 'labels': {'r': np.zeros(4)}})
  return 'silent', ''


@case('batch (API path)', 'a mask for an unknown task', "'q'")
def _unknown_mask():
  step_metrics(masks={'q': np.ones(8, bool)})
  return 'silent', ''


# ---- data sets -------------------------------------------------------------------------------

def dataset_with(**labels_or_masks):
  from mtl_jax import tasks as T  # pylint: disable=import-outside-toplevel
  from mtl_jax.data import MultiTaskDataset  # pylint: disable=import-outside-toplevel
  tasks = T.TaskSet([T.binary('b'), T.multiclass('c', 3)])
  split = {'inputs': np.zeros((4, 2), np.float32),
           'labels': {'b': np.array([0.0, 1.0, 1.0, 0.0]), 'c': np.arange(4) % 3},
           'masks': {'b': np.ones(4, np.float32)}}
  for key, value in labels_or_masks.items():
    section, task = key.split('_')
    split[section][task] = value
  MultiTaskDataset('faces', tasks, {'train': split})
  return 'silent', 'the data set was built'


case('data set', 'binary label 2.0', "task 'b'")(
    lambda: dataset_with(labels_b=np.array([0.0, 2.0, 1.0, 0.0])))
case('data set', 'class label 3 of 3 classes', "task 'c'")(
    lambda: dataset_with(labels_c=np.array([0, 3, 1, 2])))
case('data set', 'mask 0.3', "task 'b'")(
    lambda: dataset_with(masks_b=np.array([1.0, 0.3, 1.0, 1.0], np.float32)))


@case('data set', 'NaN in the inputs', "inputs")
def _nan_dataset_inputs():
  inputs = np.zeros((4, 2), np.float32)
  inputs[1, 0] = np.nan
  from mtl_jax import tasks as T  # pylint: disable=import-outside-toplevel
  from mtl_jax.data import MultiTaskDataset  # pylint: disable=import-outside-toplevel
  MultiTaskDataset('faces', T.TaskSet([T.regression('r')]),
                   {'train': {'inputs': inputs, 'labels': {'r': np.zeros(4, np.float32)}}})
  return 'silent', ''


# ---- QM9 (the qm9 extra; a cache of the first 60 molecules) -----------------------------------

QM9_DIR = tempfile.mkdtemp()
QM9 = ['--config=mtl_jax/configs/qm9.py:cpu', f'--config.data.qm9.data_dir={QM9_DIR}',
       '--config.data.qm9.limit=60', '--config.data.qm9.test=10',
       '--config.data.qm9.validation=10', '--config.data.qm9.train_size=0',
       '--config.train.batch_size=8', '--config.train.steps=2']


def qm9_cli_error(*args):
  """The error of ``python -m mtl_jax.main`` on the QM9 config with ``args``."""
  proc = subprocess.run([sys.executable, '-m', 'mtl_jax.main', f'--workdir={tempfile.mkdtemp()}',
                         *QM9, *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lines = [l for l in proc.stderr.splitlines() if l.startswith('mtl_jax: ')]
  if proc.returncode == 0:
    return 'silent', 'exit status 0'
  raise CliFailure(f'exit {proc.returncode}: {lines[0] if lines else proc.stderr[-200:]}')


@case('QM9', 'a molecule larger than the node budget (`max_atoms=8`)', 'max_atoms=8')
def _qm9_budget():
  return qm9_cli_error('--config.data.qm9.max_atoms=8')


@case('QM9', '`train_size` larger than the training split', 'config.data.qm9.train_size')
def _qm9_train_size():
  return qm9_cli_error('--config.data.qm9.train_size=1000')


@case('QM9', 'the `qm9` extra not installed (qm9pack missing)', "pip install -e '.[qm9]'")
def _qm9_missing_extra():
  import importlib.util  # pylint: disable=import-outside-toplevel
  from mtl_jax._src.data import qm9_molecules  # pylint: disable=import-outside-toplevel
  real = importlib.util.find_spec
  importlib.util.find_spec = lambda name, *a: None if name == 'qm9pack' else real(name, *a)
  try:
    next(qm9_molecules.read_rows(1))
  finally:
    importlib.util.find_spec = real
  return 'silent', 'read the rows without qm9pack'


@case('QM9', 'a damaged cache (its record file cut short)', 'cannot be read')
def _qm9_damaged():
  from mtl_jax import data  # pylint: disable=import-outside-toplevel
  cache = tempfile.mkdtemp()
  data.load('qm9', data_dir=cache, limit=30, test=5, validation=5)
  for root, _, files in os.walk(cache):
    for name in files:
      if 'array_record' in name:
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(100)
  data.load('qm9', data_dir=cache, limit=30, test=5, validation=5)
  return 'silent', 'loaded'


# ---- the library path (combine, as_optax) ----------------------------------------------------

def method(name):
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  return weighting.get(name)


@case('library', '`combine(uw, ...)` with a NaN loss', '')
def _combine_nan():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  uw = method('uw')
  state = uw.init(2)
  out = weighting.combine(uw, jnp.ones((2, 3)), jnp.array([1.0, jnp.nan]), state=state)
  same = all(np.array_equal(a, b) for a, b in zip(np.asarray(state.log_vars),
                                                   np.asarray(out.state.log_vars)))
  if same and not bool(out.finite):
    return 'handled', 'finite=False, the state comes back unchanged, the direction is NaN'
  return 'silent', str(out.state.log_vars)


@case('library', '`combine(uw, ..., state=None)` at every call', 'state=method.init(2)')
def _combine_none():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  weighting.combine(method('uw'), jnp.ones((2, 3)), jnp.ones(2))
  return 'silent', ''


@case('library', '`combine(pcgrad, ...)` without a key', 'PRNG key')
def _combine_key():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  weighting.combine(method('pcgrad'), jnp.ones((2, 3)), jnp.ones(2))
  return 'silent', ''


@case('library', "`combine` with a state made for 3 tasks, given 2", 'made for 3 tasks')
def _combine_count():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  uw = method('uw')
  weighting.combine(uw, jnp.ones((2, 3)), jnp.ones(2), state=uw.init(3))
  return 'silent', ''


@case('library', '`as_optax(pcgrad, num_tasks=3)` given 2 task rows', '3')
def _optax_rows():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  tx = weighting.as_optax(method('pcgrad'), num_tasks=3, key=jax.random.PRNGKey(0))
  grads = jnp.ones((2, 4))
  tx.update(grads, tx.init(jnp.ones(4)), losses=jnp.ones(2))
  return 'silent', ''


@case('library', '`as_optax(famo, ...)` without saying how its after-step runs', 'after_step')
def _optax_famo():
  from mtl_jax import weighting  # pylint: disable=import-outside-toplevel
  weighting.as_optax(method('famo'), num_tasks=2)
  return 'silent', ''


@case('library', '`weighting.get` of an unknown method', "'nope'")
def _unknown_method():
  method('nope')
  return 'silent', ''


def _value_and_grad(losses_fn, name='mgda', shared=None, key=None):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import mtl_jax  # pylint: disable=import-outside-toplevel
  params = {'w': jnp.ones(3), 'head': jnp.ones(2)}
  shared = shared if shared is not None else {'w': True, 'head': False}
  vg = mtl_jax.mtl_value_and_grad(losses_fn, method(name), shared=shared)
  vg(params, method(name).init(2), key)
  return 'silent', ''


@case('library', '`mtl_value_and_grad` with `shared` not shaped like the params',
      'structure of params')
def _vg_shared():
  return _value_and_grad(lambda p: p['w'][:2] * p['head'], shared={'w': True})


@case('library', '`mtl_value_and_grad` whose `losses_fn` returns a scalar', '[T] per-task')
def _vg_scalar():
  return _value_and_grad(lambda p: (p['w'][:2] * p['head']).sum())


@case('library', '`mtl_value_and_grad(pcgrad)` called without a key', 'PRNG key')
def _vg_key():
  return _value_and_grad(lambda p: p['w'][:2] * p['head'], name='pcgrad')


@case('library', '`mtl_value_and_grad(..., stacked_heads=True)` without `losses_fn`',
      'losses_fn is required with stacked_heads')
def _vg_stacked():
  import mtl_jax  # pylint: disable=import-outside-toplevel
  mtl_jax.mtl_value_and_grad(None, method('mgda'), shared={'w': True},
                             representation_fn=lambda p: p, heads_fn=lambda z, p: z,
                             stacked_heads=True)
  return 'silent', ''


@case('library', '`mtl_value_and_grad` with `representation_fn` but no `heads_fn`',
      'go together')
def _vg_half_split():
  import mtl_jax  # pylint: disable=import-outside-toplevel
  mtl_jax.mtl_value_and_grad(lambda p: p['w'], method('mgda'), shared={'w': True},
                             representation_fn=lambda p: p)
  return 'silent', ''


@case('library', '`python -m mtl_jax.report` on a directory without metrics.jsonl',
      'has no metrics')
def _report_empty():
  proc = subprocess.run([sys.executable, '-m', 'mtl_jax.report', tempfile.mkdtemp()],
                        cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  if proc.returncode == 0:
    return 'silent', 'exit status 0'
  raise CliFailure(f'exit {proc.returncode}, {len(lines)} line(s): {lines[0] if lines else ""}')


# ---- checkpoints -----------------------------------------------------------------------------

_BASE = {}


def base_run() -> str:
  """A finished tiny run with checkpoints at steps 10, 20 and 30 (made once)."""
  if 'dir' not in _BASE:
    _BASE['dir'] = tempfile.mkdtemp() + '/run'
    cli('--config.train.checkpoint_every=10', workdir=_BASE['dir'])
  return _BASE['dir']


def _damage(name):
  """A damage of ``tests/test_checkpoint_damage.py`` (which locates the array data inside
  orbax's files), applied to a step directory."""
  from tests import test_checkpoint_damage  # pylint: disable=import-outside-toplevel
  return test_checkpoint_damage.DAMAGE[name][0]


DAMAGE = {
    'the first stored array cut short (data file truncated)': 'truncated data file',
    'a data file deleted': 'deleted data file',
    '200 bytes zeroed inside a stored array (values stay finite)': 'zeroed bytes in a data file',
    'the array metadata (`state/_METADATA`) deleted': 'deleted array metadata',
    'the `state` directory deleted': 'deleted state directory',
    'garbage in the data position (`data/metadata`)': 'garbage data position',
    'the data position (`data/metadata`) deleted': 'deleted data position',
}


def resume_after(damage, steps=(30,)):
  import pathlib  # pylint: disable=import-outside-toplevel
  workdir = tempfile.mkdtemp() + '/run'
  shutil.copytree(base_run(), workdir)
  for step in steps:
    _damage(damage)(pathlib.Path(workdir) / 'checkpoints' / str(step))
  status, err, _ = cli('--config.train.checkpoint_every=10', workdir=workdir)
  if status:
    lines = [l for l in err.splitlines() if l.startswith('mtl_jax:')]
    raise CliFailure(f'exit {status}: {lines[0] if lines else err[-300:]}')
  record = json.load(open(os.path.join(workdir, 'results.json')))
  said = [l for l in err.splitlines() if 'step 30' in l and 'unusable' in l]
  if record['resumed_from_step'] == 20 and said:
    line = said[0].split('] ', 1)[-1].strip()       # without absl's prefix
    return 'handled', f'resumed from step 20 after one warning: "{line[:170]}"'
  return 'silent', f"resumed from step {record['resumed_from_step']}"


for what, damage in DAMAGE.items():
  case('checkpoint (newest of 10/20/30)', what, '')(lambda damage=damage: resume_after(damage))


@case('checkpoint (newest of 10/20/30)', 'garbage in `_CHECKPOINT_METADATA` (timestamps only)',
      '')
def _step_metadata():
  import pathlib  # pylint: disable=import-outside-toplevel
  workdir = tempfile.mkdtemp() + '/run'
  shutil.copytree(base_run(), workdir)
  open(pathlib.Path(workdir) / 'checkpoints' / '30' / '_CHECKPOINT_METADATA', 'w').write('{x')
  status, _, out = cli('--config.train.checkpoint_every=10', '--config.train.steps=40',
                       workdir=workdir)
  record = json.load(open(os.path.join(workdir, 'results.json')))
  if status == 0 and record['resumed_from_step'] == 30:
    return 'handled', ('the arrays match their fingerprint: resumed from step 30 (orbax reads '
                       'only timestamps from that file)')
  return 'silent', f'exit {status}, resumed from {record["resumed_from_step"]}'


case('checkpoint (newest of 10/20/30)', 'all three checkpoints damaged', 'step 10')(
    lambda: resume_after('deleted state directory', steps=(10, 20, 30)))


# ---- running the cases and writing the table -------------------------------------------------

def outcome(expect, fn):
  """``(kind, text)`` of one case, judged from what it did."""
  try:
    kind, text = fn()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    kind = 'clear error' if expect and expect in str(e) else 'unclear error'
    return kind, message.replace('|', '\\|')[:220]
  return kind, text.replace('|', '\\|')


def main():
  base_run()
  from mtl_jax import data  # pylint: disable=import-outside-toplevel
  data.load('qm9', data_dir=QM9_DIR, limit=60, test=10, validation=10)   # built once, here
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = list(pool.map(lambda c: outcome(c[2], c[3]), CASES))
  counts = {}
  rows = []
  for (group, what, _, _), (kind, text) in zip(CASES, results):
    counts[kind] = counts.get(kind, 0) + 1
    rows.append(f'| {group} | {what} | {kind} | {text} |')
  summary = ', '.join(f'{n} {k}' for k, n in sorted(counts.items()))
  with open(PATH, 'w') as f:
    f.write('# Bad inputs and what they get\n\n'
            'Every bad input we have tried (from the issues and the tests), tried again by '
            '`docs/make_bad_inputs.py`, which writes this file from what each case did: a '
            '*clear error* names the field, task or step (first line quoted; command-line '
            'errors exit with status 2, stopped runs with 1); *handled* means the documented '
            'handling was observed. Library errors are `ValueError`s with the same wording.\n\n'
            f'**{len(CASES)} cases: {summary}.**\n\n'
            '| where | bad input | outcome | what it gets |\n|---|---|---|---|\n' +
            '\n'.join(rows) + '\n')
  print(f'{len(CASES)} cases: {summary}; wrote {PATH}')
  return 0 if set(counts) <= {'clear error', 'handled'} else 1


if __name__ == '__main__':
  sys.exit(main())
