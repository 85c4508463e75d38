"""The command line's error reporting: one or two lines naming the flag or field, an exit code.

``mtl_jax.main`` exits 2 on a usage or configuration error and 1 when a run stops
(``STOPPED``); the traceback is kept for ``--debug`` / ``--verbosity=1``.
"""

import difflib
import os
import re
import sys
from typing import NoReturn, Sequence

from mtl_jax._src import checkpointing
from mtl_jax._src.monitor import TrainingStopped
from mtl_jax._src.writers import NonFiniteLossError

# Errors that end a run that was set up correctly: exit status 1, message only.
STOPPED = (TrainingStopped, NonFiniteLossError, checkpointing.CheckpointError)

DEBUG_HINT = '(--debug shows the traceback)'


class UsageError(ValueError):
  """A bad flag, config file or workdir."""


def _chain(error: BaseException) -> list:
  """``error`` and the exceptions it was raised from or while handling, outermost first."""
  chain = []
  while error is not None:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def fail(message: str, status: int, hint: str = DEBUG_HINT) -> NoReturn:
  """Prints ``mtl_jax: <message>`` (and ``hint``) to stderr and exits with ``status``."""
  sys.stderr.write(f'mtl_jax: {message}\n' + (f'{hint}\n' if hint else ''))
  sys.stderr.flush()
  sys.exit(status)


def debug_requested(argv: Sequence[str]) -> bool:
  """Whether the raw command line asks for tracebacks (``--debug``, ``--verbosity>=1``)."""
  for arg in argv[1:]:
    if arg in ('--debug', '--debug=true', '--debug=True', '--debug=1'):
      return True
    match = re.fullmatch(r'--(?:verbosity|v)=(-?\d+)', arg)
    if match and int(match.group(1)) >= 1:
      return True
  return False


def _config_path(argv) -> str:
  """The last ``--config=`` value of ``argv`` (absl keeps the last)."""
  paths = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  return paths[-1] if paths else ''


def _unknown_key_message(key: str, argv) -> str:
  """``config.a.b: unknown config key; did you mean config.a.c?`` for the override that
  names ``key``."""
  from mtl_jax.configs import default  # pylint: disable=import-outside-toplevel
  field = next((a[2:].split('=', 1)[0] for a in argv[1:]
                if a.startswith('--config.') and key in a[2:].split('=', 1)[0].split('.')),
               f'config.?.{key}')
  parent = field.rsplit('.', 1)[0]
  node = default.get_config()
  try:
    for part in parent.split('.')[1:]:
      node = node[part]
    known = sorted(node.keys())
  except (KeyError, AttributeError, TypeError):
    known = []
  close = difflib.get_close_matches(key, known, n=1)
  fix = (f'did you mean {parent}.{close[0]}?' if close
         else f'keys under {parent}: {", ".join(known)}' if known
         else f'{parent} is not a config section')
  return f'{field}: unknown config key; {fix}'


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line for an error raised while absl parsed the flags (and ml_collections loaded the
  config file and applied the ``--config.*`` overrides)."""
  chain = _chain(error)
  text = '\n'.join(str(e.args[0]) if e.args else str(e) for e in chain)
  if 'Failed loading config file' in text or 'Configuration is not available' in text:
    return config_file_message(_config_path(argv), text)
  for e in chain:
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
      key = e.args[0].split('\n', 1)[0].strip('\'"')
      if key:
        return _unknown_key_message(key, argv)
  message = str(error).split('\n', 1)[0]
  return message.removeprefix('flag ')


def config_file_message(path: str, text: str) -> str:
  """Why the config file ``path`` could not be loaded, and where the configs are."""
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'configs')
  listed = sorted(f[:-3] for f in os.listdir(configs) if f.endswith('.py') and f[0] != '_')
  if path and not os.path.exists(path):
    why = 'no such file'
  else:
    lines = [l.strip() for l in text.split('\n') if l.strip()]
    why = lines[-1] if lines else 'it could not be loaded'
  return (f'--config={path}: {why}; the built-in configs are mtl_jax/configs/'
          f'{{{",".join(listed)}}}.py')


def load_config(flag):
  """The config of the ``--config`` flag, or ``UsageError`` saying why it cannot be loaded."""
  try:
    config = flag.value
    config.get('name')              # an unloadable file only fails when read
  except Exception as e:  # pylint: disable=broad-except
    path = getattr(flag, '_config_filename', None) or _config_path(sys.argv)
    raise UsageError(config_file_message(path, '\n'.join(map(str, _chain(e))))) from e
  if not hasattr(config, 'train'):
    raise UsageError(f'--config: get_config() must return an mtl_jax ConfigDict (see '
                     f'mtl_jax/configs/default.py), got {type(config).__name__}')
  return config


def parse_flags(flag_values, argv, required: Sequence[str], example: str):
  """absl's flag parsing, with errors (an unknown config key, a bad value, a missing
  ``required`` flag, shown with ``example``) as two lines and exit status 2."""
  try:
    argv = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    if debug_requested(argv):
      raise
    fail(describe_flag_error(e, argv), status=2)
  for name in required:
    if flag_values[name].value is None and not flag_values[name].present:
      fail(f'--{name} is required, e.g. {example}', status=2)
  return argv


def join_processes(config) -> None:
  """Joins the run's other processes, if any (``config.distributed``; before anything starts
  JAX's backend).  On processes other than 0 stdout then goes nowhere: process 0 prints the
  run, and every process still prints its errors and warnings (stderr)."""
  from mtl_jax._src import distributed  # pylint: disable=import-outside-toplevel
  if distributed.initialize_from_config(config) and not distributed.is_primary():
    sys.stdout = open(os.devnull, 'w')  # pylint: disable=consider-using-with


def run_main(flag_values, argv, body) -> None:
  """``body()`` for a command's ``main``: surplus arguments, a usage or configuration error
  (exit 2) and a stopped run (exit 1) reported in one or two lines; tracebacks with
  ``--debug`` / ``--verbosity=1``."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  from mtl_jax._src.config_validation import ConfigError  # pylint: disable=import-outside-toplevel
  debug = flag_values.debug or flag_values['verbosity'].value >= 1
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}: flags are --name=value', status=2)
  if not flag_values['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    body()
  except (ConfigError, UsageError) as e:
    if debug:
      raise
    fail(str(e), status=2)
  except STOPPED as e:
    if debug:
      raise
    fail(f'{type(e).__name__}: {e}', status=1, hint='')
