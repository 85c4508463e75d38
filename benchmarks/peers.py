"""Step time and agreement of mtl_jax against TorchJD and LibMTL, method by method (CPU).

    .venv/bin/pip install -e '.[peers]'     # torch 2.13.0 (CPU), torchjd[full] 0.18.0, LibMTL 1.1.5
    .venv/bin/python benchmarks/peers.py                         # full run (see README)
    .venv/bin/python benchmarks/peers.py --quick                 # smoke test, small model
    .venv/bin/python benchmarks/peers.py --tasks 8 --batch 64 --methods upgrad --modes param,gram

Writes ``--out`` (JSON, default ``benchmarks/results/peers.json``) and prints the tables.
A library that is not installed is skipped with a message (mtl_jax is always measured).
The protocol is ``main``'s docstring.  torch runs on ``--threads`` intra-op threads (default
2, ``torch.set_num_threads``); XLA uses the cores the process may run on.  On a loaded machine
torch's multi-threaded steps slow down far more than XLA's (seen here: 5-10x at load 6 on 2
cores), so time on a quiet machine only (``--threads 1`` for smoke runs beside other work).

The LibMTL 1.1.5 shims (all inside this script; the installed package is not modified):

* import: ``LibMTL/model/resnet.py`` runs ``from torchvision.models.utils import
  load_state_dict_from_url``, a path that torchvision removed (0.13), and the torchvision
  that pip resolves beside the CPU torch 2.13.0 does not even import ("operator
  torchvision::nms does not exist").  ``_stub_torchvision`` puts stub modules ``torchvision``,
  ``torchvision.models`` and ``torchvision.models.utils`` (the latter with
  ``torch.hub.load_state_dict_from_url``) into ``sys.modules`` before ``import LibMTL``; only
  the ResNet backbones, which are not used here, would read them.
* zero_grad: ``AbsWeighting._compute_grad`` zeroes the shared gradients between the per-task
  backward passes with ``encoder.zero_grad()``, which sets them to None since torch 2.0;
  ``_reset_grad`` then writes ``param.grad.data`` of None (AttributeError) in every method that
  resets the shared gradients (MGDA, PCGrad, CAGrad, IMTL).  The shim overrides
  ``zero_grad_share_params`` with ``zero_grad(set_to_none=False)`` (the torch < 2 behaviour).
* CAGrad: ``LibMTL.weighting.CAGrad.backward`` builds its objective with ``x.reshape(1, 3)``,
  so it runs only with 3 tasks.  ``_LibMTLCAGrad`` is the same procedure (same objective, same
  ``scipy.optimize.minimize`` call, same rescaling) with the number of tasks read from the model.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_jax
from mtl_jax import weighting

FULL = dict(input_dim=784, hidden=(256, 256), classes=10)
QUICK = dict(input_dim=64, hidden=(32, 32), classes=10)
METHODS = ('ew', 'mgda', 'upgrad', 'dualproj', 'cagrad', 'nash_mtl', 'imtl_g', 'pcgrad',
           'aligned_mtl')
TARGET = 2.5                  # every Gram method >= 2.5x faster than TorchJD's faster path
TARGET_TASKS = (8, 32)
TARGET_BATCH = 64
CAGRAD_C = 0.5
JAX_SUM, TORCH_SUM = 'jax (sum)', 'torch (sum)'
QUICK_COMPILE = {'xla_backend_optimization_level': 0}   # --quick only: compile fast (as tests)

# mtl_jax settings matched to each peer (the peers' defaults; see the README for conventions).
# TorchJD: UPGrad / DualProj: QP on G / tr G + 1e-4 I (norm_eps = reg_eps = 1e-4), weights of
# the mean (match_sum=False); MGDA: simplex weights; CAGrad(c=0.5), no rescaling; Nash-MTL:
# max_norm 1, 20 iterations, every step; IMTL-G: weights summing to 1; PCGrad: sum of the
# projected gradients; Aligned-MTL: TorchJD's B (1/T) is mtl_jax's B 1 / T (scale below).
AS_TORCHJD = {
    'ew': dict(reduction='mean'),
    'mgda': dict(match_sum=False),
    'upgrad': dict(match_sum=False, norm_eps=1e-4, reg_eps=1e-4),
    'dualproj': dict(match_sum=False, norm_eps=1e-4, reg_eps=1e-4),
    'cagrad': dict(c=CAGRAD_C, rescale=0, match_sum=False),
    'nash_mtl': dict(max_norm=1.0, update_every=1, max_iters=20),
    'imtl_g': dict(match_sum=False),
    'pcgrad': dict(reduction='sum'),
    'aligned_mtl': dict(scale_mode='min'),
}
# d_mtl_jax * scale is compared with d_torchjd
TORCHJD_SCALE = {'aligned_mtl': lambda num: 1.0 / num}
# LibMTL 1.1.5: EW sums the losses; MGDA mgda_gn='none', weights on the simplex; CAGrad
# calpha=0.5, rescale=1 (its defaults), mean-gradient scale; IMTL's weights sum to 1 (its
# IMTL-L loss scales start at 0 and do not change the gradients of the first step); PCGrad sum.
AS_LIBMTL = {
    'ew': dict(reduction='sum'),
    'mgda': dict(normalization='none', match_sum=False),
    'cagrad': dict(c=CAGRAD_C, rescale=1, match_sum=False),
    'imtl_g': dict(match_sum=False),
    'pcgrad': dict(reduction='sum'),
}
LIBMTL_KWARGS = {'ew': {}, 'mgda': {'mgda_gn': 'none'}, 'pcgrad': {},
                 'cagrad': {'calpha': CAGRAD_C, 'rescale': 1}, 'imtl_g': {}}


# ----------------------------------------------------------------------------------- peers

class Peers:
  """The peer libraries that could be imported (None and a reason for the others)."""

  def __init__(self):
    self.torch = self.torchjd = self.libmtl = None
    self.missing = {}
    try:
      import torch
      self.torch = torch
    except ImportError as e:
      self.missing['torch'] = f'{e} (pip install -e ".[peers]")'
      self.missing['torchjd'] = self.missing['libmtl'] = 'needs torch'
      return
    try:
      import torchjd  # noqa: F401
      from torchjd import aggregation, autogram, autojac
      self.torchjd = types.SimpleNamespace(aggregation=aggregation, autogram=autogram,
                                           autojac=autojac)
    except ImportError as e:
      self.missing['torchjd'] = f'{e} (pip install "torchjd[full]==0.18.0")'
    try:
      self.libmtl = _import_libmtl()
    except Exception as e:  # any import failure: skip the library, say why
      self.missing['libmtl'] = f'{type(e).__name__}: {e} (pip install LibMTL==1.1.5)'

  def versions(self) -> dict:
    from importlib import metadata
    out = {}
    for name in ('torch', 'torchjd', 'LibMTL', 'cvxpy', 'quadprog', 'qpsolvers', 'clarabel',
                 'ecos', 'scipy', 'torchvision'):
      try:
        out[name] = metadata.version(name)
      except metadata.PackageNotFoundError:
        out[name] = None
    return out


def _stub_torchvision(torch):
  """Shim 1: stub ``torchvision.models.utils`` (see the module docstring)."""
  for name in ('torchvision', 'torchvision.models', 'torchvision.models.utils'):
    module = types.ModuleType(name)
    module.__doc__ = 'stub inserted by benchmarks/peers.py so that LibMTL 1.1.5 imports'
    sys.modules[name] = module
  sys.modules['torchvision'].models = sys.modules['torchvision.models']
  sys.modules['torchvision.models'].utils = sys.modules['torchvision.models.utils']
  sys.modules['torchvision.models.utils'].load_state_dict_from_url = (
      torch.hub.load_state_dict_from_url)


def _import_libmtl():
  import torch
  saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.models',
                                           'torchvision.models.utils')}
  _stub_torchvision(torch)
  try:
    import LibMTL  # noqa: F401
    from LibMTL import architecture, weighting as lw
  finally:  # leave sys.modules as it was for everything else
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v

  class CAGradAnyT(lw.CAGrad):
    """Shim 3: LibMTL's CAGrad for any number of tasks (its objective, optimiser, rescale)."""

    def backward(self, losses, **kwargs):
      from scipy.optimize import minimize
      calpha, rescale = kwargs['calpha'], kwargs['rescale']
      if self.rep_grad:
        raise ValueError('CAGrad does not support rep_grad (as in LibMTL)')
      self._compute_grad_dim()
      grads = self._compute_grad(losses, mode='backward')
      gg = torch.matmul(grads, grads.t()).cpu()
      g0_norm = (gg.mean() + 1e-8).sqrt()
      num = self.task_num
      x_start = np.ones(num) / num
      a, b = gg.numpy(), x_start.copy()
      c = (calpha * g0_norm + 1e-8).item()

      def objective(x):
        return float(x @ a @ b + c * np.sqrt(x @ a @ x + 1e-8))

      res = minimize(objective, x_start, bounds=tuple((0, 1) for _ in x_start),
                     constraints=({'type': 'eq', 'fun': lambda x: 1 - sum(x)},))
      ww = torch.Tensor(res.x).to(self.device)
      gw = (grads * ww.view(-1, 1)).sum(0)
      g = grads.mean(0) + c / (gw.norm() + 1e-8) * gw
      new_grads = {0: g, 1: g / (1 + calpha ** 2), 2: g / (1 + calpha)}[rescale]
      self._reset_grad(new_grads)
      return res.x

  classes = {'ew': lw.EW, 'mgda': lw.MGDA, 'pcgrad': lw.PCGrad, 'cagrad': CAGradAnyT,
             'imtl_g': lw.IMTL}
  return types.SimpleNamespace(architecture=architecture, weighting=lw, classes=classes,
                               original_cagrad=lw.CAGrad)


