"""Meshes and shardings: data parallelism over ``('data',)``, and on a 2-D ``('data',
'model')`` mesh the state split over ``'model'`` (FSDP, task parallelism or both).

1-D (the default): the batch is sharded over ``'data'``, the state replicated.

2-D (``make_mesh(shape=(data, model))``): the batch is still sharded over ``'data'`` (and
replicated over ``'model'``); ``state_sharding`` lays the state out over ``'model'``:

* ``'fsdp'``: every leaf of ``params['shared']`` (and its optimizer state) split along its
  largest axis divisible by the model-axis size; leaves with no such axis (or fewer than
  ``min_size`` entries) replicated.  XLA gathers them where the step reads them.
* ``'tasks'``: every parameter leaf whose leading axis is a stacked task or expert axis (a
  size in ``task_sizes``: the tasks T, a task group's size, an expert count) split along that
  axis, and the per-task Jacobian's task axis too (``StateSharding.task_rows``): each device
  pulls back its share of the tasks, so T can grow with the device count.
* ``'fsdp+tasks'``: stacked leaves along their task axis, the other shared leaves as FSDP.

Which leaf goes where never changes what the step computes: ``jax.jit`` with these in/out
shardings partitions the same program (the Gram matrix and the combined direction are
exact; only the order of float sums may differ from one device's).
"""

import math
from typing import Any, Collection, NamedTuple, Optional, Sequence

import jax
import numpy as np

P = jax.sharding.PartitionSpec
PyTree = Any
LAYOUTS = ('none', 'fsdp', 'tasks', 'fsdp+tasks')


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, int]:
  """``(data, model)`` from ``shape`` = (data, model) (data 0: ``device_count // model``).

  Raises ``ValueError`` (naming ``mesh_shape``) unless it is two integers, model >= 1,
  data >= 0, and data * model divides ``device_count``."""
  shape = tuple(shape)
  if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) for n in shape) \
      or shape[1] < 1 or shape[0] < 0:
    raise ValueError(f'mesh_shape: must be (data, model) with data >= 0 (0: all devices '
                     f'left) and model >= 1, got {shape}')
  data, model = int(shape[0]) or device_count // int(shape[1]), int(shape[1])
  if data == 0 or device_count % (data * model):
    raise ValueError(f'mesh_shape: {shape} does not divide the {device_count} devices this '
                     f'process sees ({data} x {model} = {data * model}); pick sizes whose '
                     f'product divides {device_count}')
  return data, model


