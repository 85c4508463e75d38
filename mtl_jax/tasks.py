"""Tasks and the ordered ``TaskSet`` that fixes the task axis of every ``[T]`` array."""

from mtl_jax._src.tasks import (KINDS, Task, TaskGroup, TaskSet, binary, multiclass, multilabel,
                                regression)

__all__ = ['KINDS', 'Task', 'TaskGroup', 'TaskSet', 'binary', 'multiclass', 'multilabel',
           'regression']
