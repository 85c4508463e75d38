"""One training run, in stages: build, init or restore, train, evaluate, write results.

``train_once(config, workdir)`` writes into ``workdir``: ``config.json``, ``metrics.jsonl``
(one line per step), ``tensorboard/`` events, ``checkpoints/`` (orbax; resumed
automatically) and ``results.json`` (final per-task metrics; schema in the README).

Several processes (``config.distributed``, one per host) run it as one run: ``build`` joins
them (``jax.distributed``) and checks they share the config; each reads its rows of every
global batch; process 0 alone writes ``config.json``, the metrics, ``results.json`` and the
printed output; every process takes part in each orbax checkpoint.

Experiments made of several runs (single-task baselines, encoder pretraining) are in
``mtl_jax._src.experiments``, whose ``train_and_evaluate`` is the public entry point.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
import optax

from mtl_jax._src import (config_validation, data, distributed, models, monitor, parallel,
                          registry, transfer)
from mtl_jax._src.checkpointing import Checkpointer
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.step import (TrainState, evaluate, init_train_state, jit_train_step,
                               make_eval_step, make_train_step)
from mtl_jax._src.tasks import TaskSet
from mtl_jax._src.weighting import engine, transforms
from mtl_jax._src.weighting.apply import init_state
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.writers import MetricWriter, NonFiniteLossError, print_table

PyTree = Any


def _options(block) -> dict:
  """A config block as keyword arguments (lists as tuples, hashable for flax modules)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in block.items()}


def build_dataset(config) -> data.MultiTaskDataset:
  """The data set ``config.data.name`` with the options of ``config.data.<name>`` (restricted
  to ``config.data.tasks``), drawn with ``config.data.seed`` (plus ``config.seed`` where
  ``config.data.reseed``: each seed of a sweep its own data, as the MMoE paper's runs); bad
  options raise ``ConfigError`` naming the field."""
  d = config.data
  seed = d.seed + (config.seed if d.get('reseed', False) else 0)
  try:
    dataset = data.load(d.name, seed=seed, **_options(d.get(d.name, {})))
  except (TypeError, ValueError) as e:
    message = str(e).removeprefix(f'{d.name}: ')
    if message.startswith(f'{d.name}.'):          # names its own option: 'qm9.max_atoms: ...'
      raise ConfigError(f'config.data.{message}') from None
    raise ConfigError(f'config.data.{d.name}: {message}') from None
  if not d.tasks:
    return dataset
  try:
    return data.select_tasks(dataset, d.tasks)
  except ValueError as e:
    raise ConfigError(f'config.data.tasks: {e}') from None


def build_model(config, tasks: TaskSet, per_task_inputs: bool = False):
  """The model ``config.model.name`` over backbone ``config.model.backbone``, each with the
  options in its block; a bad option raises ``ConfigError`` naming ``config.model.<field>``."""
  m = config.model
  try:
    backbone = models.get_backbone(m.backbone, dropout=m.dropout,
                                   **_options(m.get(m.backbone, {})))
    return models.get(m.name, tasks, backbone, tower_hidden=tuple(m.tower_hidden),
                      dropout=m.dropout, per_task_inputs=per_task_inputs,
                      **_options(m.get(m.name, {})))
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model.{e}') from None


def build_optimizer(config, steps_per_epoch: int = 1):
  """``(optax optimizer, learning-rate schedule)``: ``optax.<config.optim.name>`` with the
  keyword arguments of ``config.optim.<name>`` (and ``weight_decay``/``momentum`` where it
  takes them), behind the schedule, the transfer partition and global-norm clipping, and
  for schedule 'plateau' followed by ``optax.contrib.reduce_on_plateau`` (which reads the
  step's ``value``, the sum of the task losses; ``steps_per_epoch`` sets its default window)."""
  o, steps = config.optim, config.train.steps
  schedule = {'constant': lambda: optax.constant_schedule(o.lr),
              'plateau': lambda: optax.constant_schedule(o.lr),
              'cosine': lambda: optax.cosine_decay_schedule(o.lr, steps),
              'warmup_cosine': lambda: optax.warmup_cosine_decay_schedule(
                  0.0, o.lr, o.warmup_steps, steps)}[o.schedule]()
  takes = registry.optimizer_parameters(o.name)
  kwargs = {**{k: o[k] for k in ('weight_decay', 'momentum') if k in takes},
            **_options(o.get(o.name, {}))}
  if kwargs.get('momentum') == 0:
    kwargs['momentum'] = None                 # optax.sgd: None is plain SGD
  make = lambda lr: registry.optimizer(o.name, lr, **kwargs)
  t = config.transfer
  if t.freeze or t.lr_ratio != 1.0:
    tx = transfer.partition_optimizer(make, schedule, t.target, freeze=t.freeze,
                                      lr_ratio=t.lr_ratio)
  else:
    tx = make(schedule)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  if o.schedule == 'plateau':
    p = o.plateau
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=p.factor, patience=p.patience, rtol=p.rtol, cooldown=p.cooldown,
        accumulation_size=p.every or steps_per_epoch, min_scale=p.min_lr / o.lr))
  return tx, schedule


