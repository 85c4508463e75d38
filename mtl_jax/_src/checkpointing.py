"""Checkpoints of the train state and the data iterator's position (orbax-checkpoint), checked
on restore, with a fallback to the newest usable one.

Saves are atomic (orbax writes to a temporary directory, then renames), so a run killed at
any moment leaves the previous checkpoints intact; unfinished temporaries are cleaned up on
the next start.  A finished checkpoint can still be damaged later (a disk or copy error, a
file truncated or deleted by hand), so each step directory holds three items:

* ``state``: the train state (``StandardSave``);
* ``data``: the iterator position (JSON);
* ``fingerprint``: a small JSON record, per leaf of the state (keyed by its path), of its
  shape, dtype and two 32-bit sums of its bytes, plus a SHA-256 of the iterator position.
  The sums are computed on device in one jitted call (``fingerprint``): each leaf's values
  are reinterpreted as uint32 words (1- and 2-byte values widened, 8-byte values split in
  two) and summed with uint32 wraparound as ``sum(w * (2654435761 * i + 1))`` (an odd weight
  per position ``i``: any change to a single word changes it) and ``sum(fmix32(w ^ 0x9E3779B9
  * i))`` (the murmur3 finaliser: a nonlinear second sum, so that changes which cancel in one
  are unlikely to cancel in both).  Sums are exact in any order, so sharded and multi-host
  arrays give the same fingerprint as one array, with no host copy.  Fetching the two words
  per leaf before the (asynchronous) save is the only cost.

``Checkpointer.restore_latest_valid(target)`` tries the steps newest first.  A step is
unusable when orbax cannot read it, or its state differs from ``target`` (the freshly
initialised state) in tree structure, a shape or a dtype, or holds a non-finite float
(naming the first such leaf), or does not match its fingerprint (bytes flipped even where
values stay finite), or fails the caller's ``validate``.  Checkpoints written before
fingerprints existed have none and are checked without one.  Each unusable step newer than
the one restored is logged as one line (``checkpoint step N is unusable (<reason>); moved to
<dir>; trying step M``) and moved aside, never deleted, into ``<checkpoints>_unusable/
<step>-<unix time>``: next to the checkpoint directory, not inside it, since orbax deletes
unfinished-looking subdirectories there (on GCS, any without ``commit_success.txt``), and
out of the way so that training re-saves those steps and orbax's ``max_to_keep`` counts only
real checkpoints (the restored step is the newest kept, so it is the last to be collected).
If no step is usable, ``CheckpointError`` lists each step and why, and nothing is moved.
A reason is one line: the check that failed, or the error's class and the first line of its
message (of its innermost cause), never a traceback.
"""

import gc
import hashlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FINGERPRINT_VERSION = 1
_WEIGHT = 2654435761          # odd (2**32 / golden ratio): weights 2654435761 * i + 1 are odd
_MIX_KEY = 0x9E3779B9
_REASON_CHARS = 200


class CheckpointError(RuntimeError):
  """No checkpoint could be restored (the message gives each step's reason)."""


class Restored(NamedTuple):
  """A checkpoint restored by ``Checkpointer.restore_latest_valid``."""
  state: Any
  data_state: dict
  step: int
  problems: tuple[str, ...]     # the line logged for each newer step passed over


class _Unusable(Exception):
  """A checkpoint that was read but failed a check (its message is the reason)."""


def _words(x: jax.Array) -> jax.Array:
  """``x``'s bytes as uint32 words, one per element (1-, 2-, 4-byte dtypes, bool) or two
  (8-byte dtypes, in a trailing axis)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jnp.iscomplexobj(x):
    x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
  bits = (jnp.finfo if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo)(x.dtype).bits
  if bits < 8:                  # int4, float4 ...: widened exactly
    x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
    bits = 32
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _positions(shape: tuple) -> jax.Array:
  """The row-major index of every element (mod 2**32), built per axis so that a sharded
  array is never reshaped (no data moves between devices)."""
  index, stride = jnp.zeros(shape, jnp.uint32), 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride = stride * shape[axis] % 2**32
  return index


def _fmix32(h: jax.Array) -> jax.Array:
  """The murmur3 finaliser: a bijective mix of uint32 words."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


@jax.jit
def _digests(leaves: list) -> tuple[jax.Array, jax.Array]:
  """``(uint32[n, 2] sums, bool[n] finite)`` for the ``n`` leaves (module docstring)."""
  sums, finite = [], []
  for x in leaves:
    words = _words(x)
    i = _positions(words.shape)
    first = jnp.sum(words * (i * jnp.uint32(_WEIGHT) + jnp.uint32(1)), dtype=jnp.uint32)
    second = jnp.sum(_fmix32(words ^ (i * jnp.uint32(_MIX_KEY))), dtype=jnp.uint32)
    sums.append(jnp.stack([first, second]))
    finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                  else jnp.bool_(True))
  return jnp.stack(sums).reshape(-1, 2), jnp.stack(finite).reshape(-1)


