"""Checks a config against the schema in ``configs/default.py`` and the registries.

Every error names the offending field, e.g. ``config.optim.lr: must be > 0, got -1.0``.
"""

import json

import ml_collections

from mtl_jax._src import models, parallel, precision, registry
from mtl_jax.configs import default


class ConfigError(ValueError):
  """A config key or value is wrong; the message names the field."""


def _flat(cfg, prefix='config'):
  out = {}
  for key, value in cfg.items():
    path = f'{prefix}.{key}'
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, path))
    else:
      out[path] = value
  return out


def _require(ok, field, message, value):
  if not ok:
    raise ConfigError(f'{field}: {message}, got {value!r}')


# Keys that may change when a run is resumed from its checkpoints.
RESUMABLE_CHANGES = ('config.name', 'config.train.steps', 'config.train.log_every',
                     'config.train.metrics_every',
                     'config.train.checkpoint_every', 'config.train.keep_checkpoints',
                     'config.train.on_nonfinite', 'config.train.max_rejected_fraction',
                     'config.train.warn_rejected_fraction', 'config.train.rejected_window',
                     'config.train.diagnostics_every', 'config.train.compute_dtype',
                     'config.train.grad_dtype', 'config.eval.', 'config.distributed.')


# Keys renamed since version 0.1.0 (checkpoints written before still resume).
RENAMED = {f'config.data.{k}': f'config.data.synthetic.{k}' for k in (
    'num_tasks', 'correlation', 'input_dim', 'preset', 'num_sines', 'noise_std', 'scale',
    'sizes', 'per_task_inputs', 'domain_shift')}


def _as_json(config) -> dict:
  return _flat(ml_collections.ConfigDict(json.loads(config.to_json_best_effort())))


def flat_json(config) -> dict:
  """``{'config.a.b': value}`` of ``config`` as JSON values (tuples as lists), every leaf."""
  return _as_json(config)


