"""Damaged checkpoints: a resume checks the newest checkpoint, falls back to the newest usable
one (one warning line per unusable step, which is moved aside, never deleted) and ends
exactly as if the damaged step had never been written; with none usable it stops, clearly,
touching nothing.

One base run (checkpoints 10, 20, 30) is shared: each case damages a copy's step 30 and
resumes to step 30, so the fallback retrains 21..30 and must re-save step 30 bitwise equal
to the base run's own (resuming is deterministic, see test_resume.py).
"""

import hashlib
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

# Private on purpose: the fingerprint and the checks, tested on their own.
from mtl_jax._src import checkpointing
from tests.conftest import train_tiny

RUN = {'train.steps': 30, 'train.checkpoint_every': 10, 'train.keep_checkpoints': 3}
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('base') / 'run'
  return workdir, train_tiny(workdir, **RUN)


def _copy(base, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(base[0], workdir)
  return workdir


def _frames(data: bytes) -> list[tuple[int, int]]:
  """``(start, end)`` of the content of each zstd frame at the start of an OCDBT data file
  (one frame per stored chunk; small float chunks do not compress, so each is one raw
  block, and bytes changed inside it are read back changed, silently)."""
  frames, offset = [], 0
  while data[offset:offset + 4] == ZSTD_MAGIC:
    descriptor = data[offset + 4]
    fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    assert descriptor & 0b111 == 0, 'a frame with a checksum or a dictionary'
    start = offset + 5 + (not single_segment) + [single_segment, 2, 4, 8][fcs_flag] + 3
    header = int.from_bytes(data[start - 3:start], 'little')
    assert header & 0b111 == 0b001, 'not a single raw block'
    frames.append((start, start + (header >> 3)))
    offset = frames[-1][1]
  return frames


def _head(path) -> bytes:
  with open(path, 'rb') as f:
    return f.read(4)


def _array_file(step_dir) -> tuple[str, tuple[int, int]]:
  """The largest file of array data under ``step_dir/state`` and its first chunk's span."""
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir / 'state') for f in names]
  files = [f for f in files if _head(f) == ZSTD_MAGIC]
  path = max(files, key=os.path.getsize)
  with open(path, 'rb') as f:
    first = _frames(f.read())[0]
  assert first[1] - first[0] >= 400, first
  return path, first