def _zero_grad_kept(self):
  """Shim 2: zero the shared gradients in place, as torch < 2 did (see the docstring)."""
  for p in self.get_share_params():
    if p.grad is not None:
      p.grad.zero_()


def shim_checks(peers: Peers) -> dict:
  """Whether each LibMTL shim is still needed: the unshimmed code, run on a tiny problem."""
  if peers.libmtl is None:
    return {}
  torch = peers.torch
  out = {}
  cmd = [sys.executable, '-c', 'import LibMTL']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  last = (proc.stderr.strip().splitlines() or [''])[-1]
  out['import'] = {'needed': proc.returncode != 0, 'unshimmed': last or 'imports'}
  jac = torch.randn(4, 6)
  for name, cls, kwargs, shim in (
      ('zero_grad (MGDA)', peers.libmtl.weighting.MGDA, {'mgda_gn': 'none'}, 'zero_grad'),
      ('zero_grad (PCGrad)', peers.libmtl.weighting.PCGrad, {}, 'zero_grad'),
      ('cagrad (T=4)', peers.libmtl.original_cagrad, {'calpha': 0.5, 'rescale': 1}, 'cagrad')):
    probe = _libmtl_probe(peers, cls, jac, keep_grads=(shim != 'zero_grad'))
    try:
      probe.backward(probe.jac @ probe.theta, **kwargs)
      out[name] = {'needed': False, 'unshimmed': 'ran'}
    except Exception as e:
      out[name] = {'needed': True, 'unshimmed': f'{type(e).__name__}: {e}'[:200]}
  return out


def _libmtl_probe(peers: Peers, cls, jac, keep_grads: bool = True):
  """A LibMTL weighting whose 'model' has one shared parameter theta and losses J theta, so
  that the per-task gradients it computes are exactly the rows of ``jac``."""
  torch = peers.torch

  class Probe(cls):
    def __init__(self):
      super().__init__()
      self.task_num, self.device, self.rep_grad = jac.shape[0], torch.device('cpu'), False
      self.encoder = torch.nn.Module()
      self.encoder.theta = torch.nn.Parameter(torch.zeros(jac.shape[1]))
      self.theta, self.jac = self.encoder.theta, jac
      self.init_param()

    def get_share_params(self):
      return self.encoder.parameters()

    def zero_grad_share_params(self):
      if keep_grads:
        _zero_grad_kept(self)
      else:  # LibMTL 1.1.5's own (AbsArchitecture.zero_grad_share_params)
        self.encoder.zero_grad()

  return Probe()


