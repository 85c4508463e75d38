"""Mixed precision (``compute_dtype='bfloat16'``): every zoo model and backbone multiplies in
bfloat16, every method trains in it and stays close to its float32 run, and the Gram matrix
of bfloat16 gradients is accumulated in float32 (checked against NumPy in float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import init_train_state, make_train_step, models, weighting
from mtl_jax import tasks as T
from mtl_jax.data import BatchIterator, make_synthetic
from mtl_jax import mtl_value_and_grad
from mtl_jax._src.objective import apply_model
from mtl_jax._src.weighting import gramian
from tests import test_mpnn

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
TASKS = T.TaskSet([T.regression('a'), T.multiclass('b', 3), T.binary('c')])
STEPS = 5
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); over the first STEPS Adam
# steps on one batch the summed loss of a bfloat16 run stays within this relative distance
# of the float32 run's.
LOSS_RTOL = 0.03


def _sub_jaxprs(eqn):
  """The jaxprs inside an equation's parameters (jit, scan, cond branches, custom rules)."""
  for value in eqn.params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(v, 'eqns'):
        yield v
      elif hasattr(v, 'jaxpr') and hasattr(v.jaxpr, 'eqns'):
        yield v.jaxpr


def _contractions(jaxpr):
  """(primitive, operand dtypes) of every dot_general and convolution, through nested calls."""
  found = []
  for eqn in jaxpr.eqns:
    for sub in _sub_jaxprs(eqn):
      found += _contractions(sub)
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
      found.append((eqn.primitive.name, tuple(v.aval.dtype for v in eqn.invars)))
  return found


def _model_cases():
  mlp = lambda: models.get_backbone('mlp', hidden=(6, 5))
  cases = {name: (lambda n=name: models.get(n, TASKS, mlp(), tower_hidden=(4,),
                                            **({'per_task_inputs': True}
                                               if n == 'adversarial' else {})), (6, 8))
           for name in models.names()}
  image = (2, 12, 12, 1)
  cases['backbone=cnn'] = (lambda: models.get('shared_bottom', TASKS, models.get_backbone(
      'cnn', channels=(4, 6), norm='batch'), tower_hidden=(4,)), image)
  cases['backbone=lenet'] = (lambda: models.get('shared_bottom', TASKS, models.get_backbone(
      'lenet', features=8)), (2, 28, 28, 1))
  cases['backbone=transformer'] = (lambda: models.get('shared_bottom', TASKS,
                                                      models.get_backbone(
      'transformer', d_model=8, num_heads=2, num_layers=1, patch_size=4)), image)
  cases['backbone=mpnn'] = (lambda: models.get('shared_bottom', TASKS, models.get_backbone(
      'mpnn', dim=8, edge_hidden=16, steps=2, set2set_steps=2)), 'graphs')
  cases['backbone=resnet'] = (lambda: models.get('shared_bottom', TASKS, models.get_backbone(
      'resnet', blocks=(1, 1), widths=(4, 8), stem='cifar')), image)
  return cases


MODEL_CASES = _model_cases()


@pytest.mark.parametrize('case', sorted(MODEL_CASES))
def test_every_model_and_backbone_multiplies_in_bfloat16(case):
  """Every matrix product and convolution of the forward pass reads bfloat16 operands (the
  model's own code unchanged), the predictions come back float32, the params stay float32."""
  build, shape = MODEL_CASES[case]
  model, rng = build(), np.random.default_rng(0)
  if shape == 'graphs':
    x = test_mpnn._batch([test_mpnn._graph(n, rng, 6, 30) for n in (3, 5)])
  else:
    x = rng.standard_normal(shape[:1] + (len(TASKS),) + shape[1:] if case == 'adversarial'
                            else shape).astype(np.float32)
  variables = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, x, train=False))
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  run = lambda p, s, x: apply_model(model, p, s, x, True, jax.random.PRNGKey(2),
                                    compute_dtype=BF16)
  closed = jax.make_jaxpr(run)(params, state, x)
  products = _contractions(closed.jaxpr)
  assert products, case
  wide = [(name, dtypes) for name, dtypes in products if set(dtypes) != {BF16}]
  assert not wide, (case, wide)
  preds, new_state, _ = jax.eval_shape(run, params, state, x)
  assert {v.dtype for v in jax.tree.leaves(preds)} == {F32}
  assert {v.dtype for v in jax.tree.leaves((params, new_state))
          if jnp.issubdtype(v.dtype, jnp.floating)} <= {F32}


