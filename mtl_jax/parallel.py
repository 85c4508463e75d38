"""Meshes and shardings for ``jax.jit`` (one or many hosts): data parallelism over a
``('data',)`` mesh, and on a ``('data', 'model')`` mesh the state split over ``'model'``
(FSDP, task parallelism or both: ``state_sharding``)."""

from mtl_jax._src.distributed import (JoinError, check_same_config, initialize,
                                      initialize_from_config)
from mtl_jax._src.parallel import (LAYOUTS, StateSharding, data_sharded, make_mesh,
                                   mesh_shape, param_specs, replicate, replicated,
                                   shard_batch, state_sharding)

__all__ = ['JoinError', 'check_same_config', 'initialize', 'initialize_from_config',
           'LAYOUTS', 'StateSharding', 'data_sharded', 'make_mesh', 'mesh_shape',
           'param_specs', 'replicate', 'replicated', 'shard_batch', 'state_sharding']
