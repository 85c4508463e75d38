"""Missing labels (per-sample masks) and task sampling, against gradients computed by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models, tasks as T, weighting
from mtl_jax import init_train_state, make_train_step
from mtl_jax.weighting import LossFns, Options, task_gradients

TASKS = T.TaskSet([T.regression('a'), T.regression('b'), T.multiclass('c', 3),
                   T.binary('d')])
NUM = len(TASKS)


def _model():
  return models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(12,)),
                    tower_hidden=(6,))


def _batch(size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(size, 5)).astype(np.float32),
          'labels': {'a': rng.normal(size=size).astype(np.float32),
                     'b': rng.normal(size=size).astype(np.float32),
                     'c': rng.integers(0, 3, size),
                     'd': rng.integers(0, 2, size).astype(np.float32)},
          'masks': {n: np.ones(size, bool) for n in TASKS.names}}


def _grads(model, params, batch, cotangent):
  """sum_t cotangent_t grad L_t by jax.grad of the explicit weighted sum."""
  @jax.jit
  def grads(params, batch, cotangent):
    f = lambda p: jnp.dot(cotangent, TASKS.losses(model.apply({'params': p}, batch['inputs']),
                                                  batch))
    return jax.grad(f)(params)
  return grads(params, batch, cotangent)


def test_half_missing_labels_give_the_labelled_half_gradient():
  """Task 'b' labelled on the first half only: its gradient equals the gradient of the same
  task on a batch holding just the labelled half; the NaN labels of the other half are
  ignored, and the other tasks still use the whole batch."""
  model, batch = _model(), _batch()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch['inputs'])['params']
  missing = dict(batch, labels=dict(batch['labels']), masks=dict(batch['masks']))
  missing['labels']['b'] = np.where(np.arange(16) < 8, batch['labels']['b'], np.nan)
  missing['masks']['b'] = np.arange(16) < 8
  half = {k: (jax.tree.map(lambda a: a[:8], v)) for k, v in batch.items()}
  e_b = jnp.eye(NUM)[TASKS.index('b')]
  chex.assert_trees_all_close(_grads(model, params, missing, e_b),
                              _grads(model, params, half, e_b), rtol=1e-5, atol=1e-7)
  e_a = jnp.eye(NUM)[TASKS.index('a')]
  chex.assert_trees_all_close(_grads(model, params, missing, e_a),
                              _grads(model, params, batch, e_a), rtol=1e-6, atol=1e-8)
  # Through the train step: finite update, and the logged loss of 'b' is the half's loss.
  optimizer = optax.sgd(0.1)
  state = init_train_state(model, TASKS, optimizer, weighting.get('ew'), batch['inputs'],
                           jax.random.PRNGKey(0))
  state = state.replace(params=params)
  new_state, metrics = make_train_step(model, TASKS, optimizer, weighting.get('ew'),
                                       donate=False)(state, missing)
  assert int(metrics['rejected']) == 0
  losses_half = jax.jit(lambda p, b: TASKS.losses(model.apply({'params': p}, b['inputs']), b))(
      params, half)
  np.testing.assert_allclose(metrics['losses'][1], losses_half[1], rtol=1e-5)
  # SGD on the other tasks' full-batch gradients plus 'b''s gradient on the labelled half
  # alone (no masks involved), so the step's masking is checked against batches without it.
  others = _grads(model, params, batch, jnp.ones(NUM) - e_b)
  b_half = _grads(model, params, half, e_b)
  expected = jax.tree.map(lambda p, g, h: p - 0.1 * (g + h), params, others, b_half)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


def _subset_run(method, subset, mode='param', stacked=True):
  model, batch = _model(), _batch()
  params = jax.jit(model.init)(jax.random.PRNGKey(1), batch['inputs'])['params']
  losses_fn = lambda p: (TASKS.losses(model.apply({'params': p}, batch['inputs']), batch), {})
  rep_fn = lambda shared: (model.apply({'params': {'shared': shared, 'task': params['task']}},
                                       batch['inputs'], method='representation'), {})

  def head_fn(z, task, stacked=False):
    preds = model.apply({'params': {'shared': params['shared'], 'task': task}}, z,
                        stacked=stacked, method='heads')
    return TASKS.losses(preds, batch), {}

  full = lambda p: (losses_fn(p)[0], {}, {})
  fns = (LossFns(full, rep_fn, lambda z, t: head_fn(z, t, stacked=True),
                        lambda a, b: {}, NUM) if stacked else LossFns(full))
  out = jax.jit(lambda p, s: task_gradients(
      method, p, method.init(NUM), jax.random.PRNGKey(0), jnp.int32(0), fns,
      Options(mode=mode), subset=s))(params, jnp.asarray(subset))
  jac = jax.jit(jax.jacrev(lambda p: losses_fn(p)[0]))(params)
  return out, jac


@pytest.mark.parametrize('stacked', [True, False])
def test_sampled_tasks_alone_drive_a_loss_method(stacked):
  out, jac = _subset_run(weighting.get('ew'), [0, 2], stacked=stacked)
  w = jnp.array([1.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(out.weights, w)
  expected = jax.tree.map(lambda j: jnp.tensordot(w, j, axes=1), jac)
  chex.assert_trees_all_close(out.grads, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('stacked', [True, False])
def test_mgda_on_sampled_tasks_is_the_min_norm_point_of_their_gradients(stacked):
  """MGDA with tasks (1, 3) sampled: the shared direction is the min-norm point of the
  convex hull of those two gradients (closed form for two vectors), the others get 0."""
  out, jac = _subset_run(weighting.get('mgda', match_sum=False), [1, 3], stacked=stacked)
  flat = jnp.concatenate([j.reshape(NUM, -1) for j in jax.tree.leaves(jac['shared'])], axis=1)
  g1, g3 = flat[1], flat[3]
  gamma = jnp.clip(jnp.dot(g3 - g1, g3) / jnp.sum((g1 - g3) ** 2), 0.0, 1.0)
  np.testing.assert_allclose(out.weights, [0.0, gamma, 0.0, 1 - gamma], atol=2e-4)
  got = jnp.concatenate([g.reshape(-1) for g in jax.tree.leaves(out.grads['shared'])])
  np.testing.assert_allclose(got, gamma * g1 + (1 - gamma) * g3, rtol=2e-3, atol=1e-5)
  # Task-specific params: the sampled tasks' own (unweighted) gradients only.
  head = jax.tree.map(lambda j: j[1] + j[3], jac['task'])
  chex.assert_trees_all_close(out.grads['task'], head, rtol=1e-5, atol=1e-7)


def test_task_sampling_draws_k_tasks_uniformly_without_recompiling():
  model, batch = _model(), _batch()
  optimizer, method = optax.sgd(0.01), weighting.get('upgrad')
  state = init_train_state(model, TASKS, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  raw = make_train_step(model, TASKS, optimizer, method, task_sampling=2, jit=False)
  step = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=0)
  counts = np.zeros(NUM)
  for _ in range(200):
    state, metrics = step(state, batch)
    active = np.asarray(metrics['weights']) != 0
    assert active.sum() == 2 and int(metrics['rejected']) == 0
    counts += active
  # Each task is drawn with probability k / T = 1/2: 100 +- 3 standard deviations (7.1).
  assert np.all(np.abs(counts - 100) < 22), counts


def test_task_sampling_refuses_stateful_methods_and_bad_sizes():
  model, method = _model(), weighting.get('uw')
  with pytest.raises(ValueError, match="task_sampling: weighting 'uw' keeps per-task state"):
    make_train_step(model, TASKS, optax.sgd(0.1), method, task_sampling=2)
  with pytest.raises(ValueError, match=r'task_sampling: must be an integer in \[0, 4\]'):
    make_train_step(model, TASKS, optax.sgd(0.1), weighting.get('ew'), task_sampling=5)
  with pytest.raises(ValueError, match="needs at least 2 tasks per step, got 1"):
    make_train_step(model, TASKS, optax.sgd(0.1), weighting.get('mgda'), task_sampling=1)


@pytest.mark.parametrize('name', ['con_fig', 'fairgrad', 'krum', 'trimmed_mean', 'cosmos',
                                  'pbi'])
def test_a_stateless_method_on_sampled_tasks_is_the_method_on_those_tasks_alone(name):
  """Tasks (0, 2, 3) sampled: the shared gradient is what the method gives on those three
  tasks' own gradients and losses (``combine`` on the rows), the weights of task 1 are 0."""
  method = weighting.get(name)
  assert method.init(NUM) == ()
  subset = [0, 2, 3]
  out, jac = _subset_run(method, subset)
  model, batch = _model(), _batch()
  params = jax.jit(model.init)(jax.random.PRNGKey(1), batch['inputs'])['params']
  losses = jax.jit(lambda p: TASKS.losses(model.apply({'params': p}, batch['inputs']),
                                          batch))(params)
  rows = jax.tree.map(lambda j: j[np.array(subset)], jac['shared'])
  expected = weighting.combine(method, rows, losses[np.array(subset)])
  assert bool(expected.finite)
  chex.assert_trees_all_close(out.grads['shared'], expected.direction, rtol=2e-4, atol=1e-6)
  if not method.direct:
    np.testing.assert_allclose(np.asarray(out.weights)[subset], expected.weights, rtol=2e-4,
                               atol=1e-6)
    assert float(out.weights[1]) == 0
