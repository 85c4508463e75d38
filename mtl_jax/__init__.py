"""mtl_jax: multi-task learning in JAX, on pure jit-compiled train steps."""

from mtl_jax import data, losses, metrics, models, parallel, tasks, weighting
from mtl_jax.step import (TrainState, evaluate, init_train_state, make_eval_step,
                          make_train_step)
from mtl_jax.tasks import Task, TaskSet

__version__ = '0.1.0'

__all__ = [
    'Task', 'TaskSet', 'TrainState', 'data', 'evaluate', 'init_train_state', 'losses',
    'make_eval_step', 'make_train_step', 'metrics', 'models', 'parallel', 'tasks', 'weighting',
]
