"""Data parallelism over a one-axis ``Mesh``: batch sharded over ``'data'``, state replicated."""

import jax
import numpy as np

P = jax.sharding.PartitionSpec


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A ``('data',)`` mesh over the first ``num_devices`` devices (0: all of them)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f'num_devices: must be in [0, {len(devices)}] (0: all {len(devices)} '
                     f'{devices[0].platform.upper()} devices this process sees), got '
                     f'{num_devices}')
  devices = devices[:num_devices or len(devices)]
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


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