def test_the_float32_default_multiplies_in_float32():
  """The check above can fail: without compute_dtype the same model reads float32."""
  build, shape = MODEL_CASES['shared_bottom']
  model = build()
  x = np.zeros(shape, np.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))['params']
  closed = jax.make_jaxpr(lambda p: apply_model(model, p, {}, x, False))(params)
  assert {d for _, dtypes in _contractions(closed.jaxpr) for d in dtypes} == {F32}


# ------------------------------------------------------------------ every method trains

def _problem(batch_size=32):
  ds = make_synthetic(3, 0.5, input_dim=12, sizes=(64, 8, 8))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(16,)),
                     tower_hidden=(8,))
  return ds, model, next(BatchIterator(ds.split('train'), batch_size, seed=0))


def _runs(name, grad_dtype=None, mode='auto'):
  """(bfloat16 run's final state, its summed losses, float32 run's summed losses) over STEPS
  steps on one batch from one initialisation: both runs as one compiled program (a scan)."""
  method = weighting.get(name, **({'steps_per_epoch': 1} if name == 'dwa' else {}))
  ds, model, batch = _problem(30 if method.sub_batches == 3 else 32)   # k equal sub-batches
  optimizer = optax.adam(1e-2)
  state = init_train_state(model, ds.tasks, optimizer, method, batch['inputs'],
                           jax.random.PRNGKey(0))
  low_step, ref_step = (make_train_step(model, ds.tasks, optimizer, method, mode=mode,
                                        compute_dtype=c, grad_dtype=g, jit=False)
                        for c, g in (('bfloat16', grad_dtype), ('float32', None)))

  def both(state):
    def body(carry, _):
      (low, ref), total = carry, lambda m: jnp.sum(m['losses'])
      low, low_metrics = low_step(low, batch)
      ref, ref_metrics = ref_step(ref, batch)
      return (low, ref), (total(low_metrics), total(ref_metrics))
    (low, _), curves = jax.lax.scan(body, (state, state), None, length=STEPS)
    return low, curves

  low, (low_losses, ref_losses) = jax.jit(both)(state)
  return low, np.asarray(low_losses), np.asarray(ref_losses)


@pytest.mark.parametrize('name', weighting.names())
def test_every_method_trains_in_bfloat16_close_to_float32(name):
  state, low, ref = _runs(name)
  assert int(state.num_rejected) == 0 and np.all(np.isfinite(low)), low
  assert low[-1] < low[0], low                                     # the loss falls
  np.testing.assert_allclose(low, ref, rtol=LOSS_RTOL)
  assert not np.array_equal(low, ref)                              # bfloat16 really ran
  for tree in (state.params, state.opt_state, state.weighting_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
            } <= {F32}, name


@pytest.mark.parametrize('name, mode', [('upgrad', 'gram'), ('pcgrad', 'param'),
                                        ('mgda', 'rep'), ('modo', 'auto')])
def test_bfloat16_task_gradients_train_close_to_float32(name, mode):
  """grad_dtype='bfloat16' (Jacobian rows / cotangents stored in bfloat16) in each engine
  mode (and MoDo's sub-batch rows through the representation): no rejected step, the loss falls, within LOSS_RTOL of float32."""
  state, low, ref = _runs(name, 'bfloat16', mode)
  assert int(state.num_rejected) == 0 and low[-1] < low[0], low
  np.testing.assert_allclose(low, ref, rtol=LOSS_RTOL)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {F32}


