"""The library path (combine, as_optax, after_step) against the train step, and its guards.

The train step (make_train_step) is the reference: FAMO's logits through ``combine`` +
``after_step`` and through ``as_optax`` + ``optax_after_step`` must follow it step by step;
``after_step='next_batch'`` on a full-batch objective must equal it shifted by one
``after_step``.  Non-finite inputs keep the method state bitwise, wrong states raise.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import init_train_state, make_train_step, models, tasks as T, weighting

TASKS = T.TaskSet([T.regression('a'), T.regression('b'), T.regression('c')])
STEPS = 20
FAMO = weighting.get('famo', beta=0.1)
OPTIMIZER = optax.sgd(0.05)


def _batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 4)).astype(np.float32)
  y = x @ rng.normal(size=(4, 3)).astype(np.float32)
  scales = (1.0, 3.0, 0.3)              # unequal tasks, so the logits move
  return {'inputs': x, 'labels': {n: s * y[:, i:i + 1] for i, (n, s) in
                                  enumerate(zip('abc', scales))}}


def _hand_losses(model, batch, params):
  """The three mean squared errors written out independently of TaskSet: [3]."""
  preds = model.apply({'params': params}, batch['inputs'])
  return jnp.stack([jnp.mean((preds[n][:, 0] - batch['labels'][n][:, 0]) ** 2) for n in 'abc'])


@functools.lru_cache(maxsize=None)
def _trainer():
  """(model, batch, params0, [logits after 0..STEPS steps], [params after 0..STEPS steps])."""
  model = models.get('shared_bottom', TASKS, models.get_backbone('mlp', hidden=(8,)),
                     tower_hidden=(4,))
  batch = _batch()
  state = init_train_state(model, TASKS, OPTIMIZER, FAMO, batch['inputs'],
                           jax.random.PRNGKey(0))
  step = make_train_step(model, TASKS, OPTIMIZER, FAMO, donate=False)
  logits, params = [state.weighting_state.logits], [state.params]
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    assert int(metrics['rejected']) == 0
    logits.append(state.weighting_state.logits)
    params.append(state.params)
  return model, batch, params[0], np.stack(logits), params


def _close(a, b):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_trainer_logits_move():
  logits = _trainer()[3]
  np.testing.assert_array_equal(logits[0], 0.0)
  assert np.abs(logits[-1]).max() > 0.1, logits[-1]


def test_combine_with_manual_after_step_equals_the_train_step():
  model, batch, params, expected, expected_params = _trainer()
  losses_fn = functools.partial(_hand_losses, model, batch)

  @jax.jit
  def step(params, opt_state, state):
    losses, jac = weighting.jacobian(losses_fn, params)
    out = weighting.combine(FAMO, jac, losses, state=state, after_step='manual')
    updates, opt_state = OPTIMIZER.update(out.direction, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, weighting.after_step(FAMO, out.state, losses, losses_fn(params))

  opt_state, state = OPTIMIZER.init(params), FAMO.init(3)
  for k in range(1, STEPS + 1):
    params, opt_state, state = step(params, opt_state, state)
    _close(state.logits, expected[k])
  chex.assert_trees_all_close(params, expected_params[-1], rtol=1e-4, atol=1e-5)


def _optax_run(mode, params, losses_fn, flush):
  """Logits after each of STEPS updates through ``as_optax(FAMO, after_step=mode)``, and the
  final params; ``flush``: call ``optax_after_step`` after every update."""
  tx = optax.chain(weighting.as_optax(FAMO, 3, after_step=mode), OPTIMIZER)

  @jax.jit
  def step(params, opt_state):
    losses, jac = weighting.jacobian(losses_fn, params)
    updates, opt_state = tx.update(jac, opt_state, params, losses=losses)
    params = optax.apply_updates(params, updates)
    if flush:
      opt_state = weighting.optax_after_step(FAMO, opt_state, losses_fn(params))
    return params, opt_state

  opt_state, logits = tx.init(params), []
  for _ in range(STEPS):
    params, opt_state = step(params, opt_state)
    logits.append(opt_state[0].method_state.logits)
  return np.stack(logits), params, opt_state


def test_as_optax_with_manual_after_step_equals_the_train_step():
  model, batch, params, expected, expected_params = _trainer()
  losses_fn = functools.partial(_hand_losses, model, batch)
  logits, params, opt_state = _optax_run('manual', params, losses_fn, flush=True)
  _close(logits, expected[1:])
  chex.assert_trees_all_close(params, expected_params[-1], rtol=1e-4, atol=1e-5)
  assert int(opt_state[0].count) == STEPS and int(opt_state[0].num_nonfinite) == 0
  # The stored losses were consumed: a second call changes nothing.
  again = weighting.optax_after_step(FAMO, opt_state, losses_fn(params))
  chex.assert_trees_all_equal(again, opt_state)


def test_next_batch_mode_lags_the_train_step_by_one_after_step():
  """Full batch, so L(theta_k) on the next batch is L(theta_k) on this one: update k+1 runs
  the train step's k-th after_step first.  Weights and params equal the train step's; the
  logits after k updates are the train step's after k - 1 steps; a final flush catches up."""
  model, batch, params, expected, expected_params = _trainer()
  losses_fn = functools.partial(_hand_losses, model, batch)
  logits, final, opt_state = _optax_run('next_batch', params, losses_fn, flush=False)
  _close(logits, expected[:-1])
  chex.assert_trees_all_close(final, expected_params[-1], rtol=1e-4, atol=1e-5)
  flushed = weighting.optax_after_step(FAMO, opt_state, losses_fn(final))
  _close(flushed[0].method_state.logits, expected[-1])