def _method_options(name: str, block) -> dict:
  """The set options of ``config.weighting.<name>``; a 1-tuple where the builder's default
  is a number (a scalar-or-per-task option, see ``configs.default.block``) is that number."""
  defaults = registry.WEIGHTINGS.defaults(name)
  scalar = lambda k, v: (isinstance(v, tuple) and len(v) == 1 and not isinstance(
      defaults.get(k), bool) and isinstance(defaults.get(k), (int, float)))
  return {k: v[0] if scalar(k, v) else v for k, v in _options(block).items() if v is not None}


def build_weighting(config, tasks: TaskSet, steps_per_epoch: int) -> Weighting:
  """The method ``config.weighting.name`` with ``config.weighting.<name>``.  Two run values
  fill options the config leaves open: ``steps_per_epoch=0`` becomes the data's epoch, and a
  per-task ``weights`` vector may be keyed by task name."""
  w = config.weighting
  name = w.name
  hparams = _method_options(name, w[name])
  if hparams.get('steps_per_epoch') == 0:
    hparams['steps_per_epoch'] = steps_per_epoch
  if 'base_hparams' in registry.WEIGHTINGS.defaults(name) and 'base_hparams' not in hparams:
    # a wrapper (cr_mogm): its base method's options come from that method's own block
    base = hparams.get('base', registry.WEIGHTINGS.defaults(name).get('base'))
    if base in w:
      hparams['base_hparams'] = _method_options(base, w[base])
  try:
    if 'weights' in hparams:
      hparams['weights'] = tasks.vector(hparams['weights'], 'weights')
    method = registry.WEIGHTINGS.build(name, **hparams)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.weighting.{name}: {e}') from None
  return _transformed(method, w)


def _transformed(method: Weighting, w) -> Weighting:
  """``method`` under the transforms ``config.weighting`` turns on, in the order normalize,
  log_losses, ema, groups (an EMA per parameter group: averaged weights of a grouped
  method would not be coefficients of any one Jacobian); a transform that cannot wrap it
  raises ``ConfigError``."""
  groups = w.groups if w.groups in ('', 'leaf') else tuple(
      p.strip() for p in w.groups.split(',') if p.strip())
  steps = (('normalize', w.normalize != 'none', lambda m: transforms.normalize(m, w.normalize)),
           ('log_losses', w.log_losses, transforms.log_losses),
           ('ema', w.ema > 0, lambda m: transforms.ema(m, w.ema)),
           ('groups', bool(groups), lambda m: transforms.grouped(m, groups)))
  for field, enabled, transform in steps:
    if enabled:
      try:
        method = transform(method)
      except (TypeError, ValueError) as e:
        raise ConfigError(f'config.weighting.{field}: {e}') from None
  return method


def make_workdir(workdir: str) -> None:
  """Creates ``workdir`` (a new run) or checks it is a writable directory (a resumed one);
  raises ``ConfigError`` naming it otherwise."""
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
    raise ConfigError(f'workdir: must be a directory path, got {workdir!r}')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {str(workdir)!r} is a file, not a directory: pass a new '
                      'directory (it is created) or that of the run to resume')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'workdir {str(workdir)!r}: cannot create it ({e.strerror})') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f'workdir {str(workdir)!r} is not writable')


