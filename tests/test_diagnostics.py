"""Gradient diagnostics: the formulas against NumPy, the engine's Gram matrix against jax.jacrev
on every path, the writer's expansion and window means, and a run's metrics.jsonl."""

import functools
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import weighting
from mtl_jax._src.monitor import Progress
from mtl_jax._src.writers import MetricWriter
from mtl_jax.train import ConfigError
from mtl_jax.weighting import LossFns, Options, gradient_diagnostics, task_gradients
from tests.conftest import tiny_config, train_tiny
from tests.test_engine import _problem as engine_problem


def _numpy_diagnostics(jac):
  """Norms, cosines (NaN with a zero gradient) and the count of pairs with cos < 0."""
  t = jac.shape[0]
  norms = np.linalg.norm(jac, axis=1)
  cos = np.full((t, t), np.nan)
  conflicts = 0
  for i in range(t):
    for j in range(t):
      if norms[i] > 0 and norms[j] > 0:
        cos[i, j] = jac[i] @ jac[j] / (norms[i] * norms[j])
        conflicts += int(i < j and cos[i, j] < 0)
  return norms, cos, conflicts


def test_gradient_diagnostics_match_numpy():
  rng = np.random.default_rng(0)
  jac = rng.normal(size=(5, 40))
  jac[3] = 0.0                                  # a task without labels in the batch
  jac[4] = -jac[0] + 0.1 * rng.normal(size=40)  # a strong conflict with task 0
  out = jax.jit(gradient_diagnostics)(jnp.asarray(jac @ jac.T, jnp.float32))
  norms, cos, conflicts = _numpy_diagnostics(jac)
  np.testing.assert_allclose(out['grad_norms'], norms, rtol=1e-5)
  np.testing.assert_allclose(out['grad_cos'], cos, atol=1e-5)
  assert np.isnan(out['grad_cos'][3]).all() and out['grad_cos'][0, 4] < -0.9
  assert float(out['conflicts']) == conflicts > 0


def test_unmeasured_tasks_stay_nan_and_are_never_conflicts():
  g = np.full((3, 3), np.nan, np.float32)
  g[:2, :2] = [[1.0, -0.5], [-0.5, 1.0]]
  out = gradient_diagnostics(g)
  assert np.isnan(out['grad_norms'][2]) and np.isnan(out['grad_cos'][:, 2]).all()
  assert float(out['conflicts']) == 1.0
  assert np.isnan(gradient_diagnostics(np.full((2, 2), np.nan))['conflicts'])
  with pytest.raises(ValueError, match=r'\[T, T\]'):
    gradient_diagnostics(np.ones(3))


@functools.lru_cache(maxsize=1)
def _problem():
  """test_engine's three-task model: ``(params, losses, trunk, heads)``."""
  params, losses_fn, trunk, head_fn = engine_problem()
  return (params, lambda p: losses_fn(p)[0], trunk,
          lambda z, task: head_fn(z, task, stacked=True))


def _reference_gram(losses, params):
  """G of the shared parameters' per-task gradients, from jax.jacrev."""
  jac = jax.jit(jax.jacrev(lambda s: losses({'shared': s, 'task': params['task']})))(
      params['shared'])
  rows = np.concatenate([np.reshape(l, (3, -1)) for l in jax.tree_util.tree_leaves(jac)], 1)
  return rows @ rows.T


@pytest.mark.parametrize('method,stacked,every,step,measured', [
    ('imtl_g', False, 0, 0, True),     # gradient method, rows through the whole network
    ('imtl_g', True, 0, 3, True),      # gradient method, one head pass then the trunk
    ('ew', True, 1, 0, True),        # loss-only, diagnostics every step
    ('ew', False, 2, 4, True),       # loss-only, a step that is a multiple of N
    ('ew', False, 2, 3, False),      # ... and one that is not: NaN
    ('ew', False, 0, 0, None),       # loss-only without the option: no Gram matrix
])
def test_engine_gram_equals_jacrev(method, stacked, every, step, measured):
  params, losses, trunk, heads = _problem()
  full = lambda p: (losses(p), {}, {})
  fns = LossFns(full, trunk, heads, lambda a, b: {}, 3) if stacked else LossFns(full)
  m = weighting.get(method)
  out = jax.jit(lambda p: task_gradients(m, p, m.init(3), jax.random.PRNGKey(0),
                                         jnp.int32(step), fns, Options(diagnostics_every=every))
                )(params)
  if measured is None:
    assert out.gram is None
  elif not measured:
    assert np.isnan(out.gram).all()
  else:
    np.testing.assert_allclose(out.gram, _reference_gram(losses, params), rtol=2e-4, atol=1e-6)