def _summaries(tree: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
  """``(leaf paths, uint32[n, 2] sums, bool[n] finite)`` of ``tree``'s leaves."""
  flat = jax.tree_util.tree_leaves_with_path(tree)
  if not flat:
    return [], np.zeros((0, 2), np.uint32), np.zeros(0, bool)
  sums, finite = jax.device_get(_digests([jnp.asarray(x) for _, x in flat]))
  return [jax.tree_util.keystr(p) for p, _ in flat], np.asarray(sums), np.asarray(finite)


def _data_digest(data_state: Any) -> str:
  return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def _describe(x: Any) -> str:
  return f'{x.dtype}{list(np.shape(x))}'


def fingerprint(state: Any, data_state: Any = None, summaries=None) -> dict:
  """The JSON fingerprint of ``state`` (and of ``data_state``) stored with a checkpoint:
  ``{'version', 'leaves': {path: {'shape', 'dtype', 'sums': [a, b]}}, 'data'}``
  (``summaries``: ``_summaries(state)`` if already computed)."""
  paths, sums, _ = summaries or _summaries(state)
  leaves = {path: {'shape': list(np.shape(x)), 'dtype': str(x.dtype),
                   'sums': [int(a), int(b)]}
            for path, x, (a, b) in zip(paths, jax.tree_util.tree_leaves(state), sums)}
  return {'version': FINGERPRINT_VERSION, 'leaves': leaves,
          'data': None if data_state is None else _data_digest(data_state)}


def check_like(state: Any, target: Any) -> None:
  """Raises ``_Unusable`` naming the first difference of ``state`` from ``target`` in tree
  structure, shape or dtype."""
  if jax.tree.structure(state) != jax.tree.structure(target):
    have = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
    want = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)}
    extra, missing = sorted(have - want), sorted(want - have)
    detail = (f'missing {missing[0]}' if missing else f'unexpected {extra[0]}' if extra
              else 'different node types')
    raise _Unusable(f'state tree differs from this run\'s ({detail})')
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(state),
                          jax.tree_util.tree_leaves(target)):
    if np.shape(x) != np.shape(y) or str(x.dtype) != str(y.dtype):
      raise _Unusable(f'{jax.tree_util.keystr(path)} is {_describe(x)}, this run has '
                      f'{_describe(y)}')


def check_fingerprint(state: Any, data_state: Any, stored: Optional[dict]) -> None:
  """Raises ``_Unusable`` naming the first non-finite float leaf of ``state``, or the first
  leaf (or the data position) that does not match the ``stored`` fingerprint (if any)."""
  paths, sums, finite = _summaries(state)
  if not finite.all():
    raise _Unusable(f'non-finite values in {paths[int(np.argmin(finite))]}')
  if stored is None:
    return
  if not isinstance(stored, dict) or stored.get('version') != FINGERPRINT_VERSION:
    raise _Unusable(f'fingerprint of unknown format (version {stored.get("version")!r})'
                    if isinstance(stored, dict) else 'fingerprint is not a JSON object')
  leaves = stored.get('leaves') or {}
  if sorted(leaves) != sorted(paths):
    raise _Unusable('fingerprint lists other leaves than the state holds')
  for path, x, (a, b) in zip(paths, jax.tree_util.tree_leaves(state), sums):
    saved = leaves[path]
    if saved.get('shape') != list(np.shape(x)) or saved.get('dtype') != str(x.dtype):
      raise _Unusable(f'{path} was saved as {saved.get("dtype")}{saved.get("shape")}, this run '
                      f'has {_describe(x)}')
    if saved.get('sums') != [int(a), int(b)]:
      raise _Unusable(f'fingerprint mismatch in {path} (its stored bytes changed)')
  if stored.get('data') is not None and stored['data'] != _data_digest(data_state):
    raise _Unusable('fingerprint mismatch in the data position')


def short_reason(error: BaseException) -> str:
  """One line for ``error``: its class and the first line of its message, trimmed.  A wrapped
  error is described by its innermost cause (orbax wraps TensorStore's errors, which name the
  array and the problem, in one that prints a long spec instead)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  first = lines[0].strip() if lines else ''
  text = first if isinstance(error, _Unusable) else f'{type(error).__name__}: {first}'
  text = text.rstrip(': ')
  return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + '...'


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable exception is the report of a read orbax abandoned: its coroutine,
  finalised, or TensorStore's completion callback finding orbax's event loop closed."""
  code = getattr(unraisable.object, 'cr_code', None)
  if code is not None:
    return f'{os.sep}orbax{os.sep}' in code.co_filename
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed'
          and any(frame.name == 'call_soon_threadsafe' for frame in frames))


