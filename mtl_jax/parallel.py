"""Meshes and shardings for data-parallel training with ``jax.jit`` (one or many hosts)."""

from mtl_jax._src.parallel import data_sharded, make_mesh, replicate, replicated, shard_batch

__all__ = ['data_sharded', 'make_mesh', 'replicate', 'replicated', 'shard_batch']