def test_rep_mode_gram_is_of_the_representation_gradients():
  params, losses, trunk, heads = _problem()
  fns = LossFns(lambda p: (losses(p), {}, {}), trunk, heads, lambda a, b: {}, 3)
  m = weighting.get('imtl_g')
  out = jax.jit(lambda p: task_gradients(m, p, m.init(3), None, 0, fns, Options(mode='rep')))(
      params)
  z = trunk(params['shared'])[0]
  copies = lambda z: jnp.broadcast_to(z, (3,) + z.shape)
  jz = jax.jit(jax.jacrev(lambda z: heads(copies(z), params['task'])[0]))(z).reshape(3, -1)
  np.testing.assert_allclose(out.gram, jz @ jz.T, rtol=2e-4, atol=1e-6)


def test_sampled_tasks_fill_their_block_and_the_others_are_nan():
  params, losses, _, _ = _problem()
  m = weighting.get('imtl_g')
  subset = jnp.array([0, 2])
  fns = LossFns(lambda p: (losses(p), {}, {}))
  out = jax.jit(lambda p: task_gradients(m, p, m.init(2), None, 0, fns, subset=subset))(params)
  reference = _reference_gram(losses, params)
  np.testing.assert_allclose(out.gram[np.ix_([0, 2], [0, 2])], reference[np.ix_([0, 2], [0, 2])],
                             rtol=2e-4, atol=1e-6)
  assert np.isnan(out.gram[1]).all() and np.isnan(out.gram[:, 1]).all()


def test_writer_expands_and_averages_the_cosines_over_a_flush(tmp_path):
  writer = MetricWriter(str(tmp_path), ('a', 'b', 'c'))
  nan = np.nan
  base = {'losses': np.ones(3), 'weights': np.ones(3), 'loss': 3.0, 'rejected': 0,
          'grad_norm': 1.0}
  cos1 = np.array([[1, -0.2, 0.5], [-0.2, 1, nan], [0.5, nan, 1]])
  cos2 = np.array([[1, 0.4, 0.1], [0.4, 1, 0.3], [0.1, 0.3, 1]])
  steps = [(1, cos1, [1.0, 2.0, 3.0], 1.0), (2, np.full((3, 3), nan), [nan] * 3, nan),
           (3, cos2, [4.0, nan, 6.0], 0.0)]
  for step, cos, norms, conflicts in steps:
    writer.add(step, dict(base, grad_cos=cos, grad_norms=np.array(norms),
                          conflicts=np.float32(conflicts)))
  writer.flush()
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines[0]['grad_norm/c'] == 3.0 and lines[0]['conflicts'] == 1.0
  assert not any(k.startswith(('grad_norm/', 'conflicts')) for k in lines[1])
  assert 'grad_norm/b' not in lines[2] and lines[2]['grad_norm/a'] == 4.0
  assert not any(k.startswith('grad_cos') for k in lines[0] | lines[1])
  assert lines[2]['grad_cos/a/b'] == pytest.approx(0.1)     # (-0.2 + 0.4) / 2
  assert lines[2]['grad_cos/a/c'] == pytest.approx(0.3)     # (0.5 + 0.1) / 2
  assert lines[2]['grad_cos/b/c'] == pytest.approx(0.3)     # measured once
  assert 'grad_cos/b/a' not in lines[2]


def test_a_run_logs_diagnostics_every_n_steps_and_validation(tmp_path):
  results = train_tiny(tmp_path, **{'train.steps': 20, 'train.diagnostics_every': 3,
                                    'eval.every': 10})
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  measured = [l['step'] for l in lines if 'grad_norm/y1' in l]
  assert measured == [1, 4, 7, 10, 13, 16, 19]     # updates 0, 3, 6, ... (step = update + 1)
  assert [l['step'] for l in lines if 'grad_cos/y1/y2' in l] == [10, 20]
  assert all(-1 <= l['grad_cos/y1/y2'] <= 1 for l in lines if 'grad_cos/y1/y2' in l)
  assert [l['step'] for l in lines if 'val/y1/mse' in l] == [10, 20]
  # The last step's validation line is the final model's: what results.json reports.
  for task in ('y1', 'y2'):
    for metric, value in results['split_metrics']['val'][task].items():
      if metric != 'count':
        assert lines[-1][f'val/{task}/{metric}'] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize('field,value', [('train.diagnostics_every', -1),
                                         ('eval.every', -5)])
def test_bad_diagnostics_options_name_the_field(tmp_path, field, value):
  from mtl_jax import train
  with pytest.raises(ConfigError, match=f'config.{field}: must be an integer >= 0'):
    train.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))


def test_progress_bar_shows_each_tasks_loss():
  progress = Progress(10, 0, ('left', 'right'), out=io.StringIO(), terminal=True)
  progress.update([(5, {'loss': 3.0, 'loss/left': 1.25, 'loss/right': 1.75, 'rejected': 0})])
  assert 'left=1.25' in progress.bar.postfix and 'right=1.75' in progress.bar.postfix
  progress.close()