def _truncate_data_file(step_dir):
  path, (start, end) = _array_file(step_dir)
  os.truncate(path, (start + end) // 2)


def _delete_data_file(step_dir):
  os.remove(_array_file(step_dir)[0])


def _zero_bytes_in_data_file(step_dir):
  path, (start, end) = _array_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek((start + end) // 2 - 100)
    f.write(bytes(200))


def _garbage(path):
  with open(path, 'w') as f:
    f.write('{"next_index": 3, garbage')


# Each damage, and a word of the reason the fallback must give.
DAMAGE = {
    'truncated data file': (_truncate_data_file, 'Error reading'),
    'deleted data file': (_delete_data_file, 'Error reading'),
    'zeroed bytes in a data file': (_zero_bytes_in_data_file, 'fingerprint mismatch in .'),
    'deleted array metadata': (lambda d: os.remove(d / 'state' / '_METADATA'), 'ValueError'),
    'deleted state directory': (lambda d: shutil.rmtree(d / 'state'), '"state" was not found'),
    'garbage data position': (lambda d: _garbage(d / 'data' / 'metadata'), 'JSONDecodeError'),
    'deleted data position': (lambda d: os.remove(d / 'data' / 'metadata'), 'FileNotFoundError'),
}


def _state(workdir, step):
  return ocp.StandardCheckpointer().restore(str(workdir / 'checkpoints' / str(step) / 'state'))


def _assert_same_state(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b) > 10
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _unusable_lines(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if 'is unusable' in r.getMessage()]


# Orbax abandons the reads in flight when one fails; their reports must not reach the user.
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(base, tmp_path, caplog,
                                                                    capsys, damage):
  workdir = _copy(base, tmp_path)
  apply, reason = DAMAGE[damage]
  apply(workdir / 'checkpoints' / '30')
  with caplog.at_level(logging.WARNING):
    results = train_tiny(workdir, **RUN)
  assert results['resumed_from_step'] == 20

  # One short line, no traceback; the step was moved aside (whole), not deleted.
  (line,) = _unusable_lines(caplog)
  moved = os.listdir(workdir / 'checkpoints_unusable')
  assert len(moved) == 1 and moved[0].startswith('30-')
  destination = str(workdir / 'checkpoints_unusable' / moved[0])
  assert line.startswith('checkpoint step 30 is unusable (')
  assert line.endswith(f'); moved to {destination}; trying step 20'), line
  assert reason in line and '\n' not in line
  assert len(line) - len(destination) < 300, line
  assert 'Traceback' not in capsys.readouterr().err
  assert os.path.exists(os.path.join(destination, '_CHECKPOINT_METADATA'))

  # Step 30 was re-saved, equal to the undamaged run's, and orbax kept 10 and 20.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20', '30']
  _assert_same_state(_state(workdir, 30), _state(base[0], 30))
  assert results['metrics'] == base[1]['metrics']
  with open(workdir / 'metrics.jsonl') as f, open(base[0] / 'metrics.jsonl') as g:
    assert f.read() == g.read()


def _tree_digest(directory) -> dict:
  out = {}
  for d, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(d, name), 'rb') as f:
        out[os.path.relpath(os.path.join(d, name), directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def test_every_checkpoint_damaged_is_a_clear_error_and_nothing_is_touched(base, tmp_path):
  workdir = _copy(base, tmp_path)
  checkpoints = workdir / 'checkpoints'
  _zero_bytes_in_data_file(checkpoints / '30')
  shutil.rmtree(checkpoints / '20' / 'state')
  os.remove(checkpoints / '10' / 'state' / '_METADATA')
  before = _tree_digest(checkpoints)
  with pytest.raises(checkpointing.CheckpointError) as raised:
    train_tiny(workdir, **RUN)
  message = str(raised.value)
  assert isinstance(raised.value, RuntimeError)
  assert 'step 30: fingerprint mismatch in ' in message
  assert 'step 20: KeyError: ' in message and 'step 10: ValueError: ' in message
  assert 'left in place' in message and '\n' not in message
  assert _tree_digest(checkpoints) == before
  assert not os.path.exists(workdir / 'checkpoints_unusable')


def _drop_fingerprints(checkpoints):
  """What a checkpoint written before fingerprints existed looks like."""
  for step in os.listdir(checkpoints):
    shutil.rmtree(checkpoints / step / 'fingerprint')
    with open(checkpoints / step / '_CHECKPOINT_METADATA') as f:
      metadata = json.load(f)
    del metadata['item_handlers']['fingerprint']
    with open(checkpoints / step / '_CHECKPOINT_METADATA', 'w') as f:
      json.dump(metadata, f)


@pytest.mark.parametrize('damage', [
    'no fingerprint (an older checkpoint)',
    'garbage step metadata (commit time only)',
])
def test_a_checkpoint_with_intact_arrays_resumes_quietly(base, tmp_path, caplog, damage):
  workdir = _copy(base, tmp_path)
  if damage.startswith('no fingerprint'):
    _drop_fingerprints(workdir / 'checkpoints')
  else:
    _garbage(workdir / 'checkpoints' / '30' / '_CHECKPOINT_METADATA')
  with caplog.at_level(logging.WARNING):
    results = train_tiny(workdir, **RUN)
  assert results['resumed_from_step'] == 30
  assert results['metrics'] == base[1]['metrics']      # the same state, evaluated
  assert not _unusable_lines(caplog) and 'fingerprint' not in caplog.text
  assert not os.path.exists(workdir / 'checkpoints_unusable')


def _flip_lowest_bit(x, index):
  """``x`` with the lowest bit of its element ``index`` (of its raw bytes) flipped."""
  raw = np.array(x).reshape(-1).view(np.uint8).copy()
  raw[index * np.dtype(x.dtype).itemsize] ^= 1
  return raw.view(np.dtype(x.dtype)).reshape(np.shape(x))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'float16', 'int8', 'uint8', 'int32',
                                   'uint32', 'bool'])
def test_the_fingerprint_sees_one_flipped_bit(dtype):
  x = (np.arange(24) % 7).reshape(2, 3, 4).astype(jnp.dtype(dtype))
  before = checkpointing.fingerprint({'x': jnp.asarray(x)})['leaves']["['x']"]
  for index in (0, 13, 23):
    after = checkpointing.fingerprint({'x': jnp.asarray(_flip_lowest_bit(x, index))})
    sums = after['leaves']["['x']"]['sums']
    assert sums[0] != before['sums'][0] and sums[1] != before['sums'][1], (dtype, index)
  assert before['dtype'] == dtype and before['shape'] == [2, 3, 4]


def test_the_fingerprint_sees_float64_bits_and_swapped_values():
  with jax.enable_x64(True):
    x = np.linspace(0, 1, 10)
    a = checkpointing.fingerprint({'x': jnp.asarray(x)})['leaves']["['x']"]
    b = checkpointing.fingerprint({'x': jnp.asarray(_flip_lowest_bit(x, 4))})['leaves']["['x']"]
  assert a['dtype'] == 'float64' and a['sums'] != b['sums']
  y = np.arange(8, dtype=np.float32)
  swapped = y[[1, 0, 2, 3, 4, 5, 6, 7]]
  assert (checkpointing.fingerprint({'y': jnp.asarray(y)}) !=
          checkpointing.fingerprint({'y': jnp.asarray(swapped)}))


def test_the_fingerprint_is_the_documented_sums():
  x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  words = x.view(np.uint32).ravel().astype(np.uint64)
  i = np.arange(words.size, dtype=np.uint64)
  first = int(np.sum(words * ((2654435761 * i + 1) % 2**32) % 2**32) % 2**32)
  h = words ^ ((0x9E3779B9 * i) % 2**32)
  h ^= h >> 16
  h = h * 0x85EBCA6B % 2**32
  h ^= h >> 13
  h = h * 0xC2B2AE35 % 2**32
  h ^= h >> 16
  second = int(np.sum(h) % 2**32)
  assert checkpointing.fingerprint({'x': jnp.asarray(x)})['leaves']["['x']"]['sums'] == [
      first, second]


def test_a_finite_state_with_changed_bytes_is_rejected_naming_the_leaf():
  state = {'a': jnp.ones((3, 2)), 'b': {'c': jnp.arange(4.0)}}
  data_state = {'next_index': 3}
  stored = checkpointing.fingerprint(state, data_state)
  checkpointing.check_fingerprint(state, data_state, stored)
  checkpointing.check_fingerprint(state, data_state, None)     # no fingerprint: still checked
  changed = {**state, 'b': {'c': jnp.asarray(_flip_lowest_bit(np.arange(4.0, dtype=np.float32),
                                                              2))}}
  assert np.all(np.isfinite(changed['b']['c']))
  with pytest.raises(Exception, match=r"^fingerprint mismatch in \['b'\]\['c'\]"):
    checkpointing.check_fingerprint(changed, data_state, stored)
  with pytest.raises(Exception, match='^fingerprint mismatch in the data position$'):
    checkpointing.check_fingerprint(state, {'next_index': 4}, stored)
  nan = {**state, 'a': state['a'].at[1, 1].set(jnp.nan)}
  with pytest.raises(Exception, match=r"^non-finite values in \['a'\]$"):
    checkpointing.check_fingerprint(nan, data_state, None)
  with pytest.raises(Exception, match=r"^\['a'\] is float32\[3, 2\], this run has float32\[2"):
    checkpointing.check_like(state, {**state, 'a': jnp.ones((2, 3))})
  with pytest.raises(Exception, match=r"state tree differs .*missing \['d'\]"):
    checkpointing.check_like(state, {**state, 'd': jnp.ones(1)})


def test_a_reason_is_one_short_line_naming_the_innermost_cause():
  try:
    try:
      raise ValueError('NOT_FOUND: Error reading "params.w/0"\n' + 'detail ' * 100)
    except ValueError as e:
      raise Exception('Encountered error while reading array index. <long spec>') from e
  except Exception as e:  # pylint: disable=broad-except
    reason = checkpointing.short_reason(e)
  assert reason == 'ValueError: NOT_FOUND: Error reading "params.w/0"'
  assert len(checkpointing.short_reason(KeyError('x' * 1000))) == 200


def test_a_non_finite_state_is_not_saved(tmp_path, caplog):
  """An update that overflowed (params inf) is applied by the step's guard; the checkpoint
  then is not written, so the newest checkpoint on disk stays usable."""
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'ckpt'))
  state = {'a': jnp.ones((3, 2)), 'b': jnp.arange(4.0)}
  assert checkpointer.save(1, state, {'next_index': 1})
  with caplog.at_level(logging.WARNING):
    assert not checkpointer.save(2, {**state, 'b': state['b'].at[2].set(jnp.inf)},
                                 {'next_index': 2})
  checkpointer.wait()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['1']
  assert "checkpoint step 2 not saved: non-finite values in ['b']" in caplog.text
