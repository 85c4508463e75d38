"""Every weighting method trains the synthetic experiment end to end; no host callbacks."""

import json

import jax
import numpy as np
import optax
import pytest

from mtl_jax import models, train, weighting
from mtl_jax.data import make_synthetic, take
from mtl_jax._src.step import init_train_state, make_train_step
from tests.conftest import run_python, tiny_config

SHORT = {'train.steps': 6, 'train.log_every': 3, 'train.checkpoint_every': 6,
         'data.num_tasks': 3, 'data.sizes': (192, 64, 64)}


@pytest.mark.parametrize('name', weighting.names())
def test_every_method_trains_end_to_end(name, tmp_path):
  results = train.train_and_evaluate(tiny_config(**SHORT, **{'weighting.name': name}),
                                     str(tmp_path))
  assert results['weighting'] == name and results['steps'] == 6
  assert results['rejected_steps'] == 0 and results['train_step_traces'] == 1
  for task_metrics in results['metrics'].values():
    assert np.isfinite(task_metrics['mse'])
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert all(np.isfinite(l['weight/y2']) and np.isfinite(l['loss']) for l in lines)


@pytest.mark.parametrize('name,mode,head_grads', [('mgda', 'rep', 'default'),
                                                  ('upgrad', 'rep', 'weighted'),
                                                  ('pcgrad', 'param', 'weighted')])
def test_engine_options_from_the_config(name, mode, head_grads, tmp_path):
  config = tiny_config(**SHORT, **{'weighting.name': name, 'weighting.mode': mode,
                                   'weighting.head_grads': head_grads,
                                   'weighting.chunk_size': 2})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['rejected_steps'] == 0


def test_cli_selects_a_method_and_its_hyperparameters(tmp_path):
  proc = run_python(['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py',
                     f'--workdir={tmp_path}', '--config.train.steps=4',
                     '--config.weighting.name=cagrad', '--config.weighting.cagrad.c=0.5'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / 'results.json'))['weighting'] == 'cagrad'
  config = json.load(open(tmp_path / 'config.json'))
  assert config['weighting']['cagrad']['c'] == 0.5


def _primitives(jaxpr, seen=None):
  """Every primitive name in a jaxpr, sub-jaxprs (scan, while, cond, pjit) included."""
  seen = set() if seen is None else seen
  for eqn in jaxpr.eqns:
    seen.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          _primitives(inner, seen)
  return seen


def test_no_host_callback_in_any_train_step():
  ds = make_synthetic(3, 0.5, input_dim=8, sizes=(64, 4, 4))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(8,)))
  batch = take(ds.split('train'), np.arange(16))
  optimizer = optax.adam(1e-3)
  for name in weighting.names():
    hparams = {'static': {'weights': [1.0, 1.0, 1.0]}, 'dwa': {'steps_per_epoch': 4}}
    method = weighting.get(name, **hparams.get(name, {}))
    state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                             jax.random.PRNGKey(0))
    for mode in ('param', 'rep'):
      step = make_train_step(model, ds.tasks, optimizer, method, mode=mode, jit=False)
      names = _primitives(jax.make_jaxpr(step)(state, batch).jaxpr)
      callbacks = sorted(n for n in names if 'callback' in n or n in ('outfeed', 'infeed'))
      assert not callbacks, (name, mode, callbacks)
      assert 'while' in names or 'dot_general' in names  # the scan saw the real program
