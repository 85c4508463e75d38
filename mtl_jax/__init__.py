"""mtl_jax: multi-task learning in JAX, on pure jit-compiled train steps.

Public modules: ``weighting`` (methods, ``combine``, ``as_optax``, the engine), ``models``
(architectures and backbones), ``data`` (data sets and the pipeline), ``tasks``, ``losses``,
``metrics``, ``parallel``, ``transfer`` and ``train`` (runs and experiments).  The
implementation lives in ``mtl_jax._src`` and may change without notice.
"""

from mtl_jax import data, losses, metrics, models, parallel, tasks, train, transfer, weighting
from mtl_jax._src.objective import Objective
from mtl_jax._src.step import (TrainState, evaluate, init_train_state, jit_train_step,
                               make_eval_step, make_train_step)
from mtl_jax._src.tasks import Task, TaskSet
from mtl_jax._src.experiments import train_and_evaluate
from mtl_jax._src.value_and_grad import mtl_value_and_grad

__version__ = '0.1.0'

__all__ = [
    'Objective', 'Task', 'TaskSet', 'TrainState', 'data', 'evaluate', 'init_train_state',
    'jit_train_step', 'losses', 'make_eval_step', 'make_train_step', 'metrics', 'models',
    'mtl_value_and_grad',
    'parallel', 'tasks', 'train', 'train_and_evaluate', 'transfer', 'weighting',
]
