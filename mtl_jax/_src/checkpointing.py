"""Checkpoints of the train state and the data iterator's position (orbax-checkpoint).

Saves are atomic (orbax writes to a temporary directory, then renames), so a run killed at
any moment leaves the previous checkpoints intact; unfinished temporaries are cleaned up on
the next start.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves in ``directory``, keeping the last ``max_to_keep``."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=1, create=True,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves (asynchronously) ``state`` and the iterator position at ``step``."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Restores the state (with ``target``'s structure, dtypes and shardings) and data position."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