# --------------------------------------------------------------------------------- problem

def make_problem(num_tasks: int, batch: int, cfg: dict, seed: int):
  """Fixed random inputs and labels, and an initialisation in torch's nn.Linear convention
  (uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))), as numpy arrays shared by every library."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, cfg['input_dim']), dtype=np.float32)
  y = rng.integers(0, cfg['classes'], size=(batch, num_tasks)).astype(np.int64)
  dims = (cfg['input_dim'],) + tuple(cfg['hidden'])
  shared = []
  for fan_in, fan_out in zip(dims[:-1], dims[1:]):
    bound = 1 / np.sqrt(fan_in)
    shared.append((rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                   rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)))
  bound = 1 / np.sqrt(dims[-1])
  heads = (rng.uniform(-bound, bound, (num_tasks, cfg['classes'], dims[-1])).astype(np.float32),
           rng.uniform(-bound, bound, (num_tasks, cfg['classes'])).astype(np.float32))
  return x, y, shared, heads


# -------------------------------------------------------------------------------- mtl_jax

def jax_params(shared, heads):
  """{'shared': {w0, b0, ...}, 'heads': {w [T, d, C], b [T, C]}} from torch-layout arrays."""
  params = {'shared': {}, 'heads': {}}
  for i, (w, b) in enumerate(shared):
    params['shared'][f'w{i}'] = jnp.asarray(w.T)
    params['shared'][f'b{i}'] = jnp.asarray(b)
  params['heads']['w'] = jnp.asarray(np.transpose(heads[0], (0, 2, 1)))
  params['heads']['b'] = jnp.asarray(heads[1])
  return params


def representation_fn(params, x, y):
  del y
  h = x
  for i in range(len(params['shared']) // 2):
    h = jax.nn.relu(h @ params['shared'][f'w{i}'] + params['shared'][f'b{i}'])
  return h


def heads_fn(z_t, params, x, y):
  """[T] mean cross-entropies of the T linear heads, head t on z_t[t] (``stacked_heads``:
  z_t holds one copy of the representation per task)."""
  del x
  logits = jnp.einsum('tbd,tdc->tbc', z_t, params['heads']['w']) + params['heads']['b'][:, None]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y.T).mean(axis=1)


def losses_fn(params, x, y):
  z = representation_fn(params, x, y)
  return heads_fn(jnp.broadcast_to(z, (params['heads']['w'].shape[0],) + z.shape), params, x, y)


def shared_mask(params):
  return {'shared': jax.tree.map(lambda _: True, params['shared']),
          'heads': jax.tree.map(lambda _: False, params['heads'])}


def mtl_jax_method(name: str, peer: str = 'torchjd'):
  settings = (AS_LIBMTL if peer == 'libmtl' else AS_TORCHJD).get(name, {})
  return weighting.get(name, **settings)


def mtl_jax_step(method, mode: str, lr: float):
  """The whole train step, jitted with donated params / optimizer / method state."""
  vg = mtl_jax.mtl_value_and_grad(losses_fn, method, shared=shared_mask, mode=mode,
                                  representation_fn=representation_fn, heads_fn=heads_fn,
                                  stacked_heads=True)
  optimizer = optax.sgd(lr)

  def step(params, opt_state, method_state, key, x, y):
    key, sub = jax.random.split(key)
    losses, grads, _, method_state = vg(params, method_state, sub, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, method_state, key, losses

  return jax.jit(step, donate_argnums=(0, 1, 2)), optimizer


def jax_sum_step(lr: float):
  """The plain JAX baseline: value_and_grad of the summed losses + optax.sgd, jitted."""
  optimizer = optax.sgd(lr)

  def step(params, opt_state, method_state, key, x, y):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum(losses_fn(p, x, y)))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, method_state, key, loss

  return jax.jit(step, donate_argnums=(0, 1)), optimizer


def detect_modes() -> list:
  """['auto'] if mtl_value_and_grad accepts mode='auto' (traced on a tiny problem), else
  ['param']."""
  x, y, shared, heads = make_problem(2, 4, dict(input_dim=3, hidden=(4,), classes=2), 0)
  params = jax_params(shared, heads)
  method = weighting.get('upgrad')
  try:
    vg = mtl_jax.mtl_value_and_grad(losses_fn, method, shared=shared_mask, mode='auto',
                                    representation_fn=representation_fn, heads_fn=heads_fn,
                                    stacked_heads=True)
    jax.eval_shape(vg, params, method.init(2), jax.random.PRNGKey(0), x, y)
    return ['auto']
  except (ValueError, TypeError) as e:
    print(f"mtl_jax: mode='auto' not accepted ({str(e)[:120]}); using 'param'",
          file=sys.stderr)
    return ['param']


class JaxRunner:
  def __init__(self, step, optimizer, method_state, data, compiler_options=None):
    x, y, shared, heads = data
    self.step, self.compiler_options = step, compiler_options
    params = jax_params(shared, heads)
    self.state = [params, optimizer.init(params), method_state, jax.random.PRNGKey(1)]
    self.x, self.y = jnp.asarray(x), jnp.asarray(y)
    self.setup = {}

  def warmup(self, steps: int):
    start = time.perf_counter()
    lowered = self.step.lower(*self.state, self.x, self.y)
    mid = time.perf_counter()
    self.step = lowered.compile(self.compiler_options)
    end = time.perf_counter()
    self.setup = {'lower_s': mid - start, 'compile_s': end - mid, 'total_s': end - start}
    self.run(1)
    self.setup['first_step_s'] = self.run(1)
    return self.run(steps) / steps

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      *state, out = self.step(*self.state, self.x, self.y)
      self.state = state
    jax.block_until_ready((self.state, out))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------- torch

def torch_model(peers: Peers, shared, heads):
  """shared: Sequential(Linear, ReLU, ...); heads: ModuleList of T Linear (task_specific)."""
  torch = peers.torch
  nn = torch.nn
  layers = []
  for w, b in shared:
    linear = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(w))
      linear.bias.copy_(torch.from_numpy(b))
    layers += [linear, nn.ReLU()]
  head_list = []
  for w, b in zip(*heads):
    linear = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(w))
      linear.bias.copy_(torch.from_numpy(b))
    head_list.append(linear)
  return nn.Sequential(*layers), nn.ModuleList(head_list)


class TorchRunner:
  def __init__(self, step):
    self.step = step
    self.setup = {}

  def warmup(self, steps: int):
    start = time.perf_counter()
    self.step()
    self.setup = {'first_step_s': time.perf_counter() - start}
    return self.run(steps) / steps

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    return time.perf_counter() - start


def torch_losses(peers, shared_module, head_modules, x, y):
  f = peers.torch.nn.functional
  features = shared_module(x)
  return features, [f.cross_entropy(h(features), y[:, t]) for t, h in enumerate(head_modules)]


def torch_sum_runner(peers, data, lr):
  torch = peers.torch
  x, y, shared, heads = data
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  shared_module, head_modules = torch_model(peers, shared, heads)
  opt = torch.optim.SGD([*shared_module.parameters(), *head_modules.parameters()], lr=lr)

  def step():
    _, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    torch.stack(losses).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def torchjd_aggregator(peers, name: str, num_tasks: int):
  agg = peers.torchjd.aggregation
  return {
      'ew': agg.Mean, 'mgda': agg.MGDA, 'upgrad': agg.UPGrad, 'dualproj': agg.DualProj,
      'cagrad': lambda: agg.CAGrad(c=CAGRAD_C), 'imtl_g': agg.IMTLG, 'pcgrad': agg.PCGrad,
      'aligned_mtl': agg.AlignedMTL,
      'nash_mtl': lambda: agg.NashMTL(n_tasks=num_tasks, max_norm=1.0,
                                      update_weights_every=1, optim_niter=20),
  }[name]()


def torchjd_weighting(peers, name: str):
  """The Gramian weighting for the autogram path; None where TorchJD has none (Nash-MTL)."""
  agg = peers.torchjd.aggregation
  make = {
      'ew': agg.MeanWeighting, 'mgda': agg.MGDAWeighting, 'upgrad': agg.UPGradWeighting,
      'dualproj': agg.DualProjWeighting, 'cagrad': lambda: agg.CAGradWeighting(c=CAGRAD_C),
      'imtl_g': agg.IMTLGWeighting, 'pcgrad': agg.PCGradWeighting,
      'aligned_mtl': agg.AlignedMTLWeighting,
  }.get(name)
  return make() if make else None


def torchjd_autojac_runner(peers, name, data, lr):
  """mtl_backward (Jacobian of the shared parameters, plain gradients for the heads) +
  jac_to_grad with the aggregator, SGD step: TorchJD's documented MTL loop."""
  torch = peers.torch
  x, y, shared, heads = data
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  shared_module, head_modules = torch_model(peers, shared, heads)
  shared_params = list(shared_module.parameters())
  opt = torch.optim.SGD([*shared_params, *head_modules.parameters()], lr=lr)
  aggregator = torchjd_aggregator(peers, name, y.shape[1])
  autojac = peers.torchjd.autojac

  def step():
    features, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    autojac.mtl_backward(losses, features=features)
    autojac.jac_to_grad(shared_params, aggregator)
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def torchjd_autogram_runner(peers, name, data, lr):
  """autogram Engine on the shared module (batch_dim=None: the losses are per-task batch
  means): Gramian of the shared parameters' Jacobian, weights from it, one backward of
  sum_t w_t L_t (so the heads get w_t grad L_t), SGD step: TorchJD's documented autogram loop."""
  torch = peers.torch
  weighting_ = torchjd_weighting(peers, name)
  if weighting_ is None:
    return None
  x, y, shared, heads = data
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  shared_module, head_modules = torch_model(peers, shared, heads)
  opt = torch.optim.SGD([*shared_module.parameters(), *head_modules.parameters()], lr=lr)
  engine = peers.torchjd.autogram.Engine(shared_module, batch_dim=None)

  def step():
    _, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    losses = torch.stack(losses)
    gramian = engine.compute_gramian(losses)
    losses.backward(weighting_(gramian))
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def libmtl_model(peers, name, shared, heads, num_tasks):
  """LibMTL's own model: HPS architecture x weighting class, as ``LibMTL.Trainer`` builds it
  (on the CPU: the Trainer itself hard-codes cuda:0), with shim 2."""
  torch = peers.torch
  shared_module, head_modules = torch_model(peers, shared, heads)
  names = [f't{t}' for t in range(num_tasks)]
  decoders = torch.nn.ModuleDict({n: h for n, h in zip(names, head_modules)})

  class MTLModel(peers.libmtl.architecture.HPS, peers.libmtl.classes[name]):
    def __init__(self):
      super().__init__(names, lambda: shared_module, decoders, False, False,
                       torch.device('cpu'))
      self.init_param()

    zero_grad_share_params = _zero_grad_kept

  return MTLModel(), names