def _quiet_abandoned_reads() -> None:
  """After a failed read: drop the reports of the reads orbax abandoned.

  When one array cannot be read, orbax closes its event loop with the other reads still
  pending; each later prints 'Exception ignored in ...' and a traceback through
  ``sys.unraisablehook`` (up to hundreds of lines, about a step already reported in one).
  Installed once, then chained: any other unraisable exception goes to the previous hook."""
  if getattr(sys.unraisablehook, 'drops_abandoned_reads', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
  gc.collect()                # finalise the abandoned coroutines now, quietly


def _everywhere(ok: bool) -> bool:
  """Whether ``ok`` holds on every process (so that all of them pick the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
  """Saves in ``directory``, keeping the last ``max_to_keep``; restores the newest usable
  checkpoint, moving newer unusable ones to ``<directory>_unusable/`` (module docstring)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self._directory = epath.Path(os.path.abspath(directory))
    self._unusable_directory = self._directory.parent / f'{self._directory.name}_unusable'
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=1, create=True,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> bool:
    """Saves (asynchronously) ``state``, the iterator position and their fingerprint at
    ``step``; a state with a non-finite float (an update that overflowed) is not saved, with
    a warning naming the leaf, so the newest checkpoint stays usable.  Returns whether it
    saved."""
    summaries = _summaries(state)
    paths, _, finite = summaries
    if not finite.all():
      logging.warning('checkpoint step %d not saved: non-finite values in %s', step,
                      paths[int(np.argmin(finite))])
      return False
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        fingerprint=ocp.args.JsonSave(fingerprint(state, data_state, summaries))))
    return True

  def _read(self, step: int, target: Any) -> tuple[Any, dict, Optional[dict]]:
    """``(state, data position, stored fingerprint or None)`` of ``step``, unchecked, with
    ``target``'s structure, dtypes and shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    items = dict(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
    # Step directories are named by the step (orbax's default name format).
    has_fingerprint = (self._directory / str(step) / 'fingerprint').exists()
    if has_fingerprint:       # absent from checkpoints written before fingerprints
      items['fingerprint'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return (restored['state'], restored['data'],
            restored['fingerprint'] if has_fingerprint else None)

  def _check(self, step: int, target: Any,
             validate: Optional[Callable[[Any, dict], Any]]) -> tuple[Any, Optional[str]]:
    """``((state, data position), None)`` if ``step`` is usable, else ``(None, reason)``."""
    try:
      state, data_state, stored = self._read(step, target)
      error = None
    except Exception as e:  # pylint: disable=broad-except  # any unreadable checkpoint
      error = e
      _quiet_abandoned_reads()
    if not _everywhere(error is None):
      return None, short_reason(error) if error else 'unreadable on another process'
    try:
      check_like(state, target)
      check_fingerprint(state, data_state, stored)
      if validate is not None:
        validate(state, data_state)
    except Exception as e:  # pylint: disable=broad-except  # a failed check, or validate's
      error = e
    if not _everywhere(error is None):
      return None, short_reason(error) if error else 'rejected on another process'
    return (state, data_state), None

  def restore_latest_valid(self, target: Any, validate: Optional[Callable[[Any, dict], Any]]
                           = None) -> Optional[Restored]:
    """The newest checkpoint that reads and passes the checks (module docstring) against
    ``target`` (a state with this run's structure, dtypes and shardings) and
    ``validate(state, data_state)`` (which raises to reject); None if there is none.

    Newer unusable steps are moved aside, each logged in one line.  Raises
    ``CheckpointError`` (leaving every checkpoint in place) if no step is usable."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      restored, reason = self._check(step, target, validate)
      if restored is not None:
        break
      failed.append((step, reason))
    else:
      if not steps:
        return None
      listing = '; '.join(f'step {s}: {reason}' for s, reason in failed)
      raise CheckpointError(
          f'no usable checkpoint in {self._directory} ({listing}); the checkpoints were left '
          'in place: move or delete them to start afresh')
    problems = self._move_aside(failed, step)
    return Restored(restored[0], restored[1], step, problems)

  def _move_aside(self, failed: list[tuple[int, str]], good_step: int) -> tuple[str, ...]:
    """Moves the ``failed`` steps into the unusable directory (renamed, never deleted), logs
    one line for each and makes orbax forget them; returns the lines."""
    lines = []
    for k, (step, reason) in enumerate(failed):
      stamp = int(time.time())
      destination = self._unusable_directory / f'{step}-{stamp}'
      if jax.process_index() == 0:
        suffix = 0
        while destination.exists():
          suffix += 1
          destination = self._unusable_directory / f'{step}-{stamp}-{suffix}'
        try:
          self._unusable_directory.mkdir(parents=True, exist_ok=True)
          (self._directory / str(step)).rename(destination)
        except OSError as e:
          raise CheckpointError(
              f'checkpoint step {step} is unusable ({reason}) and could not be moved to '
              f'{destination} ({short_reason(e)}): move or delete it by hand') from None
      next_step = failed[k + 1][0] if k + 1 < len(failed) else good_step
      lines.append(f'checkpoint step {step} is unusable ({reason}); moved to {destination}; '
                   f'trying step {next_step}')
      logging.warning('%s', lines[-1])
    if failed:
      if jax.process_count() > 1:
        ocp.multihost.sync_global_processes('mtl_jax_checkpoints_moved_aside')
      self._manager.reload()    # forget the moved steps: re-saving them is then allowed
    return tuple(lines)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