# ------------------------------------------- the Gram matrix of bfloat16 gradients is float32

def _bf16(rng, shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)


def test_gram_of_a_bfloat16_jacobian_accumulates_in_float32():
  """G = J J^T of a bfloat16 J [3, 20000] equals NumPy's float64 product of the same values to
  float32 accuracy; a bfloat16 accumulation would be off by ~1e-2 relative."""
  jac = _bf16(np.random.default_rng(0), (3, 20000))
  g = weighting.gram(jac)
  j64 = np.asarray(jac.astype(jnp.float32), np.float64)
  assert g.dtype == F32
  np.testing.assert_allclose(np.asarray(g, np.float64), j64 @ j64.T, rtol=2e-5)


@pytest.mark.parametrize('policy', ['identity', 'explicit'])
def test_gramian_mode_of_bfloat16_layers_accumulates_in_float32(policy):
  """A bfloat16 dense layer y = x W with losses L_t = <C_t, y>: its cotangents are C_t
  exactly, so G[s, t] = <x^T C_s, x^T C_t>, computed here in float64 from the same values.
  The identity never forms the gradients x^T C_t; the explicit rule forms them in bfloat16
  (rounded once), so its reference rounds them too; either way the sums over 512 samples and
  3072 gradient entries must be float32-accurate (bfloat16 sums would miss by ~1e-2)."""
  rng = np.random.default_rng(1)
  x, w, c = _bf16(rng, (512, 48)), _bf16(rng, (48, 8)), _bf16(rng, (3, 512, 8))
  fn = lambda p: jnp.einsum('bo,tbo->t', x @ p['w'], c)
  vjp = gramian.gram_vjp(fn, {'w': w}, policy=policy)
  g = vjp.gram(jnp.eye(3, dtype=BF16))
  x64, c64 = (np.asarray(a.astype(jnp.float32), np.float64) for a in (x, c))
  grads = np.einsum('bi,tbo->tio', x64, c64).reshape(3, -1)
  if policy == 'explicit':
    grads = np.asarray(jnp.asarray(grads, jnp.float32).astype(jnp.bfloat16), np.float64)
  assert g.dtype == F32
  np.testing.assert_allclose(np.asarray(g, np.float64), grads @ grads.T, rtol=2e-5)


# ------------------------------------------------------------------ the library function