def libmtl_runner(peers, name, data, lr):
  """LibMTL's training step (``Trainer.train``): zero_grad, forward, ``model.backward(losses,
  **weight_args)`` (one backward per task for the gradient methods), SGD step."""
  torch = peers.torch
  f = torch.nn.functional
  x, y, shared, heads = data
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  model, names = libmtl_model(peers, name, shared, heads, y.shape[1])
  opt = torch.optim.SGD(model.parameters(), lr=lr)
  kwargs = LIBMTL_KWARGS[name]

  def step():
    opt.zero_grad(set_to_none=True)
    preds = model(xt)
    losses = torch.stack([f.cross_entropy(preds[n], yt[:, t]) for t, n in enumerate(names)])
    model.backward(losses, **kwargs)
    opt.step()

  return TorchRunner(step)


# ------------------------------------------------------------------------------ timing

def build_runners(peers, data, methods, modes, lr, skip, compiler_options=None):
  """{name: (factory, meta)}; factories are called lazily (a failure skips the runner)."""
  num = data[1].shape[1]
  out = {}

  def jax_runner(method, mode):
    step, optimizer = mtl_jax_step(method, mode, lr)
    return JaxRunner(step, optimizer, method.init(num), data, compiler_options)

  out[JAX_SUM] = (lambda: JaxRunner(*jax_sum_step(lr), (), data, compiler_options),
                  {'lib': 'jax', 'method': None})
  if peers.torch is not None:
    out[TORCH_SUM] = (lambda: torch_sum_runner(peers, data, lr), {'lib': 'torch', 'method': None})
  for m in methods:
    method = mtl_jax_method(m)
    if num < method.min_tasks:
      continue
    for mode in modes:
      out[f'mtl_jax[{mode}] {m}'] = (lambda method=method, mode=mode: jax_runner(method, mode),
                                     {'lib': 'mtl_jax', 'mode': mode, 'method': m})
    if peers.torchjd is not None and 'torchjd' not in skip:
      out[f'torchjd autojac {m}'] = (lambda m=m: torchjd_autojac_runner(peers, m, data, lr),
                                     {'lib': 'torchjd', 'path': 'autojac', 'method': m})
      if torchjd_weighting(peers, m) is not None:
        out[f'torchjd autogram {m}'] = (
            lambda m=m: torchjd_autogram_runner(peers, m, data, lr),
            {'lib': 'torchjd', 'path': 'autogram', 'method': m})
    if peers.libmtl is not None and 'libmtl' not in skip and m in peers.libmtl.classes:
      out[f'libmtl {m}'] = (lambda m=m: libmtl_runner(peers, m, data, lr),
                            {'lib': 'libmtl', 'method': m})
  return out


