"""adversarial (ASP-MTL): gradient reversal, the DANN schedule and the step counter, the
auxiliary losses against hand computations, the reversed gradient, the parameter split, the
builder's errors and training through the train step."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import init_train_state, make_train_step, models, tasks as T, train, weighting
# The model's loss and gradient-reversal internals, tested on purpose:
from mtl_jax._src.models.adversarial import orthogonality
from mtl_jax._src.models.gradient_reversal import dann_schedule, reverse_gradient
from mtl_jax.train import ConfigError
from tests.conftest import tiny_config, train_tiny

KINDS = [T.regression('r'), T.binary('b'), T.multiclass('c', 3), T.regression('s', 2)]
B, D = 3, 5


def _tasks(num):
  return T.TaskSet([T.Task(f'{t.name}{i}', t.kind, t.out_dim, t.loss, t.metrics)
                    for i, t in enumerate(KINDS[:num])])


def _model(num=2, **options):
  return models.get('adversarial', _tasks(num), models.get_backbone('mlp', hidden=(6,)),
                    tower_hidden=(4,), per_task_inputs=True,
                    **{'disc_hidden': (5,), **options})


def _inputs(num, seed=0):
  return np.random.default_rng(seed).normal(size=(B, num, D)).astype(np.float32)


def _init(model, x):
  return jax.jit(model.init)(jax.random.PRNGKey(0), x)


# ----------------------------------------------------------------- gradient reversal, schedule

def test_gradient_reversal_is_the_identity_forward_and_flips_the_gradient_by_kappa():
  rng = np.random.default_rng(0)
  x, v = rng.normal(size=(2, 4, 3)).astype(np.float32)

  @jax.jit
  def run(x, kappa):
    f = lambda x, kappa: jnp.sum(reverse_gradient(x, kappa) * v)
    return reverse_gradient(x, kappa), jax.grad(f, argnums=(0, 1))(x, kappa)

  for kappa in (1.0, 0.3, 0.0):
    out, (gx, gk) = run(x, jnp.float32(kappa))
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(gx, -kappa * v, rtol=1e-6)
    assert float(gk) == 0.0
  # A pytree argument: every leaf is flipped.
  g = jax.grad(lambda t: jnp.sum(reverse_gradient(t, 2.0)['a']) + jnp.sum(
      reverse_gradient(t, 2.0)['b'] ** 2))({'a': x, 'b': v})
  np.testing.assert_allclose(g['a'], -2.0 * np.ones_like(x))
  np.testing.assert_allclose(g['b'], -4.0 * v, rtol=1e-6)


def test_dann_schedule_against_the_closed_form():
  closed = lambda p: 2 / (1 + np.exp(-10 * p)) - 1
  for p in (0.0, 0.5, 1.0):
    np.testing.assert_allclose(dann_schedule(p), closed(p), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dann_schedule(p, 0.3), 0.3 * closed(p), rtol=1e-6, atol=1e-7)
  assert float(dann_schedule(0.0)) == 0.0
  np.testing.assert_allclose(dann_schedule(0.5), 2 / (1 + np.exp(-5)) - 1, rtol=1e-6)
  np.testing.assert_allclose(dann_schedule(3.0), closed(1.0), rtol=1e-6)   # p clipped to [0, 1]
  assert float(dann_schedule(-1.0)) == 0.0
  model = _model(reversal=0.5, reversal_schedule='dann', schedule_steps=200)
  np.testing.assert_allclose(model.kappa(100), 0.5 * closed(0.5), rtol=1e-6)
  np.testing.assert_allclose(_model(reversal=0.5).kappa(100), 0.5)


# ------------------------------------------------------------------------------ the model

@pytest.mark.parametrize('num', [2, 4])
def test_shapes_aux_losses_and_the_step_counter(num):
  model, tasks, x = _model(num), _tasks(num), _inputs(num)
  variables = _init(model, x)
  assert set(variables) == {'params', 'progress'}
  assert set(variables['params']) == {'shared', 'task'}
  assert set(variables['params']['shared']) == {'encoder', 'discriminator'}
  assert int(variables['progress']['step']) == 0

  @jax.jit
  def run(variables):
    evaluated, eval_state = model.apply(variables, x, train=False, mutable=['progress',
                                                                            'aux_loss'])
    trained, train_state = model.apply(variables, x, train=True, mutable=['progress',
                                                                          'aux_loss'])
    frozen = model.apply(variables, x, train=True, mutable=['aux_loss'])[1]
    return evaluated, eval_state, trained, train_state, frozen

  evaluated, eval_state, trained, train_state, frozen = run(variables)
  for out in (evaluated, trained):
    assert set(out) == set(tasks.names)
    for t in tasks:
      assert out[t.name].shape == (B, t.out_dim)
  # Evaluation: nothing sown, the counter stays; training: both losses, the counter advances.
  assert 'aux_loss' not in eval_state and int(eval_state['progress']['step']) == 0
  assert set(train_state['aux_loss']) == {'adversarial', 'orthogonality'}
  assert int(train_state['progress']['step']) == 1
  assert set(frozen['aux_loss']) == {'adversarial', 'orthogonality'}   # counter not mutable
  again = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['progress', 'aux_loss']))(
      {**variables, **{'progress': train_state['progress']}})[1]
  assert int(again['progress']['step']) == 2


def _relu_dense(x, p):
  return np.maximum(x @ p['kernel'] + p['bias'], 0)


def _hand_features(params, x):
  """s [B, T, d_s], p [B, T, d_p] and the discriminator logits [B, T, T], in numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  s = _relu_dense(x, p['shared']['encoder']['Dense_0'])
  private = p['task']['encoder']['Dense_0']
  h = np.stack([_relu_dense(x[:, t], jax.tree.map(lambda a: a[t], private))
                for t in range(x.shape[1])], axis=1)
  disc = p['shared']['discriminator']
  logits = _relu_dense(s, disc['mlp']['Dense_0']) @ disc['out']['kernel'] + disc['out']['bias']
  return s, h, logits


