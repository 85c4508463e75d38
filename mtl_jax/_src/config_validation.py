"""Checks a config against the schema in ``configs/default.py`` and the registries.

Every error names the offending field, e.g. ``config.optim.lr: must be > 0, got -1.0``.
"""

import json

import ml_collections

from mtl_jax._src import models, weighting
from mtl_jax.configs import default
from mtl_jax._src.data import loaders


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
                     'config.train.checkpoint_every', 'config.train.keep_checkpoints',
                     'config.train.on_nonfinite', 'config.eval.')


def check_resumable(saved: dict, config: ml_collections.ConfigDict) -> None:
  """Raises if ``config`` differs from the checkpointed run's ``saved`` config (as JSON) in a
  key that changes what the checkpoint means (data, model, weighting, optimizer, seeds)."""
  now = _flat(ml_collections.ConfigDict(json.loads(config.to_json_best_effort())))
  before = _flat(ml_collections.ConfigDict(saved))
  changed = sorted(k for k in set(now) | set(before)
                   if now.get(k) != before.get(k) and not k.startswith(RESUMABLE_CHANGES))
  if changed:
    raise ConfigError('; '.join(f'{k}: {before.get(k)!r} in the checkpointed run, '
                                f'{now.get(k)!r} now' for k in changed) +
                      '. Resume with the same config or use a new --workdir.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` naming the first unknown key or bad value."""
  schema = _flat(default.get_config())
  given = _flat(config)
  unknown = sorted(set(given) - set(schema))
  if unknown:
    raise ConfigError(f'{unknown[0]}: unknown config key (known keys under it: '
                      f'{sorted(k for k in schema if k.rsplit(".", 1)[0] == unknown[0].rsplit(".", 1)[0])})')
  missing = sorted(set(schema) - set(given))
  if missing:
    raise ConfigError(f'{missing[0]}: missing config key')

  c = config
  data_names = ['synthetic'] + loaders.names()
  _require(c.data.name in data_names, 'config.data.name', f'must be one of {data_names}',
           c.data.name)
  _require(c.data.worker_count >= 0, 'config.data.worker_count', 'must be >= 0 (0: none)',
           c.data.worker_count)
  # The generator checks its own arguments; train.build_dataset reports them as config.data.*.
  _require(len(c.data.sizes) == 3 and min(c.data.sizes) > 0, 'config.data.sizes',
           'must be 3 positive sizes (train, val, test)', c.data.sizes)

  _require(c.model.name in models.names(), 'config.model.name', f'must be one of '
           f'{models.names()}', c.model.name)
  _require(c.model.backbone in models.backbone_names(), 'config.model.backbone',
           f'must be one of {models.backbone_names()}', c.model.backbone)
  widths = c.model.tower_hidden
  _require(all(type(w) is int and w > 0 for w in widths), 'config.model.tower_hidden',
           'must be positive integer widths', widths)
  for kind, name, known in (
      ('model', c.model.name, models.hyperparameters(c.model.name)),
      ('backbone', c.model.backbone, models.backbone_hyperparameters(c.model.backbone))):
    block = set(c.model[name]) if name in c.model else set()
    _require(block <= set(known), f'config.model.{name}',
             f'has unknown options {sorted(block - set(known))}; {kind} {name} takes '
             f'{sorted(known)}', sorted(block))
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

  _require(c.weighting.name in weighting.names(), 'config.weighting.name',
           f'must be one of {weighting.names()}', c.weighting.name)
  _require(c.weighting.mode in ('param', 'rep'), 'config.weighting.mode',
           "must be 'param' or 'rep'", c.weighting.mode)
  _require(c.weighting.chunk_size >= 0, 'config.weighting.chunk_size', 'must be >= 0 (0: off)',
           c.weighting.chunk_size)
  _require(c.weighting.head_grads in ('default', 'weighted', 'unweighted'),
           'config.weighting.head_grads', "must be 'default', 'weighted' or 'unweighted'",
           c.weighting.head_grads)
  for name in weighting.names():
    block = set(c.weighting[name]) if name in c.weighting else set()
    known = set(weighting.hyperparameters(name))
    _require(block <= known, f'config.weighting.{name}',
             f'has unknown hyperparameters {sorted(block - known)}; {name} takes '
             f'{sorted(known)}', sorted(block))

  _require(c.optim.name in ('adam', 'adamw', 'sgd'), 'config.optim.name',
           "must be 'adam', 'adamw' or 'sgd'", c.optim.name)
  _require(c.optim.lr > 0, 'config.optim.lr', 'must be > 0', c.optim.lr)
  _require(c.optim.schedule in ('constant', 'cosine', 'warmup_cosine'), 'config.optim.schedule',
           "must be 'constant', 'cosine' or 'warmup_cosine'", c.optim.schedule)
  _require(0 <= c.optim.warmup_steps < c.train.steps, 'config.optim.warmup_steps',
           'must be in [0, config.train.steps)', c.optim.warmup_steps)
  _require(c.optim.weight_decay >= 0, 'config.optim.weight_decay', 'must be >= 0',
           c.optim.weight_decay)
  _require(c.optim.momentum >= 0, 'config.optim.momentum', 'must be >= 0', c.optim.momentum)
  _require(c.optim.grad_clip >= 0, 'config.optim.grad_clip', 'must be >= 0 (0: off)',
           c.optim.grad_clip)

  t = c.train
  for field in ('steps', 'batch_size', 'log_every', 'checkpoint_every', 'keep_checkpoints'):
    _require(t[field] > 0, f'config.train.{field}', 'must be > 0', t[field])
  if c.data.name == 'synthetic':  # other data sets are checked once loaded
    _require(t.batch_size <= c.data.sizes[0], 'config.train.batch_size',
             f'must be <= the training split size {c.data.sizes[0]}', t.batch_size)
  _require(t.on_nonfinite in ('skip', 'raise'), 'config.train.on_nonfinite',
           "must be 'skip' or 'raise'", t.on_nonfinite)
  _require(t.num_devices >= 0, 'config.train.num_devices', 'must be >= 0 (0: all)',
           t.num_devices)
  _require(type(t.task_sampling) is int and t.task_sampling >= 0, 'config.train.task_sampling',
           'must be an integer >= 0 (0: off)', t.task_sampling)
  _require(type(c.eval.baselines) is bool, 'config.eval.baselines', 'must be True or False',
           c.eval.baselines)
  _require(c.eval.batch_size > 0, 'config.eval.batch_size', 'must be > 0', c.eval.batch_size)
  _require(set(c.eval.splits) <= {'train', 'val', 'test'}, 'config.eval.splits',
           "must name splits among 'train', 'val', 'test'", c.eval.splits)