def make_mesh(num_devices: int = 0, shape: Optional[Sequence[int]] = None
              ) -> jax.sharding.Mesh:
  """A ``('data',)`` mesh over the first ``num_devices`` devices (0: all of them); with
  ``shape`` = (data, model) a ``('data', 'model')`` mesh over the first data * model devices
  (``mesh_shape``; ``num_devices`` must then be 0 or data * model)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f'num_devices: must be in [0, {len(devices)}] (0: all {len(devices)} '
                     f'{devices[0].platform.upper()} devices this process sees), got '
                     f'{num_devices}')
  auto = jax.sharding.AxisType.Auto
  if not shape:
    devices = devices[:num_devices or len(devices)]
    return jax.make_mesh((len(devices),), ('data',), axis_types=(auto,), devices=devices)
  data, model = mesh_shape(shape, len(devices))
  if num_devices not in (0, data * model):
    raise ValueError(f'num_devices: must be 0 or {data * model} (the devices of mesh_shape '
                     f'{tuple(shape)}), got {num_devices}')
  return jax.make_mesh((data, model), ('data', 'model'), axis_types=(auto, auto),
                       devices=devices[:data * model])


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, P())


def data_sharded(mesh):
  return jax.sharding.NamedSharding(mesh, P('data'))


def replicate(tree, mesh):
  """Places every leaf of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh):
  """Splits the leading (batch) axis of every leaf over the mesh's ``'data'`` axis.

  Each process passes its local part of the global batch.
  """
  sharding = data_sharded(mesh)
  size = mesh.shape['data']

  def check(path, x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % size:
      raise ValueError(f'batch{jax.tree_util.keystr(path)}: leading size {x.shape[:1]} is not '
                       f"divisible by the {size} devices of the mesh's 'data' axis")
    return x

  local = jax.tree_util.tree_map_with_path(check, batch)
  if jax.process_count() == 1:   # the whole batch is local: one transfer, half the host time
    return jax.device_put(local, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


class StateSharding(NamedTuple):
  """Where a ``TrainState`` lies on a mesh (``state_sharding``).

  Attributes:
    mesh: the mesh.
    state: a ``NamedSharding`` per leaf, structured like the state (the step's in and out
      shardings).
    task_rows: the sharding of a per-task Jacobian's leading (task) axis (``P('model')``) for
      the task-parallel layouts; None: left to XLA.
  """
  mesh: jax.sharding.Mesh
  state: PyTree
  task_rows: Optional[jax.sharding.NamedSharding] = None


def _is_spec(x) -> bool:
  return isinstance(x, P)


def _fsdp_axis(shape: tuple, size: int, min_size: int) -> Optional[int]:
  """The largest axis of ``shape`` divisible by ``size`` (the first of equal ones); None if
  there is none or the leaf has fewer than ``min_size`` entries (not worth a gather)."""
  if size <= 1 or math.prod(shape) < max(min_size, 1):
    return None
  axes = [a for a, n in enumerate(shape) if n % size == 0]
  return max(axes, key=lambda a: (shape[a], -a)) if axes else None


def param_specs(params, model_size: int, *, fsdp: bool = False, tasks: bool = False,
                task_sizes: Collection[int] = (), min_size: int = 0) -> PyTree:
  """A ``PartitionSpec`` over the ``'model'`` axis (of size ``model_size``) per leaf of
  ``params`` (``{'shared': ..., 'task': ...}``; arrays or ``ShapeDtypeStruct``s), from its
  path and shape:

  * ``tasks``: a leaf whose leading axis has a size in ``task_sizes`` (a stacked task or
    expert axis) divisible by ``model_size``: ``P('model')``, split along that axis;
  * else ``fsdp`` and the leaf is under ``'shared'``: split along its largest axis divisible
    by ``model_size`` (``P(None, ..., 'model')``); replicated (``P()``) if it has none or
    fewer than ``min_size`` entries;
  * else replicated, ``P()``.
  """
  sizes = frozenset(int(n) for n in task_sizes)

  def spec(path, leaf):
    shape = tuple(np.shape(leaf))
    if tasks and shape and shape[0] in sizes and shape[0] % model_size == 0:
      return P('model')
    if fsdp and path and getattr(path[0], 'key', None) == 'shared':
      axis = _fsdp_axis(shape, model_size, min_size)
      if axis is not None:
        return P(*([None] * axis), 'model')
    return P()

  return jax.tree_util.tree_map_with_path(spec, params)


def _key(path) -> tuple:
  return tuple(str(k) for k in path)


def mirror_specs(tree, params, specs) -> PyTree:
  """A spec per leaf of ``tree`` (an optimizer state, which holds copies of the params:
  Adam's ``mu`` and ``nu``, wrapped by ``multi_transform`` or ``masked`` at any depth): the
  spec of the parameter whose path ends the leaf's path and whose shape it has; ``P()``
  (replicated) for any other leaf (counts, factored moments, schedules' state)."""
  index = {}
  flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)
  for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params), flat_specs):
    index[_key(path)] = (tuple(np.shape(leaf)), spec)

  def spec(path, leaf):
    key = _key(path)
    for start in range(len(key)):
      found = index.get(key[start:])
      if found is not None and found[0] == tuple(np.shape(leaf)):
        return found[1]
    return P()

  return jax.tree_util.tree_map_with_path(spec, tree)


def state_sharding(state, mesh: jax.sharding.Mesh, layout: str = 'fsdp', *,
                   task_sizes: Collection[int] = (), min_size: int = 0) -> StateSharding:
  """The shardings of a ``TrainState`` (arrays or ``jax.eval_shape``'s structs) for
  ``layout`` (``LAYOUTS``; module docstring): params by ``param_specs``, the optimizer state
  by ``mirror_specs``, everything else (step, model and weighting state, rng) replicated.

  Place a state with ``jax.device_put(state, sharding.state)`` and give the sharding to
  ``make_train_step(..., sharding=)`` and ``make_eval_step(..., sharding=)``."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout: must be one of {LAYOUTS}, got {layout!r}')
  if layout != 'none' and 'model' not in mesh.axis_names:
    raise ValueError(f"layout {layout!r} splits the state over the mesh's 'model' axis; this "
                     f'mesh has axes {mesh.axis_names}: make it with make_mesh(shape=(data, '
                     'model))')
  fsdp, tasks = 'fsdp' in layout, 'tasks' in layout
  size = dict(mesh.shape).get('model', 1)
  specs = param_specs(state.params, size, fsdp=fsdp, tasks=tasks, task_sizes=task_sizes,
                      min_size=min_size)
  named = lambda tree: jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), tree,
                                    is_leaf=_is_spec)
  everything = jax.tree.map(lambda _: replicated(mesh), state)
  shardings = everything.replace(
      params=named(specs), opt_state=named(mirror_specs(state.opt_state, state.params, specs)))
  rows = jax.sharding.NamedSharding(mesh, P('model')) if tasks else None
  return StateSharding(mesh, shardings, rows)