def time_runners(runners: dict, args, rng) -> dict:
  """Warm up (compile) every runner, fix its steps per repeat, then ``args.repeats`` rounds
  over all of them in a fresh random order each; per-step ms of every round."""
  live, setup, steps, errors = {}, {}, {}, {}
  for name, (factory, _) in runners.items():
    print(f'  warming up {name}', file=sys.stderr, flush=True)
    try:
      runner = factory()
      per_step = runner.warmup(args.warmup)
    except Exception as e:  # report and skip: a peer that cannot run this configuration
      errors[name] = f'{type(e).__name__}: {e}'[:300]
      print(f'  SKIP {name}: {errors[name]}', file=sys.stderr, flush=True)
      continue
    live[name], setup[name] = runner, runner.setup
    steps[name] = int(max(1, min(args.max_steps, round(args.repeat_s / max(per_step, 1e-6)))))
  times = {name: [] for name in live}
  order = list(live)
  for r in range(args.repeats):
    rng.shuffle(order)
    for name in order:
      times[name].append(1e3 * live[name].run(steps[name]) / steps[name])
    print(f'  repeat {r + 1}/{args.repeats} done', file=sys.stderr, flush=True)
  return {'times_ms': times, 'steps': steps, 'setup': setup, 'errors': errors}


def summarize(timing: dict, methods, modes) -> dict:
  med = {n: statistics.median(t) for n, t in timing['times_ms'].items()}
  out = {'baselines_ms': {JAX_SUM: med.get(JAX_SUM), TORCH_SUM: med.get(TORCH_SUM)},
         'methods': {}}
  for m in methods:
    row = {'mtl_jax_ms': {mode: med.get(f'mtl_jax[{mode}] {m}') for mode in modes},
           'torchjd_autojac_ms': med.get(f'torchjd autojac {m}'),
           'torchjd_autogram_ms': med.get(f'torchjd autogram {m}'),
           'libmtl_ms': med.get(f'libmtl {m}')}
    tjd = [v for v in (row['torchjd_autojac_ms'], row['torchjd_autogram_ms']) if v is not None]
    row['torchjd_faster_ms'] = min(tjd) if tjd else None
    row['torchjd_faster_path'] = (None if not tjd else 'autojac' if
                                  row['torchjd_autojac_ms'] == min(tjd) else 'autogram')
    row['torchjd_over_mtl_jax'] = {
        mode: (row['torchjd_faster_ms'] / ms if ms and row['torchjd_faster_ms'] else None)
        for mode, ms in row['mtl_jax_ms'].items()}
    row['libmtl_over_mtl_jax'] = {
        mode: (row['libmtl_ms'] / ms if ms and row['libmtl_ms'] else None)
        for mode, ms in row['mtl_jax_ms'].items()}
    row['mtl_jax_over_jax_sum'] = {
        mode: (ms / med[JAX_SUM] if ms and med.get(JAX_SUM) else None)
        for mode, ms in row['mtl_jax_ms'].items()}
    row['gram_method'] = weighting.get(m).needs is weighting.Needs.GRAM
    out['methods'][m] = row
  return out


# --------------------------------------------------------------------------- agreement

def torch_jacobian(peers, data):
  """(J [T, P] float32, losses [T]) of the shared parameters at the initial point, in torch."""
  torch = peers.torch
  x, y, shared, heads = data
  shared_module, head_modules = torch_model(peers, shared, heads)
  params = list(shared_module.parameters())
  _, losses = torch_losses(peers, shared_module, head_modules, torch.from_numpy(x),
                           torch.from_numpy(y))
  rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params,
                                                                 retain_graph=True)])
          for loss in losses]
  return torch.stack(rows).detach(), torch.stack(losses).detach()


