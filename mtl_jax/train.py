"""``train_and_evaluate(config, workdir)``: build, init or restore, train, evaluate, write."""

from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.train import (NonFiniteLossError, build_dataset, build_model, build_optimizer,
                                build_weighting, single_task_config, train_and_evaluate,
                                train_baselines)

__all__ = ['ConfigError', 'NonFiniteLossError', 'build_dataset', 'build_model',
           'build_optimizer', 'build_weighting', 'single_task_config', 'train_and_evaluate',
           'train_baselines']