def _same_bits(a, b):
  chex.assert_trees_all_equal(a, b, strict=True)


@pytest.mark.parametrize('where', ['loss', 'jacobian'])
def test_nonfinite_input_keeps_uw_state_bitwise_then_training_continues(where):
  uw = weighting.get('uw', lr=0.025)
  run = jax.jit(lambda j, l, s: weighting.combine(uw, j, l, state=s))
  jac = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)
  losses = jnp.array([2.0, 0.5])
  state = uw.init(2)
  bad_jac = jac.at[1, 3].set(jnp.nan) if where == 'jacobian' else jac
  bad_losses = losses.at[1].set(jnp.nan) if where == 'loss' else losses
  out = run(bad_jac, bad_losses, state)
  assert not bool(out.finite)
  _same_bits(out.state, state)
  assert np.all(np.isnan(out.direction))
  out = run(jac, losses, out.state)
  assert bool(out.finite)
  # Adam's first step is lr * sign(grad), grad_s = 1/2 - 1/2 e^{-s} L = (-0.5, 0.25).
  np.testing.assert_allclose(out.state.log_vars, [0.025, -0.025], rtol=1e-5)
  np.testing.assert_allclose(out.weights, [0.5, 0.5])
  np.testing.assert_allclose(out.direction, 0.5 * jac.sum(0), rtol=1e-6)


def test_as_optax_counts_nonfinite_updates_and_apply_if_finite_skips_them():
  uw = weighting.get('uw')
  tx = optax.chain(weighting.as_optax(uw, 2),
                   optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=5))
  params = {'w': jnp.ones(3)}
  jac = {'w': jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])}
  update = jax.jit(lambda l, s: tx.update(jac, s, params, losses=l))
  state = tx.init(params)
  updates, bad = update(jnp.array([jnp.inf, 1.0]), state)
  np.testing.assert_array_equal(updates['w'], 0.0)
  assert int(bad[0].num_nonfinite) == 1 and int(bad[0].count) == 0
  assert np.all(np.isnan(bad[0].losses))
  _same_bits(bad[0].method_state, state[0].method_state)
  _same_bits(bad[1].inner_state, state[1].inner_state)
  updates, good = update(jnp.array([2.0, 1.0]), bad)
  assert int(good[0].count) == 1 and np.all(np.asarray(updates['w']) != 0.0)
  assert np.abs(np.asarray(good[0].method_state.log_vars)).max() > 0