def objectives(name, jac64, d):
  """What each method optimises, evaluated at direction d (float64), where that helps."""
  g = jac64 @ d                                   # g_t . d
  norms = np.linalg.norm(jac64, axis=1)
  if name == 'mgda':       # the min-norm point of the convex hull: smaller is better
    return {'norm_d': float(np.linalg.norm(d))}
  if name in ('upgrad', 'dualproj'):  # in the dual cone: every cos(g_t, d) >= 0
    return {'min_cos': float(np.min(g / (norms * np.linalg.norm(d))))}
  if name == 'cagrad':     # maximises the worst improvement min_t g_t . d (given the ball)
    g0 = jac64.mean(0)
    return {'worst_gd_over_g0sq': float(np.min(g) / (g0 @ g0)),
            'dist_to_g0_over_g0': float(np.linalg.norm(d - g0) / np.linalg.norm(g0))}
  if name == 'imtl_g':     # equal projections on the unit gradients: spread 0
    p = g / norms
    return {'projection_spread': float((p.max() - p.min()) / abs(p.mean()))}
  if name == 'nash_mtl':   # alpha_t (G alpha)_t equal for all t (= 1 unclipped): spread 0
    gram = jac64 @ jac64.T
    alpha = np.linalg.lstsq(gram, g, rcond=None)[0]
    r = alpha * (gram @ alpha)
    return {'fixed_point_spread': float(np.std(r) / abs(np.mean(r))), 'norm_d': float(
        np.linalg.norm(d))}
  return {}


def agreement(peers, data, methods, draws: int) -> dict:
  """The aggregated directions of mtl_jax (weighting.combine, float32), TorchJD (the
  aggregator on the same J) and LibMTL (its weighting on a probe whose per-task gradients are
  the rows of J): relative difference, cosine and each direction's objective."""
  torch = peers.torch
  jac_t, losses_t = torch_jacobian(peers, data)
  jac, losses = jnp.asarray(jac_t.numpy()), jnp.asarray(losses_t.numpy())
  jac64 = jac_t.numpy().astype(np.float64)
  num = jac.shape[0]
  out = {'num_params': int(jac.shape[1]), 'pcgrad_draws': draws}

  def ours_fn(method):
    run = jax.jit(lambda j, l, k: weighting.combine(method, j, l, state=method.init(num),
                                                     key=k).direction)
    return lambda seed: np.asarray(run(jac, losses, jax.random.PRNGKey(seed)), np.float64)

  def mean_draws(fn, start):
    return np.mean([fn(start + k) for k in range(draws)], axis=0)

  def compare(name, d_ours, d_peer):
    diff = float(np.linalg.norm(d_ours - d_peer) / max(np.linalg.norm(d_peer), 1e-30))
    cos = float(d_ours @ d_peer / max(np.linalg.norm(d_ours) * np.linalg.norm(d_peer), 1e-30))
    return {'rel_diff': diff, 'cos': cos, 'objective_mtl_jax': objectives(name, jac64, d_ours),
            'objective_peer': objectives(name, jac64, d_peer)}

  for m in methods:
    row = {}
    if num < weighting.get(m).min_tasks:
      continue
    random_ = weighting.get(m).random
    if peers.torchjd is not None:
      ours = ours_fn(mtl_jax_method(m, 'torchjd'))
      scale = TORCHJD_SCALE.get(m, lambda n: 1.0)(num)

      def tjd(seed, m=m):
        torch.manual_seed(seed)
        return torchjd_aggregator(peers, m, num)(jac_t).double().numpy()

      try:
        if random_:
          d_ours = mean_draws(ours, 0) * scale
          row['torchjd'] = compare(m, d_ours, mean_draws(tjd, 0))
          row['torchjd']['self_rel_diff'] = float(np.linalg.norm(
              d_ours - mean_draws(ours, draws) * scale) / np.linalg.norm(d_ours))
        else:
          row['torchjd'] = compare(m, ours(0) * scale, tjd(0))
        row['torchjd']['scale'] = scale
      except Exception as e:
        row['torchjd'] = {'error': f'{type(e).__name__}: {e}'[:300]}
    if peers.libmtl is not None and m in peers.libmtl.classes:
      ours = ours_fn(mtl_jax_method(m, 'libmtl'))

      def lib(seed, m=m):
        random.seed(seed)
        probe = _libmtl_probe(peers, peers.libmtl.classes[m], jac_t)
        probe.backward(probe.jac @ probe.theta, **LIBMTL_KWARGS[m])
        return probe.theta.grad.double().numpy()

      try:
        if random_:
          row['libmtl'] = compare(m, mean_draws(ours, 0), mean_draws(lib, 0))
        else:
          row['libmtl'] = compare(m, ours(0), lib(0))
      except Exception as e:
        row['libmtl'] = {'error': f'{type(e).__name__}: {e}'[:300]}
    out[m] = row
  return out


# ------------------------------------------------------------------------------- report

def machine_info(peers: Peers, threads: int) -> dict:
  import flax
  import jaxlib
  device = jax.devices()[0]
  info = {
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
      'optax': optax.__version__, 'numpy': np.__version__, 'python': platform.python_version(),
      'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
      'backend': jax.default_backend(), 'device': f'{device.platform}:{device.device_kind}',
      'cpu_count': os.cpu_count(),
      'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'torch_threads': threads if peers.torch is not None else None,
      'peer_versions': peers.versions(), 'peers_missing': peers.missing,
  }
  if peers.torch is not None:
    info['torch_interop_threads'] = peers.torch.get_num_interop_threads()
  return info


def _ms(v):
  return f'{v:.2f}' if v is not None else '-'


def _x(v):
  return f'{v:.2f}x' if v is not None else '-'