def _hand_frobenius(s, h):      # s [T, B, d_s], h [T, B, d_p]
  return sum(np.sum((s[t].T @ h[t]) ** 2) for t in range(s.shape[0]))


def _hand_dsn(s, h):
  total = 0.0
  for t in range(s.shape[0]):
    a, b = s[t] - s[t].mean(0), h[t] - h[t].mean(0)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-6)
    total += np.mean((b.T @ a) ** 2)
  return total


def test_orthogonality_penalty_zero_for_orthogonal_features_and_hand_computed_otherwise():
  rng = np.random.default_rng(1)
  u1, u2 = np.array([1., -1., 0., 0.]), np.array([0., 0., 2., -2.])   # orthogonal, centred
  s = np.stack([np.outer(u1, rng.normal(size=3)) for _ in range(2)])  # [T, B, d_s]
  h = np.stack([np.outer(u2, rng.normal(size=5)) for _ in range(2)])  # [T, B, d_p]
  for kind in ('frobenius', 'dsn'):
    assert abs(float(orthogonality(s, h, kind))) < 1e-10
  s, h = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 4, 5))
  np.testing.assert_allclose(orthogonality(s, h, 'frobenius'), _hand_frobenius(s, h), rtol=1e-5)
  np.testing.assert_allclose(orthogonality(s, h, 'dsn'), _hand_dsn(s, h), rtol=1e-5)
  assert _hand_dsn(s, h) > 1e-3


@pytest.mark.parametrize('diff', ['frobenius', 'dsn'])
def test_sown_losses_equal_a_hand_computation(diff):
  num = 3
  model, x = _model(num, diff=diff, adv_weight=0.3, diff_weight=0.2), _inputs(num)
  params = _init(model, x)['params']
  _, state = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['progress', 'aux_loss']))(
      {'params': params, 'progress': {'step': jnp.int32(0)}})
  s, h, logits = _hand_features(params, x.astype(np.float64))
  logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  ce = -np.mean([logp[b, t, t] for b in range(B) for t in range(num)])
  np.testing.assert_allclose(state['aux_loss']['adversarial'][0], 0.3 * ce, rtol=1e-5)
  penalty = (_hand_frobenius if diff == 'frobenius' else _hand_dsn)(
      np.swapaxes(s, 0, 1), np.swapaxes(h, 0, 1))
  np.testing.assert_allclose(state['aux_loss']['orthogonality'][0], 0.2 * penalty, rtol=1e-4)


