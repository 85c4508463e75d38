"""``train_and_evaluate(config, workdir)``: the training loop around the jitted step.

Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (one line per step),
``tensorboard/`` events, ``checkpoints/`` (orbax; resumed automatically) and
``results.json`` (final per-task metrics; schema in the README).
"""

import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tqdm

from mtl_jax._src import config_validation, data, models, parallel, transfer, weighting
from mtl_jax._src import metrics as metrics_lib
from mtl_jax._src.checkpointing import Checkpointer
from mtl_jax._src.step import (evaluate, init_train_state, jit_train_step, make_eval_step,
                          make_train_step)
from mtl_jax._src.tasks import TaskSet
from mtl_jax._src.writers import MetricWriter


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient and ``on_nonfinite='raise'``."""


def build_dataset(config) -> data.MultiTaskDataset:
  """``config.data.name``: the synthetic data (top-level fields) or a loaded data set with the
  options of ``config.data.<name>``; bad options raise ``ConfigError`` naming the field."""
  d = config.data
  try:
    if d.name == 'synthetic':
      dataset = data.make_synthetic(
          d.num_tasks, d.correlation, input_dim=d.input_dim, num_sines=d.num_sines,
          noise_std=d.noise_std, scale=d.scale, preset=d.preset, sizes=tuple(d.sizes),
          seed=d.seed, per_task_inputs=d.per_task_inputs, domain_shift=d.domain_shift)
    else:
      dataset = data.loaders.load(d.name, seed=d.seed, **d[d.name])
  except ValueError as e:
    field = 'config.data' if d.name == 'synthetic' else f'config.data.{d.name}'
    raise config_validation.ConfigError(f'{field}: {e}') from None
  if not d.tasks:
    return dataset
  try:
    return data.select_tasks(dataset, d.tasks)
  except ValueError as e:
    raise config_validation.ConfigError(f'config.data.tasks: {e}') from None


def _options(block) -> dict:
  """A config block as keyword arguments (lists as tuples, hashable for flax modules)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in block.items()}


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
    raise config_validation.ConfigError(f'config.model.{e}') from None


def build_optimizer(config):
  """The optax optimizer and its learning-rate schedule."""
  o, steps = config.optim, config.train.steps
  if o.schedule == 'constant':
    schedule = optax.constant_schedule(o.lr)
  elif o.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(o.lr, steps)
  else:
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, steps)

  def make(lr):
    if o.name == 'adam':
      return optax.adam(lr)
    if o.name == 'adamw':
      return optax.adamw(lr, weight_decay=o.weight_decay)
    return optax.sgd(lr, momentum=o.momentum or None)

  t = config.transfer
  if t.freeze or t.lr_ratio != 1.0:
    tx = transfer.partition_optimizer(make, schedule, t.target, freeze=t.freeze,
                                      lr_ratio=t.lr_ratio)
  else:
    tx = make(schedule)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx, schedule


def pretrained_params(config, workdir: str):
  """The params to graft (``config.transfer``): from ``init_from``'s latest checkpoint, or
  from a shared-bottom model first trained here on ``pretrain_task`` alone (in
  ``workdir/pretrain``, itself checkpointed and resumable).  None if neither is set."""
  t = config.transfer
  if t.pretrain_task:
    pre = single_task_config(config, t.pretrain_task, 'pretrain')
    pre.train.steps = t.pretrain_steps
    pre.transfer.pretrain_task, pre.transfer.freeze, pre.transfer.lr_ratio = '', False, 1.0
    print(f'pretraining the encoder on task {t.pretrain_task!r} for {t.pretrain_steps} steps')
    pre_dir = os.path.join(workdir, 'pretrain')
    train_and_evaluate(pre, pre_dir)
    return transfer.subtree(transfer.load_params(pre_dir), 'shared', 'transfer.source')
  if t.init_from:
    return transfer.subtree(transfer.load_params(t.init_from), t.source, 'transfer.source')
  return None


def build_weighting(config, tasks: TaskSet, steps_per_epoch: int) -> weighting.Weighting:
  name = config.weighting.name
  hparams = {k: v for k, v in config.weighting[name].items() if v is not None}
  if name == 'static':
    raw = hparams.pop('weights', None)
    hparams['weights'] = (np.ones(len(tasks)) if raw is None else
                          tasks.vector(list(raw), 'config.weighting.static.weights'))
  if name == 'dwa' and hparams.get('steps_per_epoch') == 0:
    hparams['steps_per_epoch'] = steps_per_epoch
  try:
    return weighting.get(name, **hparams)
  except (TypeError, ValueError) as e:
    raise config_validation.ConfigError(f'config.weighting.{name}: {e}') from None


