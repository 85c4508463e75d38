"""Shared test helpers: tiny configs and subprocess runners."""

import os
import subprocess
import sys

from mtl_jax.configs import tiny as tiny_module

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


def run_python(args, env=None, timeout=300, **kwargs):
  """Runs ``python args`` from the repository root; returns the CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout, **kwargs)