@pytest.mark.parametrize('options,step,kappa', [
    ({'reversal': 0.7}, 0, 0.7),
    ({'reversal': 2.0, 'reversal_schedule': 'dann', 'schedule_steps': 1000}, 250,
     2.0 * (2 / (1 + np.exp(-2.5)) - 1))])
def test_the_discriminator_descends_and_the_shared_encoder_gets_the_reversed_gradient(
    options, step, kappa):
  num = 3
  model, x = _model(num, adv_weight=0.5, **options), _inputs(num)
  params = _init(model, x)['params']
  progress = {'step': jnp.int32(step)}
  labels = np.tile(np.arange(num), B)

  def adversarial_loss(params):
    _, state = model.apply({'params': params, 'progress': progress}, x, train=True,
                           mutable=['progress', 'aux_loss'])
    return state['aux_loss']['adversarial'][0]

  def cross_entropy(encoder, disc):   # written out, no reversal
    s = jax.nn.relu(x.reshape(B * num, D) @ encoder['kernel'] + encoder['bias'])
    h = jax.nn.relu(s @ disc['mlp']['Dense_0']['kernel'] + disc['mlp']['Dense_0']['bias'])
    logp = jax.nn.log_softmax(h @ disc['out']['kernel'] + disc['out']['bias'])
    return -jnp.mean(logp[jnp.arange(B * num), labels])

  @jax.jit
  def run(params):
    return jax.grad(adversarial_loss)(params), jax.grad(cross_entropy, argnums=(0, 1))(
        params['shared']['encoder']['Dense_0'], params['shared']['discriminator'])

  grads, (g_encoder, g_disc) = run(params)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  jax.tree.map(close, grads['shared']['discriminator'], jax.tree.map(lambda g: 0.5 * g, g_disc))
  jax.tree.map(close, grads['shared']['encoder']['Dense_0'],
               jax.tree.map(lambda g: -kappa * 0.5 * g, g_encoder))
  assert np.any(np.asarray(g_encoder['kernel']))
  assert not any(np.any(leaf) for leaf in jax.tree.leaves(grads['task']))
  # A descent step on the discriminator lowers the cross-entropy.
  lr = 1e-2
  lowered = jax.tree.map(lambda p, g: p - lr * g, params['shared']['discriminator'],
                         grads['shared']['discriminator'])
  encoder = params['shared']['encoder']['Dense_0']
  assert cross_entropy(encoder, lowered) < cross_entropy(encoder,
                                                         params['shared']['discriminator'])


def test_task_parameters_get_gradient_only_from_their_own_task():
  num = 4
  model, tasks, x = _model(num), _tasks(num), _inputs(num)
  params = _init(model, x)['params']
  rng = np.random.default_rng(1)
  batch = {'inputs': x, 'labels': {'r0': rng.normal(size=(B, 1)), 'b1': rng.integers(0, 2, B),
                                   'c2': rng.integers(0, 3, B), 's3': rng.normal(size=(B, 2))}}

  @jax.jit
  def jacobian(task_params):
    variables = lambda tp: {'params': {**params, 'task': tp}, 'progress': {'step': 0}}
    return jax.jacrev(lambda tp: tasks.losses(model.apply(variables(tp), x), batch))(
        task_params)

  jac = jacobian(params['task'])
  for leaf in jax.tree.leaves(jac['encoder']):      # private encoder t: task t only
    nonzero = np.any(np.asarray(leaf).reshape(num, num, -1) != 0, axis=2)
    np.testing.assert_array_equal(nonzero, np.eye(num, dtype=bool))
  for leaf in jax.tree.leaves(jac['heads']):
    assert np.max(np.sum(np.asarray(leaf).reshape(num, -1) != 0, axis=0)) <= 1


# ------------------------------------------------------------------------------ errors

def test_needs_one_input_per_task():
  message = (r'^adversarial\.per_task_inputs: the task discriminator needs one input per task '
             r'\(data with per-task inputs\), got a shared input$')
  backbone = models.get_backbone('mlp', hidden=(6,))
  with pytest.raises(ValueError, match=message):
    models.get('adversarial', _tasks(2), backbone)
  with pytest.raises(ValueError, match=message):
    models.get('adversarial', _tasks(2), backbone, per_task_inputs=False)
  with pytest.raises(ValueError, match=r'^adversarial\.per_task_inputs: inputs must be '
                     r'\[B, T=2, \.\.\.\]'):
    jax.eval_shape(_model(2).init, jax.random.PRNGKey(0), np.zeros((B, D), np.float32))


