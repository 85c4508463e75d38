"""task_attention: shapes, the representation split, a hand-written numpy transformer block,
the task mask (jacobians), per-task token attention, the split of parameters, training."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models, tasks as T
from tests.conftest import train_tiny

KINDS = [T.regression('r'), T.binary('b'), T.multiclass('c', 3), T.regression('s', 2)]


def _tasks(num):
  return T.TaskSet([T.Task(f'{t.name}{i}', t.kind, t.out_dim, t.loss, t.metrics)
                    for i, t in enumerate((KINDS * 2)[:num])])


class Tokens(nn.Module):
  """A tiny backbone with token ([B, 4, 8]) or feature-map ([B, 2, 2, 8]) outputs."""
  spatial: bool = False
  stage_names = ('tokens',)

  @nn.compact
  def __call__(self, x, train=False, hook=None):
    h = nn.Dense(4 * 8)(x)
    return h.reshape((x.shape[0], 2, 2, 8) if self.spatial else (x.shape[0], 4, 8))


def _model(num, backbone=None, **options):
  options = {'subspace_dim': 8, 'num_heads': 2, **options}
  return models.get('task_attention', _tasks(num),
                    backbone or models.get_backbone('mlp', hidden=(6,)), tower_hidden=(5,),
                    **options)


X = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)


def _params(model, seed=0, scale=0.5):
  """Random parameters of ``model`` (every leaf, so LN scales and biases matter too), from
  the abstract init (no compilation)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), X)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: (scale * rng.normal(size=l.shape)).astype(np.float32), shapes)


@pytest.mark.parametrize('num,variant', [
    (1, {}), (2, {'mask': 'previous', 'num_blocks': 2}),
    (4, {'token_attention': True, 'backbone': Tokens(True)})])
