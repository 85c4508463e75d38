"""Shared test helpers: tiny configs and subprocess runners."""

import os
import subprocess
import sys
import tempfile
import uuid

# One persistent XLA compilation cache for the whole test session (the xdist workers and the
# subprocesses the tests start): many tests compile the same tiny programs.  Set before JAX
# compiles anything; a fresh directory per session, so nothing carries over between runs.
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or os.environ.setdefault(
    'MTL_JAX_TEST_RUN', uuid.uuid4().hex)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'mtl_jax_test_cache_{_RUN}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# The tests' programs are tiny: compiling them fast matters more than running them fast.  On
# XLA:CPU, LLVM at level 0 took about a third off the suite's time; the classic fusion
# emitters, the default scheduler and no XNNPACK take about another 30-40% off each compile
# (test_gramian.py alone: 133 s -> 79 s).  No test compares results across these settings:
# each changes a program's float rounding at most, and every run of a test (its subprocesses
# included: they inherit the environment) uses the same flags.  Flags an XLA does not know
# abort the process, so they are tried once in a subprocess first and kept only if accepted.
_FAST_XLA = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False,
             'xla_cpu_enable_concurrency_optimized_scheduler': False,
             'xla_cpu_use_xnnpack': False}
_FAST_XLA_FLAGS = tuple(f'--{name}={str(value).lower()}' for name, value in _FAST_XLA.items())


def _xla_accepts(flags):
  probe = 'import jax.numpy as jnp; jnp.add(jnp.zeros(2), 1).block_until_ready()'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True,
                        timeout=120, check=False).returncode == 0


if 'MTL_JAX_TEST_XLA_FLAGS' not in os.environ:     # once per session: workers inherit it
  _given = os.environ.get('XLA_FLAGS', '')
  _extra = [f for f in _FAST_XLA_FLAGS if f.split('=')[0] not in _given]
  if _extra and not _xla_accepts(' '.join([_given, *_extra])):
    _extra = [f for f in _extra if _xla_accepts(f'{_given} {f}')]
  os.environ['XLA_FLAGS'] = ' '.join([_given, *_extra]).strip()
  os.environ['MTL_JAX_TEST_XLA_FLAGS'] = os.environ['XLA_FLAGS']

from mtl_jax.configs import tiny as tiny_module  # pylint: disable=wrong-import-position


def xla_default_codegen():
  """``compile()`` options that switch back on what this session's XLA_FLAGS switched off
  above (emitters, scheduler, XNNPACK), for a test that reads XLA's default program."""
  flags = os.environ.get('XLA_FLAGS', '')
  return {name: True for name, value in _FAST_XLA.items()
          if value is False and f'--{name}=false' in flags}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """The 'tiny' config (trains in seconds) with dotted-key overrides, locked."""
  c = tiny_module.get_config()
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split('.')
    for part in path:
      node = node[part]
    node[leaf] = value
  c.lock()
  return c


def train_tiny(workdir, **overrides):
  """``train_and_evaluate`` on ``tiny_config(**overrides)`` (10 steps unless overridden);
  checks that every step was taken and kept and that every test metric is finite."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mtl_jax import train  # pylint: disable=import-outside-toplevel
  config = tiny_config(**{'train.steps': 10, **overrides})
  results = train.train_and_evaluate(config, str(workdir))
  assert results['steps'] == config.train.steps and results['rejected_steps'] == 0
  values = [v for m in results['metrics'].values() for v in m.values()]
  assert values and np.all(np.isfinite(values))
  return results


def run_python(args, env=None, timeout=300, **kwargs):
  """Runs ``python args`` from the repository root; returns the CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


def start_python(args, env=None, **kwargs):
  """Starts ``python args`` from the repository root (as ``run_python``, without waiting);
  returns the Popen, its output captured as text."""
  full_env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (now)."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