@pytest.mark.parametrize('option,value,message', [
    ('disc_hidden', (0,), 'disc_hidden: must be positive integer widths'),
    ('adv_weight', -1.0, 'adv_weight: must be a number >= 0'),
    ('diff_weight', 'x', 'diff_weight: must be a number >= 0'),
    ('reversal', -0.5, 'reversal: must be a number >= 0'),
    ('diff', 'cosine', 'diff: must be one of'),
    ('reversal_schedule', 'linear', 'reversal_schedule: must be one of'),
    ('schedule_steps', 0, 'schedule_steps: must be an integer >= 1'),
])
def test_bad_options(option, value, message):
  with pytest.raises(ValueError, match='^adversarial.' + message):
    _model(2, **{option: value})


def test_needs_two_tasks():
  with pytest.raises(ValueError, match=r'^adversarial\.num_tasks: the task discriminator needs '
                     'at least 2 tasks, got 1'):
    _model(1)


# ------------------------------------------------------------------------------ training

@pytest.mark.parametrize('method', ['cagrad'])
def test_trains_through_the_train_step(method):
  num, steps = 2, 4
  model, tasks = _model(num, reversal_schedule='dann', schedule_steps=4), _tasks(num)
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(8, num, D)).astype(np.float32),
           'labels': {'r0': rng.normal(size=(8, 1)).astype(np.float32),
                      'b1': rng.integers(0, 2, 8).astype(np.float32)},
           'masks': {'b1': rng.random(8) < 0.75}}
  method = weighting.get(method)
  optimizer = optax.adam(1e-2)
  state = init_train_state(model, tasks, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  assert int(state.model_state['progress']['step']) == 0
  train_step = make_train_step(model, tasks, optimizer, method)
  history = []
  for _ in range(steps):
    state, metrics = train_step(state, batch)
    history.append(jax.device_get(metrics))
  assert int(state.model_state['progress']['step']) == steps and int(state.num_rejected) == 0
  for m in history:
    assert np.all(np.isfinite(m['losses'])) and np.isfinite(m['loss'])
    assert m['aux_loss/adversarial'] > 0 and m['aux_loss/orthogonality'] >= 0
  np.testing.assert_allclose(history[0]['loss'],
                             np.sum(history[0]['weights'] * history[0]['losses'])
                             + history[0]['aux_loss/adversarial']
                             + history[0]['aux_loss/orthogonality'], rtol=1e-5)
  assert history[-1]['losses'].sum() < history[0]['losses'].sum()


def test_train_and_evaluate_with_per_task_inputs(tmp_path):
  overrides = {'model.name': 'adversarial', 'train.steps': 10}
  with pytest.raises(ConfigError, match=r'config\.model\.adversarial\.per_task_inputs: the '
                     'task discriminator needs one input per task'):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / 'shared'))
  train_tiny(tmp_path, **overrides, **{'data.synthetic.per_task_inputs': True})
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  assert len(lines) == 10
  assert all(np.isfinite(l['aux_loss/adversarial']) and np.isfinite(l['aux_loss/orthogonality'])
             for l in lines)


def test_attention_fusion_is_per_task_and_reads_both_features():
  import jax, jax.numpy as jnp, numpy as np
  from mtl_jax import models, tasks as T
  tasks = T.TaskSet([T.regression('a'), T.regression('b')])
  model = models.get('adversarial', tasks, models.get_backbone('mlp', hidden=(4,)),
                     per_task_inputs=True, fusion='attention', fusion_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5))
  variables = model.init(jax.random.PRNGKey(1), x)
  attention = variables['params']['task']['attention']
  assert all(leaf.shape[0] == 2 for leaf in jax.tree_util.tree_leaves(attention))
  preds = model.apply(variables, x)
  assert preds['a'].shape == (3, 1)
  # Task a's prediction depends on the shared encoder through the attention fusion, and its
  # attention parameters do not touch task b.
  def pred_b(att):
    params = dict(variables['params'], task=dict(variables['params']['task'], attention=att))
    return jnp.sum(model.apply({**variables, 'params': params}, x)['b'])
  grads = jax.grad(pred_b)(attention)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.asarray(leaf)[0] == 0) and np.any(np.asarray(leaf)[1] != 0)