@dataclasses.dataclass
class Run:
  """What a run is built from (stage 1)."""
  config: ml_collections.ConfigDict
  workdir: str
  dataset: data.MultiTaskDataset
  model: Any
  optimizer: optax.GradientTransformation
  schedule: Callable
  method: Weighting
  mesh: jax.sharding.Mesh
  iterator: Any               # data.BatchIterator, or ProcessShare of one (several processes)
  checkpointer: Checkpointer

  @property
  def tasks(self) -> TaskSet:
    return self.dataset.tasks

  @functools.cached_property
  def eval_step(self):
    """The run's one jitted eval step (validation during training and the final splits)."""
    return make_eval_step(self.model, self.tasks, mesh=self.mesh, sharding=self.sharding,
                          compute_dtype=self.config.train.compute_dtype)

  @functools.cached_property
  def sharding(self) -> Optional[parallel.StateSharding]:
    """Where the train state lies on the mesh (``config.train.shard``), derived from its
    shapes (``jax.eval_shape``, nothing computed); None for 'none' (replicated)."""
    if self.config.train.shard == 'none':
      return None
    sample = data.take(self.dataset.split('train'), np.arange(self.config.train.batch_size))
    abstract = jax.eval_shape(lambda: init_train_state(
        self.model, self.tasks, self.optimizer, self.method, sample['inputs'],
        jax.random.PRNGKey(self.config.seed)))
    sizes = config_validation.stacked_sizes(self.config, self.tasks).values()
    return parallel.state_sharding(abstract, self.mesh, self.config.train.shard,
                                   task_sizes=sizes)

  def place(self, state: TrainState) -> TrainState:
    """``state`` on the mesh: as ``sharding`` lays it out, or replicated."""
    if self.sharding is None:
      return parallel.replicate(state, self.mesh)
    return jax.device_put(state, self.sharding.state)


def build(config, workdir: str) -> Run:
  """Stage 1: join the other processes if there are any (``config.distributed``: first, before
  anything starts JAX's backend) and check that they all run this config in this workdir
  (before validating it, so that a value bad on one process only stops them all), validate
  the config, record it, and build data, model, optimizer, method."""
  distributed.initialize_from_config(config)
  distributed.check_same_config(config, workdir)
  config_validation.validate(config)
  make_workdir(workdir)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              max_to_keep=config.train.keep_checkpoints)
  try:
    return _build_with(config, workdir, checkpointer)
  except BaseException:
    checkpointer.close()      # no orbax thread left to run into the interpreter's exit
    raise


def _build_with(config, workdir: str, checkpointer: Checkpointer) -> Run:
  """``build`` once its checkpointer is open."""
  config_path = os.path.join(workdir, 'config.json')
  if checkpointer.latest_step() is not None and os.path.exists(config_path):
    with open(config_path) as f:
      config_validation.check_resumable(json.load(f), config)
  if distributed.is_primary():
    _write_atomically(config_path, config.to_json_best_effort(indent=2))
  dataset = build_dataset(config)
  model = build_model(config, dataset.tasks, dataset.per_task_inputs)
  try:
    mesh = parallel.make_mesh(config.train.num_devices, tuple(config.train.mesh_shape))
  except ValueError as e:
    raise ConfigError(f'config.train.{e}') from None
  config_validation.check_mesh(config, mesh, dataset.tasks)
  _check_mesh_spans_processes(mesh)
  try:
    iterator = data.BatchIterator(dataset.split('train'), config.train.batch_size,
                                  seed=config.seed, worker_count=config.data.worker_count)
  except ValueError as e:
    raise ConfigError(f'config.train.batch_size: {e}') from None
  if jax.process_count() > 1:
    iterator = ProcessShare(iterator, jax.process_index(), jax.process_count())
  method = build_weighting(config, dataset.tasks, iterator.batches_per_epoch)
  optimizer, schedule = build_optimizer(config, iterator.batches_per_epoch)
  k = method.sub_batches
  if config.train.batch_size % k:
    raise ConfigError(f'config.train.batch_size: weighting {method.name!r} splits every batch '
                      f'into {k} independent sub-batches, so it must be divisible by {k}, got '
                      f'{config.train.batch_size}')
  _check_weighting_init(method, config, dataset, model)
  return Run(config, workdir, dataset, model, optimizer, schedule, method, mesh, iterator,
             checkpointer)


def _check_mesh_spans_processes(mesh: jax.sharding.Mesh) -> None:
  """With several processes the mesh must hold every device (each process feeds its own):
  ``ConfigError`` naming ``config.train.num_devices`` otherwise."""
  if jax.process_count() > 1 and mesh.devices.size != jax.device_count():
    raise ConfigError(
        f'config.train.num_devices: with {jax.process_count()} processes the mesh must span '
        f'all {jax.device_count()} devices (num_devices=0, and a mesh_shape covering them), '
        f'got a mesh of {mesh.devices.size}')