def print_tables(report: dict) -> None:
  modes = report['config']['modes']
  for key, res in report['results'].items():
    base = res['summary']['baselines_ms']
    print(f"\n{key}: ms per step (median of {report['config']['repeats']}); "
          f"jax (sum) {_ms(base[JAX_SUM])}, torch (sum) {_ms(base[TORCH_SUM])}")
    head = f"{'method':<12}" + ''.join(f"{'mtl_jax[' + mode + ']':>16}{'x sum':>7}"
                                       for mode in modes)
    head += f"{'TJD autojac':>12}{'autogram':>10}{'TJD fast':>10}{'LibMTL':>9}"
    head += ''.join(f"{'TJD/' + mode:>11}{'Lib/' + mode:>11}" for mode in modes)
    head += f"{'cmp s':>7}"
    print(head)
    for m, row in res['summary']['methods'].items():
      line = f'{m:<12}'
      for mode in modes:
        line += f"{_ms(row['mtl_jax_ms'][mode]):>16}{_x(row['mtl_jax_over_jax_sum'][mode]):>7}"
      fast = row['torchjd_faster_path']
      aj = _ms(row['torchjd_autojac_ms']) + ('*' if fast == 'autojac' else ' ')
      ag = _ms(row['torchjd_autogram_ms']) + ('*' if fast == 'autogram' else ' ')
      line += f"{aj:>12}{ag:>10}{_ms(row['torchjd_faster_ms']):>10}{_ms(row['libmtl_ms']):>9}"
      for mode in modes:
        line += f"{_x(row['torchjd_over_mtl_jax'][mode]):>11}"
        line += f"{_x(row['libmtl_over_mtl_jax'][mode]):>11}"
      setup = res['timing']['setup'].get(f'mtl_jax[{modes[0]}] {m}', {})
      line += f"{setup.get('total_s', float('nan')):>7.1f}"
      print(line)
    for name, err in res['timing']['errors'].items():
      print(f'  skipped {name}: {err}')
  print("\n(ms per step; '*' and 'TJD fast': TorchJD's faster path; 'TJD/<mode>': TorchJD's "
        "faster path / mtl_jax, 'Lib/<mode>': LibMTL / mtl_jax (> 1: mtl_jax faster); 'x sum': "
        "mtl_jax / the plain JAX step; 'cmp s': lower + compile of the first mode's step)")
  for key, res in report['results'].items():
    if 'agreement' not in res:
      continue
    print(f"\nagreement on the same J ({key}, {res['agreement']['num_params']} shared params, "
          f"float32): relative difference |d_mtl_jax - d_peer| / |d_peer|, and objectives")
    for m, row in res['agreement'].items():
      if not isinstance(row, dict) or not row:
        continue
      parts = []
      for peer in ('torchjd', 'libmtl'):
        r = row.get(peer)
        if r is None:
          continue
        if 'error' in r:
          parts.append(f"{peer}: {r['error'][:60]}")
          continue
        obj = ', '.join(f"{k} {r['objective_mtl_jax'][k]:.5g}/{r['objective_peer'][k]:.5g}"
                        for k in r['objective_mtl_jax'])
        extra = f" (self {r['self_rel_diff']:.2g})" if 'self_rel_diff' in r else ''
        parts.append(f"{peer} {r['rel_diff']:.2e}{extra}" + (f' [{obj}]' if obj else ''))
      print(f'  {m:<12}' + ' | '.join(parts))
  if any('agreement' in res for res in report['results'].values()):
    print('  (objectives: mtl_jax/peer; pcgrad: means of the random draws, self = two mtl_jax '
          'means)')
  if report['targets']:
    passed = sum(t['pass'] for t in report['targets'])
    print(f"\ntarget: every Gram method >= {TARGET}x faster than TorchJD's faster path at "
          f"T in {TARGET_TASKS}, batch {TARGET_BATCH}: {passed}/{len(report['targets'])} pass")
    for t in report['targets']:
      if not t['pass']:
        print(f"  below: T={t['T']} {t['method']} mode {t['mode']}: {t['value']:.2f}x")


def check_targets(results: dict) -> list:
  targets = []
  for res in results.values():
    if res['num_tasks'] not in TARGET_TASKS or res['batch'] != TARGET_BATCH:
      continue
    for m, row in res['summary']['methods'].items():
      if not row['gram_method'] or row['torchjd_faster_ms'] is None:
        continue
      for mode, value in row['torchjd_over_mtl_jax'].items():
        if value is not None:
          targets.append({'T': res['num_tasks'], 'batch': res['batch'], 'method': m,
                          'mode': mode, 'value': value, 'bound': TARGET,
                          'pass': value >= TARGET})
  return targets