def test_after_step_skips_nonfinite_losses_and_is_the_identity_without_a_hook():
  state = FAMO.init(3)
  step = jax.jit(functools.partial(weighting.after_step, FAMO))
  before = jnp.array([1.0, 2.0, 3.0])
  _same_bits(step(state, before, before.at[0].set(jnp.nan)), state)
  _same_bits(step(state, before.at[2].set(jnp.inf), before), state)
  moved = step(state, before, jnp.array([0.5, 2.0, 3.0]))
  # FAMO's first logit step: Adam's lr * sign of z (delta - z.delta), delta = (log 2, 0, 0).
  np.testing.assert_allclose(moved.logits, [-0.1, 0.1, 0.1], rtol=1e-4)
  uw = weighting.get('uw')
  uw_state = uw.init(3)
  assert weighting.after_step(uw, uw_state, before, 2 * before) is uw_state


def test_stateful_method_without_state_raises():
  uw = weighting.get('uw')
  run = jax.jit(lambda j, l: weighting.combine(uw, j, l))
  with pytest.raises(ValueError, match=r"'uw' keeps state.*state=method\.init\(2\) on the "
                                       'first call and the returned state afterwards'):
    run(jnp.ones((2, 3)), jnp.ones(2))
  out = jax.jit(lambda j, l: weighting.combine(weighting.get('ew'), j, l))(jnp.ones((2, 3)),
                                                                           jnp.ones(2))
  assert out.state == () and bool(out.finite)       # stateless: None is fine


def test_state_made_for_another_task_count_raises():
  uw = weighting.get('uw')
  run = jax.jit(lambda j, l, s: weighting.combine(uw, j, l, state=s))
  with pytest.raises(ValueError, match="state of weighting 'uw' was made for 3 tasks but "
                                       r'there are 2; pass state=method\.init\(2\)'):
    run(jnp.ones((2, 3)), jnp.ones(2), uw.init(3))
  with pytest.raises(ValueError, match="'uw' does not match method.init"):
    run(jnp.ones((2, 3)), jnp.ones(2), {'log_vars': jnp.zeros(2)})


def test_as_optax_checks_the_task_rows_and_losses_at_trace_time():
  tx = weighting.as_optax(weighting.get('pcgrad'), num_tasks=3, key=jax.random.PRNGKey(0))
  update = jax.jit(lambda u, s, l: tx.update(u, s, losses=l))
  state = tx.init(None)
  with pytest.raises(ValueError, match=r"as_optax\(weighting 'pcgrad', num_tasks=3\): got "
                                       'updates with 2 task rows'):
    update(jnp.ones((2, 4)), state, jnp.ones(2))
  with pytest.raises(ValueError, match=r'losses of shape \(2,\), expected 3'):
    update(jnp.ones((3, 4)), state, jnp.ones(2))
  direction, state = update(jnp.ones((3, 4)), state, jnp.ones(3))
  assert direction.shape == (4,) and int(state.count) == 1


def test_random_methods_need_a_key():
  for name in ('pcgrad', 'rlw'):
    with pytest.raises(ValueError, match=f"'{name}' is random: combine needs a PRNG key"):
      jax.jit(lambda j, l, n=name: weighting.combine(weighting.get(n), j, l))(jnp.ones((3, 2)),
                                                                             jnp.ones(3))
    with pytest.raises(ValueError, match=f"'{name}' is random: as_optax needs a PRNG key"):
      weighting.as_optax(weighting.get(name), num_tasks=3)


def test_after_step_methods_need_an_explicit_mode():
  run = lambda **kw: jax.jit(lambda j, l: weighting.combine(
      FAMO, j, l, state=FAMO.init(3), **kw))(jnp.ones((3, 2)), jnp.ones(3))
  with pytest.raises(ValueError, match=r"'famo' updates its state after the parameter step.*"
                                       r"after_step='manual'.*weighting\.after_step"):
    run()
  with pytest.raises(ValueError, match=r"after_step must be one of \[None, 'manual'\], got "
                                       "'next_batch'"):
    run(after_step='next_batch')
  with pytest.raises(ValueError, match=r"'famo' updates its state.*optax_after_step.*"
                                       "after_step='next_batch'"):
    weighting.as_optax(FAMO, num_tasks=3)
  with pytest.raises(ValueError, match="exactly one as_optax WeightingState, found 0"):
    weighting.optax_after_step(FAMO, optax.adam(0.1).init({'w': jnp.ones(2)}), jnp.ones(3))