def check_resumable(saved: dict, config: ml_collections.ConfigDict) -> None:
  """Raises if ``config`` differs from the checkpointed run's ``saved`` config (as JSON) in a
  key that changes what the checkpoint means (data, model, weighting, optimizer, seeds).

  Keys the saved config does not have (added since) count as their defaults, and renamed
  keys (``RENAMED``) are compared under their new names."""
  now = _as_json(config)
  # Before 0.2, data-set options used '' for 'not set' where they now use None.
  before = {RENAMED.get(k, k): (None if v == '' and k.startswith('config.data.') else v)
            for k, v in _flat(ml_collections.ConfigDict(saved)).items()}
  defaults = _as_json(default.get_config())
  before = {**{k: v for k, v in defaults.items() if k in now}, **before}
  changed = sorted(k for k in set(now) | set(before)
                   if now.get(k) != before.get(k) and not k.startswith(RESUMABLE_CHANGES))
  if changed:
    raise ConfigError('; '.join(f'{k}: {before.get(k)!r} in the checkpointed run, '
                                f'{now.get(k)!r} now' for k in changed) +
                      '. Resume with the same config or use a new --workdir.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` naming the first unknown key or bad value.

  The schema (every key and its default) is ``configs/default.py``, whose component blocks
  come from the builders' signatures; each component checks its own option values when it is
  built (the trainer reports those as ``config.<section>.<name>.<option>``)."""
  _check_keys(config)
  check_distributed(config)
  _check_train_and_eval(config)      # first: other checks read train.steps, batch_size
  _check_data_and_model(config)
  _check_weighting_and_optim(config)


def _check_keys(config) -> None:
  schema = _flat(default.get_config())
  given = _flat(config)
  unknown = sorted(set(given) - set(schema))
  if unknown:
    parent = unknown[0].rsplit('.', 1)[0]
    raise ConfigError(f'{unknown[0]}: unknown config key (known keys under it: '
                      f'{sorted(k for k in schema if k.rsplit(".", 1)[0] == parent)})')
  missing = sorted(set(schema) - set(given))
  if missing:
    raise ConfigError(f'{missing[0]}: missing config key')


def _check_data_and_model(c) -> None:
  data_names = registry.DATASETS.names()
  _require(c.data.name in data_names, 'config.data.name', f'must be one of {data_names}',
           c.data.name)
  _require(c.data.worker_count >= 0, 'config.data.worker_count', 'must be >= 0 (0: none)',
           c.data.worker_count)
  _require(type(c.data.reseed) is bool, 'config.data.reseed', 'must be True or False',
           c.data.reseed)
  sizes = c.data.synthetic.sizes
  _require(len(sizes) == 3 and min(sizes) > 0, 'config.data.synthetic.sizes',
           'must be 3 positive sizes (train, val, test)', sizes)
  _require(c.model.name in models.names(), 'config.model.name', f'must be one of '
           f'{models.names()}', c.model.name)
  _require(c.model.backbone in models.backbone_names(), 'config.model.backbone',
           f'must be one of {models.backbone_names()}', c.model.backbone)
  widths = c.model.tower_hidden
  _require(all(type(w) is int and w > 0 for w in widths), 'config.model.tower_hidden',
           'must be positive integer widths', widths)
  _require(0 <= c.model.dropout < 1, 'config.model.dropout', 'must be in [0, 1)', c.model.dropout)
  try:                           # the backbone checks its own options
    models.get_backbone(c.model.backbone, dropout=c.model.dropout,
                        **{k: tuple(v) if isinstance(v, list) else v
                           for k, v in c.model.get(c.model.backbone, {}).items()})
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model.{e}') from None
  t = c.transfer
  _require(t.lr_ratio > 0, 'config.transfer.lr_ratio', 'must be > 0', t.lr_ratio)
  _require(t.pretrain_steps > 0, 'config.transfer.pretrain_steps', 'must be > 0',
           t.pretrain_steps)
  _require(not (t.init_from and t.pretrain_task), 'config.transfer.pretrain_task',
           'cannot be combined with transfer.init_from', t.pretrain_task)
  _require(type(t.freeze) is bool, 'config.transfer.freeze', 'must be True or False', t.freeze)


def _check_weighting_and_optim(c) -> None:
  methods = registry.WEIGHTINGS.names()
  _require(c.weighting.name in methods, 'config.weighting.name',
           f'must be one of {methods}', c.weighting.name)
  _require(c.weighting.chunk_size >= 0, 'config.weighting.chunk_size', 'must be >= 0 (0: off)',
           c.weighting.chunk_size)
  _require(c.weighting.head_grads in ('default', 'weighted', 'unweighted'),
           'config.weighting.head_grads', "must be 'default', 'weighted' or 'unweighted'",
           c.weighting.head_grads)
  _require(c.weighting.normalize in ('none', 'l2', 'loss', 'loss+'), 'config.weighting.normalize',
           "must be 'none', 'l2', 'loss' or 'loss+'", c.weighting.normalize)
  _require(type(c.weighting.log_losses) is bool, 'config.weighting.log_losses',
           'must be True or False', c.weighting.log_losses)
  _require(isinstance(c.weighting.groups, str), 'config.weighting.groups',
           "must be '' (off), 'leaf' or comma-separated regular expressions", c.weighting.groups)
  _require(0 <= c.weighting.ema < 1, 'config.weighting.ema', 'must be in [0, 1) (0: off)',
           c.weighting.ema)
  o = c.optim
  _require(bool(registry.optimizer_parameters(o.name)), 'config.optim.name',
           'must name an optax optimizer taking a learning_rate (adam, adamw, sgd, lion, ...)',
           o.name)
  _require(o.lr > 0, 'config.optim.lr', 'must be > 0', o.lr)
  _require(o.schedule in ('constant', 'cosine', 'warmup_cosine', 'plateau'),
           'config.optim.schedule', "must be 'constant', 'cosine', 'warmup_cosine' or 'plateau'",
           o.schedule)
  p = o.plateau
  _require(0 < p.factor < 1, 'config.optim.plateau.factor', 'must be in (0, 1)', p.factor)
  for field in ('patience', 'cooldown', 'every'):
    _require(type(p[field]) is int and p[field] >= 0, f'config.optim.plateau.{field}',
             'must be an integer >= 0', p[field])
  _require(0 < p.rtol <= 1, 'config.optim.plateau.rtol', 'must be in (0, 1]', p.rtol)
  _require(0 <= p.min_lr <= o.lr, 'config.optim.plateau.min_lr',
           f'must be in [0, config.optim.lr={o.lr}]', p.min_lr)
  _require(0 <= o.warmup_steps < c.train.steps, 'config.optim.warmup_steps',
           f'must be in [0, config.train.steps={c.train.steps})', o.warmup_steps)
  _require(o.weight_decay >= 0, 'config.optim.weight_decay', 'must be >= 0', o.weight_decay)
  _require(o.momentum >= 0, 'config.optim.momentum', 'must be >= 0', o.momentum)
  _require(o.grad_clip >= 0, 'config.optim.grad_clip', 'must be >= 0 (0: off)', o.grad_clip)


def _check_train_and_eval(c) -> None:
  t = c.train
  for field in ('steps', 'batch_size', 'log_every', 'metrics_every', 'checkpoint_every',
                'keep_checkpoints', 'rejected_window'):
    _require(type(t[field]) is int and t[field] > 0, f'config.train.{field}',
             'must be an integer > 0', t[field])
  _require(0 < t.max_rejected_fraction <= 1, 'config.train.max_rejected_fraction',
           'must be in (0, 1] (1: never stop)', t.max_rejected_fraction)
  _require(0 <= t.warn_rejected_fraction <= t.max_rejected_fraction,
           'config.train.warn_rejected_fraction',
           f'must be in [0, config.train.max_rejected_fraction={t.max_rejected_fraction}]',
           t.warn_rejected_fraction)
  if c.data.name == 'synthetic':  # other data sets are checked once loaded
    size = c.data.synthetic.sizes[0]
    _require(t.batch_size <= size, 'config.train.batch_size',
             f'must be <= the training split size {size}', t.batch_size)
  _require(t.on_nonfinite in ('skip', 'raise'), 'config.train.on_nonfinite',
           "must be 'skip' or 'raise'", t.on_nonfinite)
  _require(t.num_devices >= 0, 'config.train.num_devices', 'must be >= 0 (0: all)',
           t.num_devices)
  _check_mesh_keys(t)
  for field in ('compute_dtype', 'grad_dtype'):
    _require(t[field] in precision.DTYPES, f'config.train.{field}',
             f'must be one of {precision.DTYPES}', t[field])
  for field, block in (('train.diagnostics_every', t), ('eval.every', c.eval)):
    value = block[field.split('.')[1]]
    _require(type(value) is int and value >= 0, f'config.{field}',
             'must be an integer >= 0 (0: off)', value)
  _require(type(c.eval.baselines) is bool, 'config.eval.baselines', 'must be True or False',
           c.eval.baselines)
  _require(c.eval.batch_size > 0, 'config.eval.batch_size', 'must be > 0', c.eval.batch_size)
  _require(isinstance(c.eval.delta_m_metrics, (tuple, list)) and all(
      isinstance(m, str) and m for m in c.eval.delta_m_metrics), 'config.eval.delta_m_metrics',
           "must be metric names, e.g. ('mae',) (empty: every metric but the loss)",
           c.eval.delta_m_metrics)
  _require(set(c.eval.splits) <= {'train', 'val', 'test'}, 'config.eval.splits',
           "must name splits among 'train', 'val', 'test'", c.eval.splits)


def _check_mesh_keys(t) -> None:
  """``config.train.mesh_shape`` and ``shard`` on their own (the device count, the batch and
  the model's stacked axes are checked against the mesh by ``check_mesh``)."""
  shape = t.mesh_shape
  _require(isinstance(shape, (tuple, list)) and len(shape) in (0, 2)
           and all(type(n) is int for n in shape) and (not shape or (shape[0] >= 0
                                                                   and shape[1] >= 1)),
           'config.train.mesh_shape', "must be () (the 1-D 'data' mesh) or (data, model) "
           'with data >= 0 (0: all the devices left) and model >= 1', shape)
  _require(t.shard in parallel.LAYOUTS, 'config.train.shard',
           f'must be one of {parallel.LAYOUTS}', t.shard)
  _require(t.shard == 'none' or shape, 'config.train.shard',
           f"{t.shard!r} splits the state over the mesh's 'model' axis: set "
           'config.train.mesh_shape=(data, model) too', t.shard)
  if shape and shape[0]:
    _require(t.num_devices in (0, shape[0] * shape[1]), 'config.train.num_devices',
             f'must be 0 or {shape[0] * shape[1]} (the devices of config.train.mesh_shape='
             f'{tuple(shape)})', t.num_devices)


def stacked_sizes(config, tasks) -> dict:
  """``{what: size}`` of the stacked axes that ``config.train.shard`` 'tasks' splits over
  the mesh's 'model' axis: the task axis T ('tasks'), each task group's heads ('task group
  <g>'), and every expert count of the model (its options ``num_*experts``, by their
  config field)."""
  sizes = {'tasks': len(tasks)}
  sizes.update({f'task group {g}': len(group.names) for g, group in enumerate(tasks.groups)})
  options = config.model.get(config.model.name, {})
  for key, value in options.items():
    if key.startswith('num_') and key.endswith('experts') and type(value) is int:
      sizes[f'config.model.{config.model.name}.{key}'] = value
  return sizes


def check_mesh(config, mesh, tasks) -> None:
  """Raises ``ConfigError`` naming the field unless ``mesh`` (the run's) splits the batches
  (``config.train.batch_size``, ``config.eval.batch_size``) over its 'data' axis and, with
  ``config.train.shard`` 'tasks', the task axis T and the model's expert counts over its
  'model' axis.  Nothing is padded: a stacked axis of a size not divisible by the model axis
  is refused, except task groups' heads (replicated) and counts of 1 (nothing to split)."""
  data, shape = mesh.shape['data'], tuple(config.train.mesh_shape)
  where = (f"devices of the mesh's 'data' axis (config.train.mesh_shape={shape})" if shape
           else 'devices of the mesh')
  for field in ('train.batch_size', 'eval.batch_size'):
    section, key = field.split('.')
    _require(config[section][key] % data == 0, f'config.{field}',
             f'must be divisible by the {data} {where}', config[section][key])
  if 'tasks' not in config.train.shard:
    return
  model = mesh.shape['model']
  for what, size in stacked_sizes(config, tasks).items():
    if size % model == 0 or size == 1 or what.startswith('task group'):
      continue
    if what == 'tasks':
      raise ConfigError(
          f"config.train.shard: {config.train.shard!r} splits the task axis over the mesh's "
          f"'model' axis of {model} devices (config.train.mesh_shape={shape}), but the "
          f'{size} tasks are not divisible by {model} (the task axis is not padded): use a '
          f"model axis dividing {size}, or shard='fsdp'")
    _require(False, what, f"config.train.shard={config.train.shard!r} splits the expert axis "
             f"over the mesh's 'model' axis of {model} devices (config.train.mesh_shape="
             f'{shape}): must be divisible by {model} (it is not padded)', size)


def check_distributed(c) -> None:
  """Checks ``config.distributed`` alone (joining the other processes reads it before the
  rest of the config is validated); raises ``ConfigError`` naming the field."""
  from mtl_jax._src import distributed  # pylint: disable=import-outside-toplevel
  if 'distributed' not in c:
    raise ConfigError('config.distributed: missing config key (see mtl_jax/configs/default.py)')
  d = c.distributed
  _require(d.initialize in distributed.MODES, 'config.distributed.initialize',
           f'must be one of {distributed.MODES}', d.initialize)
  _require(isinstance(d.coordinator_address, str), 'config.distributed.coordinator_address',
           "must be '' (unset) or 'host:port'", d.coordinator_address)
  if d.coordinator_address:
    try:
      distributed.split_address(d.coordinator_address, 'config.distributed.coordinator_address')
    except ValueError as e:
      raise ConfigError(str(e)) from None
  _require(type(d.num_processes) is int and d.num_processes >= 0,
           'config.distributed.num_processes', 'must be an integer >= 0 (0: unset)',
           d.num_processes)
  n = d.num_processes
  _require(type(d.process_id) is int and -1 <= d.process_id < (n or d.process_id + 1),
           'config.distributed.process_id',
           f'must be in [0, {n}) (config.distributed.num_processes={n}), or -1 (unset)' if n
           else 'must be an integer >= 0, or -1 (unset)', d.process_id)
  ids = d.local_device_ids
  _require(isinstance(ids, (tuple, list)) and all(type(i) is int and i >= 0 for i in ids)
           and len(set(ids)) == len(ids), 'config.distributed.local_device_ids',
           'must be distinct device indices >= 0, e.g. (0, 1) (empty: all)', ids)
  _require(type(d.timeout_s) in (int, float) and d.timeout_s > 0,
           'config.distributed.timeout_s', 'must be a number of seconds > 0', d.timeout_s)