def main(argv=None):
  """Protocol.

  Model (every library): a shared MLP input-256-256 (ReLU after each layer) and T linear heads
  of 10 classes on the 256-d representation; per-task loss: mean cross-entropy over the batch;
  plain SGD (lr ``--lr``).  One fixed batch of random N(0, 1) inputs and uniform labels, and one
  initialisation (torch's nn.Linear rule), the same numbers on every side.  mtl_jax: plain JAX
  functions through ``mtl_jax.mtl_value_and_grad(losses_fn, method, shared=mask, mode=...,
  representation_fn=..., heads_fn=...)`` and ``optax.sgd``, the whole step in one ``jax.jit``
  with donated params, optimizer and method state, once per ``--modes`` entry.  TorchJD: both
  documented paths, (a) ``autojac.mtl_backward`` + ``autojac.jac_to_grad(shared params,
  aggregator)`` and (b) the ``autogram.Engine`` on the shared module (Gramian, weights,
  ``losses.backward(weights)``); its faster path counts.  LibMTL: its HPS model x weighting class,
  stepped as its Trainer does (with the shims of the module docstring).  Baselines: the plain
  JAX step (``value_and_grad`` of the summed losses + optax.sgd, jitted) and the plain torch
  step (summed losses, backward, SGD).  Methods and settings: ``AS_TORCHJD`` / ``AS_LIBMTL``.

  Timing: every implementation is built and warmed up first (JAX: lower + compile, reported,
  then two steps; torch: the first step's time is reported); each gets a fixed number of
  back-to-back steps per repeat (about ``--repeat-s`` seconds, at most ``--max-steps``); then
  ``--repeats`` rounds over all implementations in a fresh random order each.  Per step: the
  median over rounds; ratios are of medians from the same run.  torch runs on
  ``--threads`` intra-op threads (``torch.set_num_threads``); XLA's CPU backend uses the cores
  the process may run on (``cpus_usable`` in the JSON: pin with ``taskset`` to compare on a
  larger machine).

  Agreement (per T, at the first batch size): J = the Jacobian of the T losses w.r.t. the
  shared parameters at the initial point, from torch (float32).  The same J goes to
  ``mtl_jax.weighting.combine`` (float32, jitted), to TorchJD's aggregator and to LibMTL's
  weighting (its ``backward`` on a probe whose per-task gradients are J's rows), each with the
  settings matched to that peer.  Reported: |d_mtl_jax - d_peer| / |d_peer|, the cosine, and
  where it helps each direction's objective (MGDA |d|; UPGrad / DualProj min_t cos(g_t, d);
  CAGrad min_t g_t.d / |g0|^2; IMTL-G spread of the projections on the unit gradients;
  Nash-MTL spread of alpha_t (G alpha)_t).  PCGrad is random: means over ``--pcgrad-draws``
  draws on each side, with mtl_jax's own draw-to-draw difference for scale.  Nothing is
  asserted.
  """
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default=None, help='comma-separated T (default 2,8,32)')
  parser.add_argument('--batch', default=None, help='comma-separated batch sizes (64,256)')
  parser.add_argument('--methods', default=None,
                      help=f"comma-separated mtl_jax names (default: {','.join(METHODS)})")
  parser.add_argument('--modes', default=None,
                      help="mtl_jax engine modes (default 'auto' if accepted, else 'param')")
  parser.add_argument('--repeats', type=int, default=None, help='timed rounds (median; 7)')
  parser.add_argument('--repeat-s', type=float, default=None,
                      help='target seconds of one implementation per round (0.25)')
  parser.add_argument('--max-steps', type=int, default=20, help='steps per round at most')
  parser.add_argument('--warmup', type=int, default=2, help='steps after the first one')
  parser.add_argument('--lr', type=float, default=1e-2)
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--pcgrad-draws', type=int, default=16)
  parser.add_argument('--skip', default='', help="peers to leave out: 'torchjd', 'libmtl'")
  parser.add_argument('--no-agreement', dest='agreement', action='store_false')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: input 64, hidden 32-32, T 4, batch 16, 2 repeats, '
                           'XLA backend optimisation level 0')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    'results', 'peers.json'))
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  args.tasks = args.tasks or ('4' if args.quick else '2,8,32')
  args.batch = args.batch or ('16' if args.quick else '64,256')
  args.repeats = args.repeats or (2 if args.quick else 7)
  args.repeat_s = args.repeat_s or (0.02 if args.quick else 0.25)
  methods = (args.methods or ','.join(METHODS)).split(',')
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f'methods {unknown} are not shared with a peer; choose from {METHODS}')
  skip = {s for s in args.skip.split(',') if s}

  # TorchJD's Nash-MTL problem is not DPP: cvxpy says so at every solve (and recompiles it,
  # which is part of TorchJD's step time); silence the repeated message, not the cost.
  warnings.filterwarnings('ignore', message='You are solving a parameterized problem that is '
                          'not DPP')
  peers = Peers()
  for lib, why in peers.missing.items():
    print(f'peers: {lib} skipped: {why}', file=sys.stderr)
  if peers.torch is not None:
    peers.torch.set_num_threads(args.threads)
  modes = args.modes.split(',') if args.modes else detect_modes()
  shims = shim_checks(peers) if 'libmtl' not in skip else {}

  start, load_before = time.time(), os.getloadavg()
  rng = np.random.default_rng(args.seed)
  results = {}
  tasks = [int(t) for t in args.tasks.split(',')]
  batches = [int(b) for b in args.batch.split(',')]
  for num in tasks:
    for batch in batches:
      key = f'T={num} B={batch}'
      print(key, file=sys.stderr, flush=True)
      data = make_problem(num, batch, cfg, args.seed)
      runners = build_runners(peers, data, methods, modes, args.lr, skip,
                              QUICK_COMPILE if args.quick else None)
      phase = time.time()
      timing = time_runners(runners, args, rng)
      results[key] = {'num_tasks': num, 'batch': batch, 'timing': timing,
                      'summary': summarize(timing, methods, modes),
                      'runners': {n: meta for n, (_, meta) in runners.items()},
                      'phase_s': time.time() - phase}
      if args.agreement and batch == batches[0] and peers.torch is not None:
        phase = time.time()
        results[key]['agreement'] = agreement(peers, data, methods, args.pcgrad_draws)
        results[key]['agreement_s'] = time.time() - phase
  report = {
      'config': {**cfg, 'hidden': list(cfg['hidden']), 'tasks': tasks, 'batch': batches,
                 'methods': methods, 'modes': modes, 'repeats': args.repeats,
                 'repeat_s': args.repeat_s, 'max_steps': args.max_steps, 'warmup': args.warmup,
                 'lr': args.lr, 'optimizer': 'sgd', 'threads': args.threads,
                 'quick': args.quick, 'seed': args.seed, 'skip': sorted(skip),
                 'as_torchjd': AS_TORCHJD, 'as_libmtl': AS_LIBMTL,
                 'libmtl_kwargs': LIBMTL_KWARGS, 'pcgrad_draws': args.pcgrad_draws},
      'machine': {**machine_info(peers, args.threads), 'loadavg_before': load_before,
                  'loadavg_after': os.getloadavg(), 'wall_s': time.time() - start},
      'libmtl_shims': shims,
      'results': results,
  }
  report['targets'] = check_targets(results)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print_tables(report)
  if shims:
    print('\nLibMTL shims (unshimmed behaviour on this install): ' + '; '.join(
        f"{k}: {'needed' if v['needed'] else 'not needed'}" for k, v in shims.items()))
  print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"wrote {args.out} ({report['machine']['wall_s']:.0f}s)")


if __name__ == '__main__':
  main()