def test_mtl_value_and_grad_in_bfloat16():
  """A plain JAX model through ``mtl_value_and_grad(compute_dtype=..., grad_dtype=...)``:
  losses float32, grads float32 and shaped like the params, close to the float32 call; the
  function really computes in bfloat16 (its losses differ from float32's by rounding)."""
  rng = np.random.default_rng(2)
  params = {'trunk': jnp.asarray(rng.standard_normal((10, 16)) / 4, jnp.float32),
            'heads': jnp.asarray(rng.standard_normal((3, 16)) / 4, jnp.float32)}
  x, y = rng.standard_normal((64, 10)).astype(np.float32), rng.standard_normal((64, 3))
  seen = []

  def losses_fn(p, x, *, y):
    seen.append(p['trunk'].dtype)
    z = jnp.tanh(x @ p['trunk'])
    return jnp.mean((z @ p['heads'].T - y) ** 2, axis=0)

  shared = {'trunk': True, 'heads': False}
  method = weighting.get('mgda')
  ref = mtl_value_and_grad(losses_fn, method, shared=shared)(params, None, None, x, y=y)
  low = mtl_value_and_grad(losses_fn, method, shared=shared, compute_dtype='bfloat16',
                           grad_dtype='bfloat16')(params, None, None, x, y=y)
  assert BF16 in seen
  assert low[0].dtype == F32 and {g.dtype for g in jax.tree.leaves(low[1])} == {F32}
  np.testing.assert_allclose(low[0], ref[0], rtol=2e-2)
  assert not np.allclose(low[0], ref[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(low[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=0.1, atol=0.02 * float(jnp.max(jnp.abs(b))))
  np.testing.assert_allclose(low[2], ref[2], atol=0.05)


@pytest.mark.parametrize('value', ['float16', 'int8', 'fp8'])
def test_unknown_dtypes_are_refused_naming_the_field(value):
  ds, model, _ = _problem()
  with pytest.raises(ValueError, match='compute_dtype: must be one of'):
    make_train_step(model, ds.tasks, optax.sgd(0.1), weighting.get('ew'), compute_dtype=value)
  with pytest.raises(ValueError, match='grad_dtype: must be one of'):
    mtl_value_and_grad(lambda p: p, weighting.get('ew'), shared=True, grad_dtype=value)


# ------------------------------------------------------------------ the trainer

def test_the_trainer_runs_in_bfloat16_from_the_config(tmp_path):
  """``config.train.compute_dtype='bfloat16'`` reaches the train and eval steps: the run's
  losses differ from the float32 run's by rounding only; checkpointed params are float32."""
  from mtl_jax import train, transfer   # pylint: disable=import-outside-toplevel
  from tests.conftest import tiny_config   # pylint: disable=import-outside-toplevel
  short = {'train.steps': 4, 'train.log_every': 2, 'train.checkpoint_every': 4,
           'weighting.name': 'upgrad'}
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    workdir = tmp_path / dtype
    runs[dtype] = train.train_and_evaluate(
        tiny_config(**short, **{'train.compute_dtype': dtype, 'train.grad_dtype': dtype}),
        str(workdir))
    params = transfer.load_params(str(workdir))
    assert {x.dtype for x in jax.tree.leaves(params)} == {F32}
  low, ref = (runs[d]['metrics'] for d in ('bfloat16', 'float32'))
  assert runs['bfloat16']['rejected_steps'] == 0
  for task in ref:
    assert low[task]['mse'] != ref[task]['mse']
    np.testing.assert_allclose(low[task]['mse'], ref[task]['mse'], rtol=LOSS_RTOL)


def test_a_bad_dtype_in_the_config_names_the_field(tmp_path):
  from mtl_jax import train   # pylint: disable=import-outside-toplevel
  from tests.conftest import tiny_config   # pylint: disable=import-outside-toplevel
  with pytest.raises(train.ConfigError, match=r"config.train.compute_dtype: must be one of"):
    train.train_and_evaluate(tiny_config(**{'train.compute_dtype': 'float16'}), str(tmp_path))


def _dot_precisions(fn, *args):
  closed = jax.make_jaxpr(fn)(*args)
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      for sub in _sub_jaxprs(eqn):
        walk(sub)
      if eqn.primitive.name == 'dot_general':
        found.append(eqn.params['precision'])
  walk(closed.jaxpr)
  return found


@pytest.mark.parametrize('policy', ['identity', 'explicit'])
def test_float32_gram_products_ask_for_full_precision(policy):
  """GPUs multiply float32 in TF32 and TPUs in one bfloat16 pass by default (about 3
  significant digits); every product forming G asks for HIGHEST.  (On the CPU, which has only
  full precision, this is checked on the traced program.)"""
  rng = np.random.default_rng(3)
  jac = jnp.asarray(rng.standard_normal((3, 50)), jnp.float32)
  highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
  assert _dot_precisions(weighting.gram, jac) == [highest]
  x, c = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((64, 6), (3, 64, 4)))
  fn = lambda p: jnp.einsum('bo,tbo->t', x @ p['w'], c)
  w = jnp.zeros((6, 4), jnp.float32)
  gram = lambda w: gramian.gram_vjp(fn, {'w': w}, policy=policy).gram(jnp.eye(3))
  found = _dot_precisions(gram, w)
  # the model's own product x @ w (and the explicit rule's per-task gradients) keep the
  # default; the products that form G do not
  assert found.count(highest) >= (1 if policy == 'explicit' else 3), found
