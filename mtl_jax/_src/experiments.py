"""Experiments made of several runs: encoder pretraining, the multi-task run, single-task
baselines and Delta-m%.

``train_and_evaluate(config, workdir)`` is the entry point of the CLI and of the public API:

1. with ``config.transfer.pretrain_task``, a shared-bottom model is first trained on that
   task alone (``workdir/pretrain``, resumable) and its ``'shared'`` params start the main
   run's ``config.transfer.target`` (only when the main run starts fresh);
2. the multi-task run itself (``train.train_once``, in ``workdir``);
3. with ``config.eval.baselines``, every task trained alone by the same code
   (``workdir/baselines/<task>``), and Delta-m% of the multi-task run against them
   (Maninis et al., 2019), added to ``results.json``.
"""

import os
from typing import Any

import ml_collections

from mtl_jax._src import metrics as metrics_lib
from mtl_jax._src import train as train_lib
from mtl_jax._src import transfer
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.writers import print_table


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
  one.transfer.pretrain_task = ''      # nothing here pretrains inside a single-task run
  return one


def pretrain(config: ml_collections.ConfigDict, workdir: str):
  """The ``'shared'`` params of a shared-bottom model trained on ``pretrain_task`` alone for
  ``pretrain_steps`` steps, in ``workdir/pretrain`` (itself checkpointed and resumable)."""
  t = config.transfer
  pre = single_task_config(config, t.pretrain_task, 'pretrain')
  pre.train.steps = t.pretrain_steps
  pre.transfer.freeze, pre.transfer.lr_ratio = False, 1.0
  print(f'pretraining the encoder on task {t.pretrain_task!r} for {t.pretrain_steps} steps')
  pre_dir = os.path.join(workdir, 'pretrain')
  train_lib.train_once(pre, pre_dir)
  return transfer.subtree(transfer.load_params(pre_dir), 'shared', 'transfer.source')


def train_baselines(config: ml_collections.ConfigDict, task_names, workdir: str) -> dict:
  """``{task: test metrics}`` of every task's single-task baseline (``workdir/baselines/``;
  each resumes from its own checkpoints)."""
  out = {}
  for task in task_names:
    print(f'single-task baseline for {task!r}')
    record = train_lib.train_once(single_task_config(config, task, 'baseline'),
                                  os.path.join(workdir, 'baselines', task))
    out[task] = record['metrics'][task]
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from ``workdir``'s checkpoints), evaluates and writes ``results.json``;
  with ``config.eval.baselines`` also the single-task baselines and Delta-m%."""
  if config.eval.baselines and 'test' not in config.eval.splits:
    raise ConfigError("config.eval.baselines: needs 'test' in config.eval.splits")
  pretrained = None
  if config.transfer.pretrain_task:
    pretrained = lambda: pretrain(config, workdir)
  record = train_lib.train_once(config, workdir, pretrained=pretrained)
  if not config.eval.baselines:
    return record
  record['baselines'] = train_baselines(config, record['tasks'], workdir)
  record['delta_m'] = metrics_lib.delta_m(record['metrics'], record['baselines'],
                                          record['higher_is_better'],
                                          only=tuple(config.eval.delta_m_metrics))
  print(f'\n{config.name}: single-task baselines (test)')
  print_table(record['higher_is_better'], record['baselines'])
  print(f'Delta-m% against them: {record["delta_m"]:+.2f} (lower is better)')
  train_lib.write_results(workdir, record)
  return record
