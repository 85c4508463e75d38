"""Several processes (one per host) as one run, through JAX's multi-controller runtime.

``initialize`` joins this process to the others with ``jax.distributed.initialize`` when the
arguments (``config.distributed``), mtl_jax's environment variables (``MTL_JAX_COORDINATOR``,
``MTL_JAX_NUM_PROCESSES``, ``MTL_JAX_PROCESS_ID``) or a cluster launcher's (SLURM, Open MPI,
TPU on GKE, ``JAX_COORDINATOR_ADDRESS``: those jax's own cluster detection reads) say there are
several processes, and does nothing for a single one.  It must run before anything starts
JAX's backend (``jax.devices()``, an array): ``jax.distributed`` cannot join afterwards.

Joining cannot hang and does not end in jax's abort: a process other than 0 first waits (up
to ``timeout_s``) for the coordinator's port to accept connections, and raises ``JoinError``
naming the address and the fields if it never does; once there, if not every process has
joined by the deadline (jax itself would abort the process with a C++ stack trace a few
seconds after its ``initialization_timeout``), a watchdog prints one line saying so and
ends the process with status 2.

Once joined, ``check_same_config`` compares a hash of every process's config (and workdir)
and stops all of them with ``ConfigError`` naming the fields that differ, if any do.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from mtl_jax._src.config_validation import ConfigError

ENV_COORDINATOR = 'MTL_JAX_COORDINATOR'
ENV_NUM_PROCESSES = 'MTL_JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'MTL_JAX_PROCESS_ID'
MODES = ('auto', 'always', 'never')
# Fields that differ from process to process by design (not compared by check_same_config).
PER_PROCESS_FIELDS = ('config.distributed.process_id', 'config.distributed.local_device_ids')
_WATCHDOG_EXIT_STATUS = 2     # as the command line's other configuration errors
_JAX_GRACE_S = 30             # jax's own timeout is ours plus this: the watchdog speaks first
_SHOWN_DIFFERENCES = 5


class JoinError(ConfigError):
  """This process could not join the others (the message names the address and fields)."""


class Plan(NamedTuple):
  """What ``initialize`` passes to ``jax.distributed.initialize`` (None: jax detects it).

  ``labels`` names where each value came from (a config field, an argument or an environment
  variable), for the messages; ``launcher`` is the cluster launcher detected, if any."""
  coordinator_address: Optional[str]
  num_processes: Optional[int]
  process_id: Optional[int]
  local_device_ids: Optional[tuple[int, ...]]
  labels: Mapping[str, str]
  launcher: Optional[str]


def split_address(address: str, field: str) -> tuple[str, int]:
  """``(host, port)`` of ``'host:port'`` (IPv6 hosts in brackets: ``'[::1]:1234'``); raises
  ``ValueError`` naming ``field`` otherwise."""
  host, _, port = str(address).rpartition(':')
  host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"{field}: must be 'host:port' with a port in [1, 65535] (the address of "
                     f"process 0, e.g. '10.0.0.1:1234'), got {address!r}")
  return host, int(port)


def launcher(environ: Mapping[str, str]) -> Optional[tuple[str, int]]:
  """``(name, number of processes)`` of the cluster launcher whose variables ``environ``
  holds, among those jax's cluster detection reads without a network query (SLURM, Open MPI,
  TPU on GKE); None if none.  (On a Cloud TPU VM slice jax reads the topology from the
  metadata server instead: ``mode='always'``.)"""
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
           'SLURM_LOCALID')
  if all(k in environ for k in slurm):
    return 'SLURM', int(environ['SLURM_NTASKS'])
  if 'OMPI_MCA_orte_hnp_uri' in environ:
    return 'Open MPI', int(environ.get('OMPI_COMM_WORLD_SIZE', '1'))
  hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES')
  if hosts:
    return 'TPU (GKE)', len([h for h in hosts.split(',') if h.strip()])
  return None


def _from_environ(environ: Mapping[str, str], name: str, fallback: Optional[str] = None):
  """``(value, label)`` of the environment variable ``name`` (or ``fallback``), int-valued
  ones converted; ``(None, None)`` if unset."""
  for var in (name, fallback):
    if var and environ.get(var, '') != '':
      value = environ[var]
      if var in (ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        if not value.lstrip('-').isdigit():
          raise JoinError(f'{var}: must be an integer, got {value!r}')
        value = int(value)
      return value, var
  return None, None


def plan(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
         process_id: Optional[int] = None, local_device_ids: Optional[Sequence[int]] = None,
         mode: str = 'auto', *, labels: Optional[Mapping[str, str]] = None,
         environ: Optional[Mapping[str, str]] = None) -> Optional[Plan]:
  """What to join with (a pure function of the arguments and ``environ``); None: one process.

  Arguments win over ``MTL_JAX_*`` variables, which win over ``JAX_COORDINATOR_ADDRESS`` and
  the launcher's.  ``mode`` 'never' never joins; 'always' always does (jax detects what is
  unset); 'auto' joins when a coordinator or more than one process is given or a launcher
  runs several.  ``num_processes=1`` means one process whatever the environment.  Raises
  ``JoinError`` naming the field when a value is missing or out of range."""
  environ = os.environ if environ is None else environ
  names = {k: (labels or {}).get(k, k) for k in
           ('coordinator_address', 'num_processes', 'process_id', 'local_device_ids', 'mode')}
  if mode not in MODES:
    raise JoinError(f'{names["mode"]}: must be one of {MODES}, got {mode!r}')
  values, where = {}, {}
  for key, given, env, fallback in (
      ('coordinator_address', coordinator_address, ENV_COORDINATOR, 'JAX_COORDINATOR_ADDRESS'),
      ('num_processes', num_processes, ENV_NUM_PROCESSES, None),
      ('process_id', process_id, ENV_PROCESS_ID, None)):
    values[key], where[key] = ((given, names[key]) if given is not None
                               else _from_environ(environ, env, fallback))
  found = launcher(environ)
  count = values['num_processes'] if values['num_processes'] is not None else (
      found[1] if found else None)
  if mode == 'never' or count == 1 or (mode == 'auto' and not (
      values['coordinator_address'] or (count or 0) > 1)):
    return None
  _check_plan(values, where, names, found, mode)
  where['local_device_ids'] = names['local_device_ids']
  return Plan(values['coordinator_address'], values['num_processes'], values['process_id'],
              tuple(local_device_ids) if local_device_ids else None, where,
              found[0] if found else None)


def _check_plan(values: dict, where: dict, names: dict, found, mode: str) -> None:
  """Raises ``JoinError`` for a missing or out-of-range value that no launcher fills in."""
  if values['coordinator_address'] is not None:
    try:
      split_address(values['coordinator_address'], where['coordinator_address'])
    except ValueError as e:
      raise JoinError(str(e)) from None
  n, i = values['num_processes'], values['process_id']
  if n is not None and n < 1:
    raise JoinError(f'{where["num_processes"]}: must be >= 1, got {n}')
  if i is not None and not (0 <= i and (n is None or i < n)):
    raise JoinError(f'{where["process_id"]}: must be in [0, {n if n else "num_processes"}), '
                    f'got {i}')
  if found is None and mode == 'auto':
    env = {'coordinator_address': ENV_COORDINATOR, 'num_processes': ENV_NUM_PROCESSES,
           'process_id': ENV_PROCESS_ID}
    for key in ('coordinator_address', 'num_processes', 'process_id'):
      if values[key] is None:
        raise JoinError(
            f'{names[key]} (or {env[key]}): must be set to run several processes (no cluster '
            'launcher such as SLURM or Open MPI sets it here): give every process the same '
            'coordinator_address and num_processes and its own process_id')


def _set_cpu_collectives() -> None:
  """Cross-process collectives on CPU need an implementation (gloo) chosen before the backend
  starts: the default of newer jax, unset in older ones.  An explicit choice (mpi) is kept."""
  try:
    if jax.config.jax_cpu_collectives_implementation is None:
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except AttributeError:        # a jax without the option: nothing to choose
    pass


def _wait_for_port(address: str, field: str, timeout_field: str, deadline: float) -> None:
  """Waits until ``address`` accepts TCP connections; ``JoinError`` at ``deadline``."""
  host, port = split_address(address, field)
  reason = 'no attempt'
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 1.0), 0.05)):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
    if time.monotonic() + 0.2 >= deadline:
      raise JoinError(
          f'could not reach the coordinator (process 0) at {address} ({field}) within '
          f'{timeout_field}: {reason}. Is process 0 running, is the address right and '
          'reachable from this host (not 127.0.0.1 across hosts), is the port open?')
    time.sleep(0.2)


def _watchdog(message: str, seconds: float) -> threading.Event:
  """Prints ``mtl_jax: <message>`` and ends the process unless the event returned is set
  within ``seconds`` (jax.distributed's failed join aborts the process without a Python
  exception: nothing could catch it)."""
  done = threading.Event()

  def watch():
    if not done.wait(max(seconds, 0.0)):
      sys.stdout.flush()
      sys.stderr.write(f'mtl_jax: {message}\n')
      sys.stderr.flush()
      os._exit(_WATCHDOG_EXIT_STATUS)   # pylint: disable=protected-access

  threading.Thread(target=watch, name='mtl_jax-join-watchdog', daemon=True).start()
  return done


def _join(p: Plan, timeout_s: float, timeout_field: str) -> None:
  """``jax.distributed.initialize`` for plan ``p``, within ``timeout_s`` (module docstring)."""
  deadline = time.monotonic() + timeout_s
  timeout_label = f'{timeout_field}={timeout_s:g} s'
  address, field = p.coordinator_address, p.labels.get('coordinator_address')
  if address and p.process_id not in (None, 0):
    _wait_for_port(address, field, timeout_label, deadline)
  who = (f'process {p.process_id} of {p.num_processes}' if p.process_id is not None
         else 'this process')
  where = f'at {address} ({field})' if address else f'(coordinator from {p.launcher or "jax"})'
  done = _watchdog(
      f'{who} could not join the others {where} within {timeout_label}: not every process '
      f'registered. Start all {p.num_processes or "the"} processes with the same '
      'coordinator_address and num_processes and distinct process_ids, or raise the timeout.',
      deadline - time.monotonic())
  try:
    jax.distributed.initialize(
        coordinator_address=address, num_processes=p.num_processes, process_id=p.process_id,
        local_device_ids=list(p.local_device_ids) if p.local_device_ids else None,
        initialization_timeout=int(max(deadline - time.monotonic(), 1)) + _JAX_GRACE_S)
  except RuntimeError as e:
    if 'must be called before' in str(e):
      raise JoinError(
          'jax.distributed must be initialised before anything starts JAX\'s backend, and '
          'something already did (jax.devices(), an array, a jitted call): call '
          'mtl_jax.parallel.initialize (or train_and_evaluate with config.distributed) first'
      ) from None
    raise
  except ValueError as e:       # what jax could not detect from the environment
    raise JoinError(f'jax.distributed.initialize: {e} (set {field or "coordinator_address"} '
                    'and the other config.distributed fields)') from None
  finally:
    done.set()


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               local_device_ids: Optional[Sequence[int]] = None, timeout_s: float = 300.0,
               mode: str = 'auto', *, labels: Optional[Mapping[str, str]] = None) -> bool:
  """Joins this process to the others of a multi-process run (``jax.distributed``), if there
  are others; returns whether it is part of one.

  Call it first, before any other JAX call.  Unset arguments come from ``MTL_JAX_COORDINATOR``
  / ``MTL_JAX_NUM_PROCESSES`` / ``MTL_JAX_PROCESS_ID``, then from a cluster launcher's
  variables (``plan``).  A single process (nothing set, or ``num_processes=1``) is a no-op,
  and so is a process that has already joined.  On CPU the collectives between processes are
  gloo's.

  Args:
    coordinator_address: ``'host:port'`` of process 0 (which serves there), the same for all.
    num_processes: how many processes take part.
    process_id: this process's index in ``[0, num_processes)``.
    local_device_ids: the local devices this process uses (None: jax's default).
    timeout_s: how long to wait for the coordinator and the other processes (> 0).
    mode: 'auto', 'always' or 'never' (``plan``).
    labels: the name of each argument in messages (e.g. ``config.distributed.process_id``).

  Raises:
    JoinError: a value is missing or bad, the coordinator cannot be reached within
      ``timeout_s``, or JAX's backend already started.  (Other processes failing to join in
      time end this one with a one-line message and status 2: see the module docstring.)
  """
  if jax.distributed.is_initialized():
    return True
  p = plan(coordinator_address, num_processes, process_id, local_device_ids, mode,
           labels=labels)
  if p is None:
    return False
  timeout_field = (labels or {}).get('timeout_s', 'timeout_s')
  if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
    raise JoinError(f'{timeout_field}: must be > 0 seconds, got {timeout_s!r}')
  _set_cpu_collectives()
  _join(p, float(timeout_s), timeout_field)
  return True


def initialize_from_config(config) -> bool:
  """``initialize`` with ``config.distributed`` (its unset values: -1, 0, '' or ()), errors
  naming its fields; returns whether this process is part of a multi-process run."""
  from mtl_jax._src import config_validation  # pylint: disable=import-outside-toplevel
  config_validation.check_distributed(config)
  d = config.distributed
  labels = {k: f'config.distributed.{k}' for k in (
      'coordinator_address', 'num_processes', 'process_id', 'local_device_ids', 'timeout_s')}
  labels['mode'] = 'config.distributed.initialize'
  return initialize(d.coordinator_address or None, d.num_processes or None,
                    d.process_id if d.process_id >= 0 else None,
                    tuple(d.local_device_ids) or None, d.timeout_s, d.initialize,
                    labels=labels)


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs, metrics and results."""
  return jax.process_index() == 0