def _write_atomically(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename, so that another
  process reading ``path`` meanwhile sees the old file or the new one, never half of one."""
  temporary = f'{path}.tmp-{os.getpid()}'
  with open(temporary, 'w') as f:
    f.write(text)
  os.replace(temporary, path)


class ProcessShare:
  """This process's rows of every global batch of ``iterator`` (a ``data.BatchIterator``
  over the whole split, the same on every process), for several processes.

  Process i of n keeps rows ``[i B/n, (i+1) B/n)`` of each global batch of B, the rows its
  devices hold on the mesh (``jax.devices()`` lists each process's devices together, in
  process order), as ``data.eval_batches`` does.  So the global batches, and a run's
  results, do not depend on the number of processes (one process with 4 devices equals two
  with 2), and a checkpoint's data position resumes on any number of them.  The cost: each
  process reads the whole global batch and keeps 1/n of it (negligible for in-memory data).
  """

  def __init__(self, iterator, process_index: int, process_count: int):
    if iterator.batch_size % process_count:
      raise ConfigError(f'config.train.batch_size: must be divisible by the {process_count} '
                        f'processes, got {iterator.batch_size}')
    local = iterator.batch_size // process_count
    self._iterator, self._rows = iterator, slice(process_index * local,
                                                 (process_index + 1) * local)
    self.batch_size, self.batches_per_epoch = iterator.batch_size, iterator.batches_per_epoch

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return jax.tree.map(lambda x: x[self._rows], next(self._iterator))

  def get_state(self) -> dict:
    return self._iterator.get_state()

  def set_state(self, state) -> None:
    self._iterator.set_state(state)


def _check_weighting_init(method: Weighting, config, dataset, model) -> None:
  """Initialises the method's state in shapes only, so that what only the task count or the
  shared parameters reveal (``trim_number`` too large for T, a ``groups`` pattern that
  matches no parameter) is a ``ConfigError`` naming the field before any compilation."""
  shared = None
  if method.state_like_params:           # its state is shaped by the shared parameters
    sample = data.take(dataset.split('train'), np.arange(config.train.batch_size))
    key = jax.random.PRNGKey(0)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               {'params': key, 'dropout': key}, sample['inputs'])
    shared = variables['params'].get('shared', {})
  try:
    jax.eval_shape(lambda: init_state(method, len(dataset.tasks), shared))
  except (TypeError, ValueError) as e:
    field = 'groups' if str(e).startswith('grouped') else config.weighting.name
    raise ConfigError(f'config.weighting.{field}: {e}') from None


def init_or_restore(run: Run, pretrained: Optional[Callable[[], PyTree]] = None):
  """Stage 2: ``(state, start step)``: the newest usable checkpoint's state and data position
  (newer damaged ones are moved aside, see ``checkpointing``), or a fresh state whose
  ``config.transfer.target`` params come from ``transfer.init_from`` or from ``pretrained()``
  (called only when starting fresh).  Raises ``CheckpointError`` if no checkpoint is usable."""
  config, t = run.config, run.config.transfer
  sample = data.take(run.dataset.split('train'), np.arange(config.train.batch_size))
  state = init_train_state(run.model, run.tasks, run.optimizer, run.method, sample['inputs'],
                           jax.random.PRNGKey(config.seed))
  start_step = run.checkpointer.latest_step() or 0
  try:
    if t.freeze or t.lr_ratio != 1.0:
      transfer.subtree(state.params, t.target)
    if not start_step:
      params = pretrained() if pretrained is not None else None
      if params is None and t.init_from:
        params = transfer.subtree(transfer.load_params(t.init_from), t.source,
                                  'transfer.source')
      if params is not None:
        grafted = transfer.graft(state.params, params, t.target)
        state = state.replace(params=grafted, opt_state=run.optimizer.init(grafted))
  except ConfigError:
    raise                     # already names its field (e.g. from the pretraining run)
  except ValueError as e:
    raise ConfigError(f'config.{e}') from None
  state = run.place(state)
  if start_step:
    # The fresh state is the target: its structure, dtypes and shardings.  Setting the
    # iterator's position is the last check, so it ends at the restored step's position.
    restored = run.checkpointer.restore_latest_valid(
        state, validate=lambda _, data_state: run.iterator.set_state(data_state))
    state, start_step = restored.state, restored.step
  return state, start_step


def make_step(run: Run, state: TrainState, traces: dict, jit: bool = True):
  """The jitted train step of ``run`` (counting its traces in ``traces['train_step']``); with
  ``jit=False`` the Python function (``seeds`` vmaps it over a seed axis)."""
  w, t = run.config.weighting, run.config.transfer
  frozen = transfer.frozen_mask(state.params, t.target) if t.freeze else None
  fields = {'mode': 'config.weighting.mode', 'chunk_size': 'config.weighting.chunk_size',
            'head_grads': 'config.weighting.head_grads',
            'task_sampling': 'config.train.task_sampling', 'weighting': 'config.weighting.name',
            'diagnostics_every': 'config.train.diagnostics_every'}
  try:
    raw_step = make_train_step(
        run.model, run.tasks, run.optimizer, run.method, schedule=run.schedule, mode=w.mode,
        frozen=frozen, chunk_size=w.chunk_size or None,
        head_grads=None if w.head_grads == 'default' else w.head_grads, jit=False,
        task_sampling=run.config.train.task_sampling,
        diagnostics_every=run.config.train.diagnostics_every, sharding=run.sharding,
        compute_dtype=run.config.train.compute_dtype, grad_dtype=run.config.train.grad_dtype)
  except engine.OptionError as e:
    raise ConfigError(f'{fields[e.field]}: {str(e).split(": ", 1)[1]}') from None

  def counted_step(state, batch):
    traces['train_step'] += 1
    return raw_step(state, batch)

  return jit_train_step(counted_step, mesh=run.mesh, sharding=run.sharding) if jit \
      else counted_step


def train(run: Run, state: TrainState, start_step: int, traces: dict) -> TrainState:
  """Stage 3: steps ``start_step + 1 .. config.train.steps``, logging and checkpointing.

  At every flush (``config.train.log_every`` steps, and at checkpoints) the metrics are
  written, progress is reported (``monitor.Progress``) and the rejected updates are judged
  (``monitor.RejectionPolicy``: ``TrainingStopped`` when more than
  ``config.train.max_rejected_fraction`` of the recent ones were rejected).  Under
  ``config.train.on_nonfinite='raise'`` the writer stops the run at the first rejected one.
  Every ``config.eval.every`` steps (0: never) the 'val' split is evaluated into that step's
  line as ``val/<task>/<metric>``.
  """
  config = run.config
  train_step = make_step(run, state, traces)
  writer = MetricWriter(run.workdir, run.tasks.names, resume_step=start_step,
                        on_nonfinite=config.train.on_nonfinite,
                        every=config.train.metrics_every, primary=distributed.is_primary())
  policy = monitor.RejectionPolicy(config.train.rejected_window,
                                   config.train.max_rejected_fraction,
                                   config.train.warn_rejected_fraction,
                                   monitor.likely_causes(config, start_step))
  progress = (monitor.Progress(config.train.steps, start_step, run.tasks.names)
              if distributed.is_primary() else _Silent())
  validate = _validation(run) if config.eval.every else None

  def flush(step, final=False):
    written = writer.flush(run.checkpointer.latest_step())
    progress.update(written)
    for s, scalars in written:
      policy.observe(s, scalars['rejected'])
    policy.check(step, final)

  try:
    for step in range(start_step + 1, config.train.steps + 1):
      batch = next(run.iterator)
      if step == start_step + 1:
        run.tasks.check_batch(batch)      # structure once; values are checked when read
      state, metrics = train_step(state, parallel.shard_batch(batch, run.mesh))
      if validate is not None and step % config.eval.every == 0:
        metrics = dict(metrics, **validate(state))
      writer.add(step, metrics)
      last = step == config.train.steps
      if step % config.train.log_every == 0 or step % config.train.checkpoint_every == 0 \
          or last:
        flush(step, final=last)
      if step % config.train.checkpoint_every == 0 or last:
        run.checkpointer.save(step, state, run.iterator.get_state())
  finally:
    progress.close()
    run.checkpointer.wait()
    writer.close()
  return state


class _Silent:
  """The progress report of a process other than 0: nothing."""

  def update(self, written) -> None:
    del written

  def close(self) -> None:
    pass


def _validation(run: Run, dataset=None) -> Callable[[TrainState], dict]:
  """``state -> {'val/<task>/<metric>': value}`` on the 'val' split (of ``dataset``, by
  default the run's)."""

  def validate(state):
    metrics = evaluate(run.eval_step, state, run.tasks, _eval_batches(run, 'val', dataset))
    return {f'val/{task}/{name}': value for task, values in metrics.items()
            for name, value in values.items() if name != 'count'}

  return validate


def _eval_batches(run: Run, split: str, dataset=None):
  return (parallel.shard_batch(b, run.mesh) for b in data.eval_batches(
      (dataset or run.dataset).split(split), run.config.eval.batch_size, run.tasks,
      process_index=jax.process_index(), process_count=jax.process_count()))


def evaluate_splits(run: Run, state: TrainState, dataset=None) -> dict:
  """Stage 4: ``{split: {task: {metric: value}}}`` for ``config.eval.splits`` (of
  ``dataset``, by default the run's)."""
  out = {}
  for split in run.config.eval.splits:
    out[split] = evaluate(run.eval_step, state, run.tasks, _eval_batches(run, split, dataset))
  return out


def results(run: Run, state: TrainState, split_metrics: dict, **timing) -> dict:
  """Stage 5: the ``results.json`` record of a run (schema in the README)."""
  config = run.config
  return {
      'config_name': config.name,
      'status': 'completed',
      'tasks': list(run.tasks.names),
      'metrics': split_metrics.get('test', {}),
      'split_metrics': split_metrics,
      'higher_is_better': run.tasks.directions(),
      'model': config.model.name,
      'weighting': config.weighting.name,
      'steps': int(state.step),
      'rejected_steps': int(state.num_rejected),
      'num_params': {k: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(v)))
                     for k, v in state.params.items()},
      **timing,
      'jax_version': jax.__version__,
      'devices': [str(d) for d in run.mesh.devices.flat],
  }