def _print_table(tasks: TaskSet, results: dict, file=None) -> None:
  file = file or sys.stdout
  metric_names = sorted({m for t in results.values() for m in t if m != 'count'})
  arrows = {m: ('↑' if any(tasks.directions()[t].get(m) for t in results) else '↓')
            for m in metric_names}
  header = ['task'] + [f'{m} {arrows[m]}' for m in metric_names]
  rows = [[t] + [f'{results[t][m]:.4f}' if m in results[t] else '-' for m in metric_names]
          for t in tasks.names]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) for c, w in zip(r, widths))
  print(line(header), file=file)
  print('  '.join('-' * w for w in widths), file=file)
  for r in rows:
    print(line(r), file=file)


def single_task_config(config: ml_collections.ConfigDict, task: str,
                       role: str) -> ml_collections.ConfigDict:
  """``config`` for ``task`` alone: shared_bottom with one head, trained with 'ew' by the
  same code, backbone, optimiser, schedule, steps and seed (a single-task baseline, or the
  encoder pretraining of ``config.transfer``); named ``<name>-<role>-<task>``."""
  one = ml_collections.ConfigDict(config.to_dict())
  one.name = f'{config.name}-{role}-{task}'
  one.data.tasks = (task,)
  one.model.name = 'shared_bottom'
  one.weighting.name = 'ew'
  one.train.task_sampling = 0
  one.eval.baselines = False
  return one


