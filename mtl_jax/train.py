"""Training runs and experiments.

* ``train_and_evaluate(config, workdir)``: an experiment (optional encoder pretraining, the
  multi-task run, optional single-task baselines and Delta-m%), resumable from ``workdir``.
* ``train_once(config, workdir)``: one run in stages (``build``, ``init_or_restore``,
  ``train``, ``evaluate_splits``, ``results``), each usable alone.
* ``build_dataset``, ``build_model``, ``build_optimizer``, ``build_weighting``: a config's
  components, with errors that name the config field (``ConfigError``).
* ``train_seeds(config, seeds, workdir)``: one run per seed as one vmapped program;
  ``run_sweep(config, methods, num_seeds, workdir)``: methods x seeds and single-task
  baselines with Delta-m% and mean rank (``summarize_sweep``, ``sweep_markdown``), the
  library side of ``python -m mtl_jax.sweep``.
"""

from mtl_jax._src.checkpointing import CheckpointError
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.experiments import (pretrain, single_task_config, train_and_evaluate,
                                      train_baselines)
from mtl_jax._src.train import (Run, build, build_dataset, build_model, build_optimizer,
                                build_weighting, evaluate_splits, init_or_restore, results,
                                train, train_once)
from mtl_jax._src.monitor import TrainingStopped
from mtl_jax._src.seeds import train_seeds
from mtl_jax._src.sweep import markdown as sweep_markdown
from mtl_jax._src.sweep import run_sweep
from mtl_jax._src.sweep import summarize as summarize_sweep
from mtl_jax._src.writers import MetricWriter, NonFiniteLossError

__all__ = ['CheckpointError', 'ConfigError', 'MetricWriter', 'NonFiniteLossError', 'Run', 'build',
           'build_dataset', 'build_model', 'build_optimizer', 'build_weighting',
           'evaluate_splits', 'init_or_restore', 'pretrain', 'results', 'run_sweep',
           'single_task_config', 'summarize_sweep', 'sweep_markdown', 'train',
           'train_and_evaluate', 'train_baselines', 'train_once', 'train_seeds',
           'TrainingStopped']