def write_results(workdir: str, record: dict) -> None:
  """Writes ``results.json`` (process 0 alone, when there are several)."""
  if distributed.is_primary():
    _write_atomically(os.path.join(workdir, 'results.json'), json.dumps(record, indent=2))


def _say(*lines) -> None:
  """Prints ``lines`` on process 0 (the others print nothing of a run's progress)."""
  if distributed.is_primary():
    print(*lines, sep='\n')


def train_once(config: ml_collections.ConfigDict, workdir: str,
               pretrained: Optional[Callable[[], PyTree]] = None) -> dict[str, Any]:
  """One run: build, init or restore (resuming from ``workdir``'s latest usable checkpoint),
  train, evaluate, write ``results.json``; returns its record.

  A run stopped by ``monitor.TrainingStopped`` writes ``results.json`` with ``status:
  'stopped'`` and its ``stop_reason`` (no metrics) and re-raises."""
  start_time = time.time()
  run = build(config, workdir)
  try:
    state, start_step = init_or_restore(run, pretrained)
  except BaseException:
    run.checkpointer.close()
    raise
  if start_step >= config.train.steps:
    _say(f'{config.name}: already trained to step {start_step} in {workdir}; nothing to do '
         '(raise config.train.steps to train on)')
  traces = {'train_step': 0}
  train_start = time.time()
  try:
    state = train(run, state, start_step, traces)
  except monitor.TrainingStopped as e:
    write_results(workdir, {'config_name': config.name, 'status': 'stopped',
                            'stop_reason': str(e), 'tasks': list(run.tasks.names),
                            'steps': e.step, 'rejected_steps_this_session': e.rejected,
                            'resumed_from_step': start_step})
    run.checkpointer.close()
    raise
  train_time = time.time() - train_start
  split_metrics = evaluate_splits(run, state)
  run.checkpointer.close()
  record = results(run, state, split_metrics, resumed_from_step=start_step,
                   train_step_traces=traces['train_step'], train_time_s=train_time,
                   wall_time_s=time.time() - start_time)
  if distributed.is_primary():
    for split, values in split_metrics.items():
      print(f'\n{config.name}: {split} metrics after {record["steps"]} steps')
      print_table(run.tasks.directions(), values)
  _say(f'{config.name}: {record["steps"]} steps, {record["rejected_steps"]} updates rejected '
       f'as non-finite ({record["rejected_steps"] / max(record["steps"], 1):.1%})')
  write_results(workdir, record)
  return record
