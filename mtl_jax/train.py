"""Training runs and experiments.

* ``train_and_evaluate(config, workdir)``: an experiment (optional encoder pretraining, the
  multi-task run, optional single-task baselines and Delta-m%), resumable from ``workdir``.
* ``train_once(config, workdir)``: one run in stages (``build``, ``init_or_restore``,
  ``train``, ``evaluate_splits``, ``results``), each usable alone.
* ``build_dataset``, ``build_model``, ``build_optimizer``, ``build_weighting``: a config's
  components, with errors that name the config field (``ConfigError``).
"""

from mtl_jax._src.checkpointing import CheckpointError
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.experiments import (pretrain, single_task_config, train_and_evaluate,
                                      train_baselines)
from mtl_jax._src.train import (Run, build, build_dataset, build_model, build_optimizer,
                                build_weighting, evaluate_splits, init_or_restore, results,
                                train, train_once)
from mtl_jax._src.monitor import TrainingStopped
from mtl_jax._src.writers import MetricWriter, NonFiniteLossError

__all__ = ['CheckpointError', 'ConfigError', 'MetricWriter', 'NonFiniteLossError', 'Run', 'build',
           'build_dataset', 'build_model', 'build_optimizer', 'build_weighting',
           'evaluate_splits', 'init_or_restore', 'pretrain', 'results', 'single_task_config',
           'train', 'train_and_evaluate', 'train_baselines', 'train_once',
           'TrainingStopped']