def train_baselines(config: ml_collections.ConfigDict, tasks: TaskSet, workdir: str) -> dict:
  """``{task: test metrics}`` of every task's single-task baseline (``workdir/baselines/``;
  each resumes from its own checkpoints)."""
  out = {}
  for task in tasks.names:
    print(f'single-task baseline for {task!r}')
    results = train_and_evaluate(single_task_config(config, task, 'baseline'),
                                 os.path.join(workdir, 'baselines', task))
    out[task] = results['metrics'][task]
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from ``workdir``'s latest checkpoint), evaluates, writes results."""
  start_time = time.time()
  config_validation.validate(config)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              max_to_keep=config.train.keep_checkpoints)
  config_path = os.path.join(workdir, 'config.json')
  if checkpointer.latest_step() is not None and os.path.exists(config_path):
    with open(config_path) as f:
      config_validation.check_resumable(json.load(f), config)
  with open(config_path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))

  dataset = build_dataset(config)
  tasks = dataset.tasks
  model = build_model(config, tasks, dataset.per_task_inputs)
  optimizer, schedule = build_optimizer(config)
  mesh = parallel.make_mesh(config.train.num_devices)
  devices = mesh.shape['data']
  for field in ('train.batch_size', 'eval.batch_size'):
    section, key = field.split('.')
    if config[section][key] % devices:
      raise config_validation.ConfigError(
          f'config.{field}: must be divisible by the {devices} devices of the mesh, got '
          f'{config[section][key]}')

  train_split = dataset.split('train')
  try:
    iterator = data.BatchIterator(train_split, config.train.batch_size, seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  worker_count=config.data.worker_count)
  except ValueError as e:
    raise config_validation.ConfigError(f'config.train.batch_size: {e}') from None
  method = build_weighting(config, tasks, iterator.batches_per_epoch)
  sample = data.take(train_split, np.arange(config.train.batch_size))
  state = init_train_state(model, tasks, optimizer, method, sample['inputs'],
                           jax.random.PRNGKey(config.seed))
  start_step = checkpointer.latest_step() or 0
  try:
    if config.transfer.freeze or config.transfer.lr_ratio != 1.0:
      transfer.subtree(state.params, config.transfer.target)
  except ValueError as e:
    raise config_validation.ConfigError(f'config.{e}') from None
  if not start_step:
    try:
      pretrained = pretrained_params(config, workdir)
      if pretrained is not None:
        params = transfer.graft(state.params, pretrained, config.transfer.target)
        state = state.replace(params=params, opt_state=optimizer.init(params))
    except ValueError as e:
      raise config_validation.ConfigError(f'config.{e}') from None
  state = parallel.replicate(state, mesh)

  if start_step:
    state, data_state = checkpointer.restore(start_step, state)
    iterator.set_state(data_state)
  writer = MetricWriter(workdir, resume_step=start_step)

  traces = {'train_step': 0}
  w = config.weighting
  frozen = (transfer.frozen_mask(state.params, config.transfer.target)
            if config.transfer.freeze else None)
  try:
    raw_step = make_train_step(
        model, tasks, optimizer, method, schedule=schedule, mode=w.mode, frozen=frozen,
        chunk_size=w.chunk_size or None,
        head_grads=None if w.head_grads == 'default' else w.head_grads, jit=False,
        task_sampling=config.train.task_sampling)
  except ValueError as e:
    if 'task_sampling' not in str(e):
      raise
    raise config_validation.ConfigError(f'config.train.task_sampling: {e}') from None

  def counted_step(state, batch):
    traces['train_step'] += 1
    return raw_step(state, batch)

  train_step = jit_train_step(counted_step, mesh=mesh)

  pending = []  # (step, device metrics) not yet written

  def flush():
    for step, metrics in jax.device_get(pending):
      scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
      for name, loss, w in zip(tasks.names, metrics['losses'], metrics['weights']):
        scalars[f'loss/{name}'] = float(loss)
        scalars[f'weight/{name}'] = float(w)
      if metrics['rejected'] and config.train.on_nonfinite == 'raise':
        bad = [n for n, l in zip(tasks.names, metrics['losses']) if not np.isfinite(l)]
        raise NonFiniteLossError(
            f'step {step}: non-finite loss for task(s) {bad or "(losses finite)"}; grad norm '
            f'{scalars["grad_norm"]}. The update was rejected; the last checkpoint '
            f'(step {checkpointer.latest_step()}) is intact.')
      writer.write(step, scalars)
    pending.clear()
    writer.flush()

  checked_structure = False
  progress = tqdm.tqdm(total=config.train.steps, initial=start_step, desc='train',
                       disable=None, dynamic_ncols=True)
  train_start = time.time()
  try:
    for step in range(start_step + 1, config.train.steps + 1):
      batch = next(iterator)
      if not checked_structure:
        tasks.check_batch(batch)
        checked_structure = True
      try:
        tasks.check_values(batch)
      except ValueError as e:
        raise ValueError(f'data set {dataset.name!r}, split \'train\', batch of step {step}: '
                         f'{e}') from None
      state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
      pending.append((step, metrics))
      progress.update(1)
      if step % config.train.log_every == 0 or step == config.train.steps:
        flush()
        progress.set_postfix(loss=f"{float(metrics['loss']):.4g}")
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        flush()
        checkpointer.save(step, state, iterator.get_state())
    flush()
  finally:
    progress.close()
    checkpointer.wait()
    writer.close()
  train_time = time.time() - train_start

  eval_step = make_eval_step(model, tasks, mesh=mesh)
  split_metrics = {}
  for split in config.eval.splits:
    batches = (parallel.shard_batch(b, mesh) for b in data.eval_batches(
        dataset.split(split), config.eval.batch_size, tasks,
        process_index=jax.process_index(), process_count=jax.process_count()))
    split_metrics[split] = evaluate(eval_step, state, tasks, batches)
  checkpointer.close()

  results = {
      'config_name': config.name,
      'tasks': list(tasks.names),
      'metrics': split_metrics.get('test', {}),
      'split_metrics': split_metrics,
      'higher_is_better': tasks.directions(),
      'model': config.model.name,
      'weighting': config.weighting.name,
      'steps': int(state.step),
      'rejected_steps': int(state.num_rejected),
      'num_params': {k: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(v)))
                     for k, v in state.params.items()},
      'resumed_from_step': start_step,
      'train_step_traces': traces['train_step'],
      'train_time_s': train_time,
      'wall_time_s': time.time() - start_time,
      'jax_version': jax.__version__,
      'devices': [str(d) for d in mesh.devices.flat],
  }
  for split, values in split_metrics.items():
    print(f'\n{config.name}: {split} metrics after {results["steps"]} steps')
    _print_table(tasks, values)
  if config.eval.baselines:
    if 'test' not in split_metrics:
      raise config_validation.ConfigError("config.eval.baselines: needs 'test' in "
                                          'config.eval.splits')
    results['baselines'] = train_baselines(config, tasks, workdir)
    results['delta_m'] = metrics_lib.delta_m(results['metrics'], results['baselines'],
                                             tasks.directions())
    print(f'\n{config.name}: single-task baselines (test)')
    _print_table(tasks, results['baselines'])
    print(f'Delta-m% against them: {results["delta_m"]:+.2f} (lower is better)')
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  return results