def test_shapes_and_the_representation_split(num, variant):
  variant = dict(variant)
  model = _model(num, variant.pop('backbone', None), **variant)
  params = _params(model)
  assert set(params) == {'shared', 'task'}
  tasks = _tasks(num)

  @jax.jit
  def run(params):
    v = {'params': params}
    out = model.apply(v, X)
    z = model.apply(v, X, method='representation')
    direct = model.apply(v, z, inputs=X, method='heads')
    stacked = model.apply(v, jnp.broadcast_to(z, (num,) + z.shape), stacked=True, inputs=X,
                          method='heads')
    return out, z, direct, stacked

  out, z, direct, stacked = run(params)
  assert set(out) == set(tasks.names)
  for t in tasks:
    assert out[t.name].shape == (3, t.out_dim)
  assert z.shape == (3, num, 8)
  for name in tasks.names:
    np.testing.assert_allclose(direct[name], out[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked[name], out[name], rtol=1e-6, atol=1e-6)


# That stacked copy t reaches task t only: tests/test_model_zoo.py (every model).


def _layer_norm(x, p):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _mha(x, p, mask=None):
  """Multi-head self-attention over x [B, N, d] with flax's parameter layout, in numpy."""
  q = np.einsum('bnd,dhk->bnhk', x, p['query']['kernel']) + p['query']['bias']
  k = np.einsum('bnd,dhk->bnhk', x, p['key']['kernel']) + p['key']['bias']
  v = np.einsum('bnd,dhk->bnhk', x, p['value']['kernel']) + p['value']['bias']
  logits = np.einsum('bqhk,bnhk->bhqn', q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = np.einsum('bhqn,bnhk->bqhk', a, v)
  return np.einsum('bqhk,hkd->bqd', o, p['out']['kernel']) + p['out']['bias']


def _block(z, p, mask):
  z = z + _mha(_layer_norm(z, p['ln_attention']), p['attention'], mask)
  h = _layer_norm(z, p['ln_ffn'])
  h = np.maximum(h @ p['ffn_in']['kernel'] + p['ffn_in']['bias'], 0)
  return z + h @ p['ffn_out']['kernel'] + p['ffn_out']['bias']


@pytest.mark.parametrize('mask,numpy_mask', [
    ('none', None), ('previous', np.array([[1, 0], [1, 1]], bool))])
def test_one_block_equals_a_hand_written_transformer_block(mask, numpy_mask):
  model = _model(2, mask=mask)
  params = _params(model, seed=1)
  z = jax.jit(functools.partial(model.apply, method='representation'))({'params': params}, X)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['shared'])
  h = np.maximum(X @ p['backbone']['Dense_0']['kernel'] + p['backbone']['Dense_0']['bias'], 0)
  tokens = np.einsum('bd,tds->bts', h, p['proj_kernel']) + p['proj_bias']
  expected = _block(tokens, p['block0'], numpy_mask)
  np.testing.assert_allclose(z, expected, rtol=2e-5, atol=2e-5)


class Permuted(nn.Module):
  """``Tokens`` with the token order reversed."""
  stage_names = ('tokens',)

  @nn.compact
  def __call__(self, x, train=False, hook=None):
    return Tokens(name='inner')(x)[:, ::-1]


def test_per_task_token_attention_equals_a_hand_written_one_and_ignores_token_order():
  model, permuted = (_model(2, b, token_attention=True) for b in (Tokens(), Permuted()))
  params = _params(model, seed=2)
  params_p = {**params, 'shared': {**params['shared'],
                                   'backbone': {'inner': params['shared']['backbone']}}}

  @jax.jit
  def run(params, params_p):
    _, captured = model.apply({'params': params}, X, capture_intermediates=True,
                              method='representation')
    return (captured['intermediates']['shared'],
            permuted.apply({'params': params_p}, X, method='representation'))

  captured, z_permuted = run(params, params_p)
  per_task = captured['per_task']['__call__'][0]                   # [T, B, N, d_s]
  z = captured['__call__'][0]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['shared'])
  tokens = (X @ p['backbone']['Dense_0']['kernel'] + p['backbone']['Dense_0']['bias'])
  tokens = tokens.reshape(3, 4, 8)
  pooled = np.stack([_mha(tokens, jax.tree.map(lambda a: a[t], p['subspace_attention'])).mean(1)
                     for t in range(2)], axis=1)                   # [B, T, d_s]
  np.testing.assert_allclose(np.mean(per_task, axis=2), np.swapaxes(pooled, 0, 1), rtol=2e-5,
                             atol=2e-5)
  np.testing.assert_allclose(z, _block(pooled, p['block0'], None), rtol=2e-5, atol=2e-5)
  # Mean pooling of self-attention without positions: the token order does not matter.
  np.testing.assert_allclose(z_permuted, z, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the task mask

@pytest.mark.parametrize('mask,expected', [('self', np.eye(3, dtype=bool)),
                                           ('none', np.ones((3, 3), bool))])
def test_the_task_mask_decides_who_reads_whose_token(mask, expected):
  """d sum(output_t) / d W^P_s is nonzero iff task t may read task s's token: 'self' (no
  exchange) the identity, 'none' everything ('previous' is checked by the hand-written
  block)."""
  model = _model(3, mask=mask)
  params = _params(model)

  @jax.jit
  def jacobian(kernel):
    def outputs(kernel):
      shared = {**params['shared'], 'proj_kernel': kernel}
      out = model.apply({'params': {**params, 'shared': shared}}, X)
      return jnp.stack([jnp.sum(out[n]) for n in _tasks(3).names])
    return jax.jacrev(outputs)(kernel)                             # [T, S, d, d_s]

  jac = jacobian(params['shared']['proj_kernel'])
  np.testing.assert_array_equal(np.any(np.asarray(jac) != 0, axis=(2, 3)), expected)


# --------------------------------------------------------------------------- split, errors

def test_task_parameters_get_gradient_only_from_their_own_task():
  num = 4
  model = _model(num, token_attention=True, backbone=Tokens())
  tasks = _tasks(num)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), X)['params']
  rng = np.random.default_rng(1)
  batch = {'inputs': X, 'labels': {'r0': rng.normal(size=(3, 1)), 'b1': rng.integers(0, 2, 3),
                                   'c2': rng.integers(0, 3, 3), 's3': rng.normal(size=(3, 2))}}

  @jax.jit
  def jacobian(params):
    return jax.jacrev(lambda p: tasks.losses(model.apply({'params': p}, X), batch))(params)

  jac = jacobian(params)
  for leaf in jax.tree.leaves(jac['task']):
    assert int(jnp.max(jnp.sum(leaf.reshape(num, -1) != 0, axis=0))) <= 1
  per_task = sum(jnp.any(leaf.reshape(num, -1) != 0, axis=1)
                 for leaf in jax.tree.leaves(jac['task']))
  assert bool(jnp.all(per_task > 0))
  # Every task's loss depends on every task's subspace attention (hence 'shared').
  for part in ('query', 'value', 'out'):   # (a key bias shifts all logits alike: no gradient)
    leaf = jac['shared']['subspace_attention'][part]['kernel']     # [T(loss), T(copy), ...]
    assert bool(jnp.all(jnp.any(leaf.reshape(num, num, -1) != 0, axis=2)))


def test_token_attention_needs_tokens():
  model = _model(2, token_attention=True)
  with pytest.raises(ValueError, match=r'^task_attention\.token_attention: needs a backbone '
                     r'with token or spatial outputs \(rank 3 or 4\), got rank 2'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), X)


def test_tokens_without_token_attention_are_flattened():
  model = _model(2, Tokens())
  assert _params(model)['shared']['proj_kernel'].shape == (2, 32, 8)


@pytest.mark.parametrize('option,value,message', [
    ('subspace_dim', 0, 'subspace_dim: must be an integer >= 1'),
    ('num_heads', 0, 'num_heads: must be an integer >= 1'),
    ('num_heads', 3, 'num_heads: must divide subspace_dim=8'),
    ('num_blocks', 0, 'num_blocks: must be an integer >= 1'),
    ('mask', 'causal', 'mask: must be one of'),
    ('token_attention', 1, 'token_attention: must be a bool'),
])
def test_bad_options(option, value, message):
  with pytest.raises(ValueError, match='^task_attention.' + message):
    _model(2, **{option: value})


@pytest.mark.parametrize('method', ['ew', 'cagrad'])
def test_trains_end_to_end(tmp_path, method):
  train_tiny(tmp_path, **{'model.name': 'task_attention', 'weighting.name': method,
                          'model.task_attention.subspace_dim': 8,
                          'model.task_attention.num_heads': 2})
