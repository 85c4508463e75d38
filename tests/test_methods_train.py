"""Every weighting method trains the synthetic experiment end to end; no host callbacks."""

import json

import chex
import jax
import numpy as np
import optax
import pytest

from mtl_jax import models, train, transfer, weighting
from mtl_jax.data import make_synthetic, take
from mtl_jax import init_train_state, make_train_step
from tests.conftest import run_python, tiny_config

SHORT = {'train.steps': 6, 'train.log_every': 3, 'train.checkpoint_every': 6,
         'data.synthetic.num_tasks': 3, 'data.synthetic.sizes': (192, 64, 64)}


@pytest.mark.parametrize('name', weighting.names())
def test_every_method_trains_end_to_end(name, tmp_path):
  method = weighting.get(name, **({'steps_per_epoch': 1} if name == 'dwa' else {}))
  k = method.sub_batches
  batch = {'train.batch_size': 32 + (-32 % k)}      # k sub-batches of equal size
  results = train.train_and_evaluate(tiny_config(**SHORT, **batch, **{'weighting.name': name}),
                                     str(tmp_path))
  assert results['weighting'] == name and results['steps'] == 6
  assert results['rejected_steps'] == 0 and results['train_step_traces'] == 1
  for task_metrics in results['metrics'].values():
    assert np.isfinite(task_metrics['mse'])
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert all(np.isfinite(l['loss']) for l in lines)
  # a direct method's weights are reported where they exist (NaN for a trimmed mean)
  assert method.direct or all(np.isfinite(l['weight/y2']) for l in lines)


def _params_after(tmp_path, tag, **overrides):
  """The params of a run of ``steps`` steps (SHORT otherwise) with ``overrides``."""
  workdir = str(tmp_path / tag)
  train.train_and_evaluate(tiny_config(**{**SHORT, **overrides}), workdir)
  return transfer.load_params(workdir)


def test_mode_and_chunk_size_from_the_config_reach_the_engine(tmp_path):
  """MGDA on the representation (MGDA-UB) moves the shared params differently from MGDA on
  the parameters; chunking the Jacobian changes nothing."""
  base = {'weighting.name': 'mgda', 'train.steps': 2}
  param = _params_after(tmp_path, 'param', **base)
  rep = _params_after(tmp_path, 'rep', **base, **{'weighting.mode': 'rep'})
  chunked = _params_after(tmp_path, 'chunked', **base, **{'weighting.mode': 'rep',
                                                          'weighting.chunk_size': 2})
  gap = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), param, rep)
  assert max(jax.tree.leaves(gap['shared'])) > 1e-5, gap
  chex.assert_trees_all_close(chunked, rep, rtol=1e-5, atol=1e-6)


def test_head_grads_from_the_config_change_only_the_task_params(tmp_path):
  """After one step, 'weighted' head gradients change the task-specific params only: the
  shared update does not depend on them.  (SGD: Adam's first update is about lr * sign(g),
  whatever the scale of g.)"""
  base = {'weighting.name': 'pcgrad', 'train.steps': 1, 'optim.name': 'sgd'}
  unweighted = _params_after(tmp_path, 'default', **base)
  weighted = _params_after(tmp_path, 'weighted', **base, **{'weighting.head_grads': 'weighted'})
  chex.assert_trees_all_close(weighted['shared'], unweighted['shared'], rtol=1e-6, atol=1e-7)
  gap = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), weighted['task'],
                     unweighted['task'])
  assert max(jax.tree.leaves(gap)) > 1e-6, gap


def test_cli_selects_a_method_and_its_hyperparameters(tmp_path):
  """Static weights set on the command line are the weights the steps use."""
  proc = run_python(['-m', 'mtl_jax.main', '--config=mtl_jax/configs/tiny.py',
                     f'--workdir={tmp_path}', '--config.train.steps=4',
                     '--config.weighting.name=static',
                     '--config.weighting.static.weights=(2.0, 0.25)'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / 'results.json'))['weighting'] == 'static'
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert len(lines) == 4
  for line in lines:
    assert (line['weight/y1'], line['weight/y2']) == (2.0, 0.25)
    np.testing.assert_allclose(line['loss'], 2.0 * line['loss/y1'] + 0.25 * line['loss/y2'],
                               rtol=1e-6)


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


# Methods whose solver is an iterative loop (a while loop in the step), at T = 3.
ITERATIVE = ('mgda', 'cagrad', 'nash_mtl', 'upgrad', 'dualproj')


def test_no_host_callback_in_any_train_step():
  ds = make_synthetic(3, 0.5, input_dim=8, sizes=(64, 4, 4))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(8,)))
  batch = take(ds.split('train'), np.arange(24))   # 2 or 3 sub-batches
  optimizer = optax.adam(1e-3)
  for name in weighting.names():
    hparams = {'static': {'weights': [1.0, 1.0, 1.0]}, 'dwa': {'steps_per_epoch': 4},
               'forum': {'steps_per_epoch': 4}}
    method = weighting.get(name, **hparams.get(name, {}))
    state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                             jax.random.PRNGKey(0))
    # 'rep' gives representation gradients: not for parameter-sized state or sub-batches
    rep = not (method.state_like_params or method.sub_batches > 1)
    for mode in ('param', 'rep') if rep else ('param',):
      step = make_train_step(model, ds.tasks, optimizer, method, mode=mode, jit=False)
      names = _primitives(jax.make_jaxpr(step)(state, batch).jaxpr)
      callbacks = sorted(n for n in names if 'callback' in n or n in ('outfeed', 'infeed'))
      assert not callbacks, (name, mode, callbacks)
      assert 'dot_general' in names, (name, mode)      # the scan saw the model
      if name in ITERATIVE:                            # ... and the method's solver
        assert 'while' in names, (name, mode)


def test_the_callback_scan_finds_a_host_callback():
  """The scan used above sees a callback nested inside jit and cond."""
  def step(x):
    inner = jax.jit(lambda y: jax.lax.cond(y.sum() > 0, lambda: jax.pure_callback(
        np.sin, jax.ShapeDtypeStruct(y.shape, y.dtype), y), lambda: y))
    return inner(x) * 2
  names = _primitives(jax.make_jaxpr(step)(np.ones(3, np.float32)).jaxpr)
  assert any('callback' in n for n in names), names
