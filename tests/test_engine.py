"""The per-task gradient engine against jax.jacrev, and its modes, against each other."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models, tasks as T, weighting
from mtl_jax import init_train_state, make_train_step
from mtl_jax.weighting import LossFns, Options, task_gradients
from mtl_jax.weighting import Needs, Weighting, WeightingResult

TASKS = T.TaskSet([T.regression('a'), T.regression('b'), T.multiclass('c', 3)])
ALPHA = jnp.array([0.3, 1.7, 0.6])


def fixed(needs, alpha=ALPHA, head_grads='unweighted'):
  """A method with constant coefficients, to test the engine alone."""
  return Weighting('fixed', needs, lambda n: (), lambda i, s, k: WeightingResult(alpha, s),
                   head_grads=head_grads)


def _problem(seed=0, batch=16):
  model = models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(12, 10)),
                     tower_hidden=(6,))
  rng = np.random.default_rng(seed)
  data = {'inputs': rng.normal(size=(batch, 5)).astype(np.float32),
          'labels': {'a': rng.normal(size=batch).astype(np.float32),
                     'b': rng.normal(size=batch).astype(np.float32),
                     'c': rng.integers(0, 3, batch)},
          'masks': {'b': rng.random(batch) < 0.5}}
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), data['inputs'])['params']

  def losses_fn(p):
    return TASKS.losses(model.apply({'params': p}, data['inputs']), data), {}

  def rep_fn(shared):
    z = model.apply({'params': {'shared': shared, 'task': params['task']}}, data['inputs'],
                    method='representation')
    return z, {}

  def head_fn(z, task, stacked=False):
    preds = model.apply({'params': {'shared': params['shared'], 'task': task}}, z,
                        stacked=stacked, method='heads')
    return TASKS.losses(preds, data), {}

  return params, losses_fn, rep_fn, head_fn


def _fns(losses_fn, rep_fn, head_fn, stacked=True):
  """The engine's LossFns of ``_problem``'s functions (trunk/heads only if ``stacked``)."""
  full = lambda p: (losses_fn(p)[0], {}, {})
  if not stacked:
    return LossFns(full)
  return LossFns(full, rep_fn, lambda z, t: head_fn(z, t, stacked=True),
                        lambda a, b: {}, 3)


def _run(method, mode='param', chunk_size=None, head_grads=None, seed=0, stacked=True):
  params, losses_fn, rep_fn, head_fn = _problem(seed)
  fns = _fns(losses_fn, rep_fn, head_fn, stacked)
  options = Options(mode=mode, chunk_size=chunk_size, head_grads=head_grads)
  fn = jax.jit(lambda p: task_gradients(
      method, p, method.init(3), jax.random.PRNGKey(0), jnp.int32(0), fns, options))
  return params, losses_fn, fn(params)


def test_jacobian_rows_equal_jacrev_and_chunking_changes_nothing():
  params, losses_fn, _, _ = _problem()
  f = lambda p: losses_fn(p)[0]
  reference = jax.jit(jax.jacrev(f))(params)
  losses, jac = jax.jit(lambda p: weighting.jacobian(f, p))(params)
  chunked = jax.jit(lambda p: weighting.jacobian(f, p, chunk_size=2)[1])(params)
  chex.assert_trees_all_close(jac, reference, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(chunked, reference, rtol=1e-5, atol=1e-7)
  flat = np.concatenate([np.reshape(x, (3, -1)) for x in jax.tree.leaves(reference)], axis=1)
  np.testing.assert_allclose(weighting.gram(jac), flat @ flat.T, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses, f(params), rtol=1e-6)


@pytest.mark.parametrize('needs', [Needs.GRAM, Needs.JACOBIAN])
@pytest.mark.parametrize('head_grads', ['unweighted', 'weighted'])
@pytest.mark.parametrize('stacked', [True, False])
def test_param_mode_combines_per_task_gradients(needs, head_grads, stacked):
  params, losses_fn, out = _run(fixed(needs), head_grads=head_grads, stacked=stacked)
  f = lambda p: losses_fn(p)[0]
  jac = jax.jit(jax.jacrev(f))(params)
  expected_shared = jax.tree.map(lambda j: jnp.tensordot(ALPHA, j, axes=1), jac['shared'])
  head_weights = ALPHA if head_grads == 'weighted' else jnp.ones(3)
  expected_task = jax.tree.map(lambda j: jnp.tensordot(head_weights, j, axes=1), jac['task'])
  chex.assert_trees_all_close(out.grads['shared'], expected_shared, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(out.grads['task'], expected_task, rtol=1e-5, atol=1e-6)


def test_rep_mode_gives_the_same_gradient_for_the_same_weights():
  _, _, param_out = _run(fixed(Needs.GRAM), stacked=False)
  _, _, rep_out = _run(fixed(Needs.GRAM), mode='rep', chunk_size=2)
  chex.assert_trees_all_close(rep_out.grads, param_out.grads, rtol=1e-5, atol=1e-6)
  _, _, chunked = _run(fixed(Needs.GRAM), chunk_size=2)
  chex.assert_trees_all_close(chunked.grads, param_out.grads, rtol=1e-5, atol=1e-6)


def test_rep_mode_gram_is_over_the_representation():
  seen = {}

  def update(inputs, state, key):
    return WeightingResult(jnp.ones(3), inputs.gram)

  method = Weighting('spy', Needs.GRAM, lambda n: jnp.zeros((3, 3)), update)
  params, losses_fn, rep_fn, head_fn = _problem()
  fns = _fns(losses_fn, rep_fn, head_fn)
  out = jax.jit(lambda p: task_gradients(
      method, p, jnp.zeros((3, 3)), jax.random.PRNGKey(0), 0, fns,
      Options(mode='rep')))(params)
  z = rep_fn(params['shared'])[0]
  jz = jax.jacrev(lambda z: head_fn(z, params['task'])[0])(z).reshape(3, -1)
  np.testing.assert_allclose(out.state, jz @ jz.T, rtol=1e-4, atol=1e-7)
  del seen


def test_loss_only_methods_cost_one_backward_pass():
  """The compiled EW step does the FLOPs of a hand-written single-loss step (no Jacobian)."""
  model = models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(64, 64)),
                     tower_hidden=(16,))
  method, tx = weighting.get('ew'), optax.adam(1e-3)
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(64, 5)).astype(np.float32),
           'labels': {'a': rng.normal(size=64).astype(np.float32),
                      'b': rng.normal(size=64).astype(np.float32), 'c': rng.integers(0, 3, 64)}}
  state = init_train_state(model, TASKS, tx, method, batch['inputs'], jax.random.PRNGKey(0))

  def hand_step(params, opt_state):
    loss = lambda p: TASKS.losses(model.apply({'params': p}, batch['inputs']), batch).sum()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def flops(fn, *args):
    return jax.jit(fn).lower(*args).compile().cost_analysis()['flops']

  ew = flops(make_train_step(model, TASKS, tx, method, jit=False), state, batch)
  hand = flops(hand_step, state.params, state.opt_state)
  imtl = weighting.get('imtl_g')
  imtl_state = init_train_state(model, TASKS, tx, imtl, batch['inputs'], jax.random.PRNGKey(0))
  gram = flops(make_train_step(model, TASKS, tx, imtl, jit=False), imtl_state, batch)
  assert ew <= 1.05 * hand, (ew, hand)
  assert gram > 1.5 * hand, (gram, hand)  # a method that reads G pays for the Jacobian


def test_optax_adapter_chains_in_front_of_an_optimizer():
  jac = {'w': jnp.array([[1.0, 0.0], [0.0, 2.0]])}
  tx = optax.chain(weighting.as_optax(weighting.get('static', weights=[2.0, 0.5]),
                                                    num_tasks=2), optax.sgd(1.0))
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  updates, state = jax.jit(lambda u, s: tx.update(u, s, params, losses=jnp.ones(2)))(jac, state)
  np.testing.assert_allclose(updates['w'], [-2.0, -1.0])
  np.testing.assert_allclose(state[0].weights, [2.0, 0.5])


def test_combine_accepts_arrays_and_pytrees_and_checks_the_task_axis():
  j = jnp.arange(12.0).reshape(3, 4)
  d, w, _, _ = weighting.combine(weighting.get('ew'), j, jnp.ones(3))
  np.testing.assert_allclose(d, j.sum(0))
  d = weighting.combine(weighting.get('ew'), {'x': j[:, :2], 'y': j[:, 2:]}, jnp.ones(3))[0]
  np.testing.assert_allclose(jnp.concatenate([d['x'], d['y']]), j.sum(0))
  with pytest.raises(ValueError, match='3 task rows but the losses have shape \\(2,\\)'):
    weighting.combine(weighting.get('ew'), j, jnp.ones(2))
  with pytest.raises(ValueError, match='common leading task axis'):
    weighting.combine(weighting.get('ew'), {'x': j, 'y': j[:2]}, jnp.ones(3))