def config_fields(config, workdir: str) -> dict[str, str]:
  """``{field: JSON value}`` of ``config`` and ``workdir``, without ``PER_PROCESS_FIELDS``."""
  from mtl_jax._src import config_validation  # pylint: disable=import-outside-toplevel
  flat = config_validation.flat_json(config)
  fields = {k: json.dumps(v, sort_keys=True) for k, v in flat.items()
            if k not in PER_PROCESS_FIELDS}
  fields['workdir'] = json.dumps(os.path.abspath(str(workdir)))
  return fields


def describe_differences(configs: Sequence[Mapping[str, str]]) -> Optional[str]:
  """The ``ConfigError`` message for processes whose ``config_fields`` differ (one entry per
  process, in process order), naming each differing field and its values; None if none."""
  keys = sorted(set().union(*configs))
  missing = json.dumps('<missing>')
  differing = [k for k in keys if len({c.get(k, missing) for c in configs}) > 1]
  if not differing:
    return None
  parts = []
  for key in differing[:_SHOWN_DIFFERENCES]:
    groups = {}
    for i, c in enumerate(configs):
      groups.setdefault(c.get(key, missing), []).append(i)
    parts.append(f'{key}: ' + ', '.join(
        f'{json.loads(v)!r} on process{"es" if len(ids) > 1 else ""} '
        f'{",".join(map(str, ids))}' for v, ids in groups.items()))
  more = len(differing) - _SHOWN_DIFFERENCES
  return (f'the {len(configs)} processes were started with different configs: '
          + '; '.join(parts) + (f'; and {more} more field(s)' if more > 0 else '') +
          '. Start every process with the same --config, flags and --workdir (only '
          'config.distributed.process_id and local_device_ids may differ).')


def _gather_bytes(payload: bytes) -> list[bytes]:
  """Every process's ``payload``, in process order (a collective: all processes call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(payload)))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:len(payload)] = np.frombuffer(payload, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [row[:n].tobytes() for row, n in zip(rows, lengths)]


def check_same_config(config, workdir: str) -> None:
  """Raises ``ConfigError`` on every process, naming the differing fields, unless all
  processes run the same config (``config_fields``) in the same workdir.  A collective:
  every process calls it; one process alone returns at once.  Exchanges a 32-byte hash, and
  the whole configs only when the hashes differ."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  fields = config_fields(config, workdir)
  payload = json.dumps(fields, sort_keys=True).encode()
  digest = np.frombuffer(hashlib.sha256(payload).digest(), np.uint32)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if (digests == digests[0]).all():
    return
  configs = [json.loads(b) for b in _gather_bytes(payload)]
  raise ConfigError(describe_differences(configs) or
                    'the processes were started with different configs')
