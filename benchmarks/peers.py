"""Step time and agreement of mtl_jax against TorchJD and LibMTL, method by method (CPU).

    .venv/bin/pip install -e '.[peers]'     # torch 2.13.0 (CPU), torchjd[full] 0.18.0, LibMTL 1.1.5
    .venv/bin/python benchmarks/peers.py                         # full run (see README)
    .venv/bin/python benchmarks/peers.py --quick                 # smoke test, small model
    .venv/bin/python benchmarks/peers.py --tasks 8 --batch 64 --methods upgrad --modes param,gram

Writes ``--out`` (JSON, default ``benchmarks/results/peers.json``) and prints the tables.
A library that is not installed is skipped with a message (mtl_jax is always measured).
The protocol is ``main``'s docstring; the methods and the settings matched to each peer are
``METHODS``, ``AS_TORCHJD``, ``AS_LIBMTL`` and ``LIBMTL_KWARGS`` (tabled in
benchmarks/README.md).  torch runs on ``--threads`` intra-op threads (default
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
  resets the shared gradients (MGDA, PCGrad, CAGrad, IMTL, GradVac).  The shim overrides
  ``zero_grad_share_params`` with ``zero_grad(set_to_none=False)`` (the torch < 2 behaviour).
* CAGrad: ``LibMTL.weighting.CAGrad.backward`` builds its objective with ``x.reshape(1, 3)``,
  so it runs only with 3 tasks.  ``_LibMTLCAGrad`` is the same procedure (same objective, same
  ``scipy.optimize.minimize`` call, same rescaling) with the number of tasks read from the model.
"""

import argparse
import contextlib
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
# the draw functions that the methods' docstrings name, to hand the peers the same draws
from mtl_jax._src.weighting.methods.graddrop import graddrop_uniform
from mtl_jax._src.weighting.methods.gradvac import gradvac_orders

FULL = dict(input_dim=784, hidden=(256, 256), classes=10)
QUICK = dict(input_dim=64, hidden=(32, 32), classes=10)
# The methods of issue 13 (the step-time target covers these) and those of issue 14 that
# TorchJD 0.18.0 or LibMTL 1.1.5 also has.
TARGET_METHODS = ('ew', 'mgda', 'upgrad', 'dualproj', 'cagrad', 'nash_mtl', 'imtl_g', 'pcgrad',
                  'aligned_mtl')
METHODS = TARGET_METHODS + (
    'gradvac', 'graddrop', 'fairgrad', 'excess_mtl', 'con_fig', 'pcd', 'krum', 'trimmed_mean',
    'cr_mogm', 'modo', 'sdmgrad', 'random', 'stch', 'imtl_l', 'cosmos', 'pbi', 'imtl')
TARGET = 2.5                  # every Gram method >= 2.5x faster than TorchJD's faster path
TARGET_TASKS = (8, 32)
TARGET_BATCH = 64
CAGRAD_C = 0.5
KRUM_BYZANTINE = 0            # TorchJD's Krum has none; mtl_jax's; needs T >= 3 (T = 2 skipped)
TRIM_NUMBER = 1               # TorchJD's TrimmedMean has no default; needs T >= 3
FAIRGRAD_ALPHA = 1.0          # TorchJD's FairGrad has no default; the authors' and mtl_jax's
SCALES_LR = 0.025             # Adam of IMTL-L's log-scales (mtl_jax's own; peers: given to it)
JAX_SUM, TORCH_SUM = 'jax (sum)', 'torch (sum)'
QUICK_COMPILE = {'xla_backend_optimization_level': 0}   # --quick only: compile fast (as tests)

# mtl_jax settings matched to each peer (the peers' defaults; see the README for conventions).
# TorchJD: UPGrad / DualProj: QP on G / tr G + 1e-4 I (norm_eps = reg_eps = 1e-4), weights of
# the mean (match_sum=False); MGDA: simplex weights; CAGrad(c=0.5), no rescaling; Nash-MTL:
# max_norm 1, 20 iterations, every step; IMTL-G: weights summing to 1; PCGrad: sum of the
# projected gradients; Aligned-MTL: TorchJD's B (1/T) is mtl_jax's B 1 / T (scale below).
# Issue 14: TorchJD's defaults where it has them, weights as TorchJD returns them (simplex or
# sum 1: match_sum=False); where it has none (Krum, TrimmedMean, FairGrad, COSMOS, PBI, STCH)
# mtl_jax's defaults are given to both.
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
    'gradvac': dict(beta=0.5, eps=1e-8),
    'graddrop': dict(leak=0.0),
    'fairgrad': dict(alpha=FAIRGRAD_ALPHA, match_sum=False),
    'excess_mtl': dict(robust_step_size=1.0, n_warmup_steps=0, update_on_first_call=True,
                       match_sum=False),
    'con_fig': {},
    'pcd': dict(tau=0.02, beta=0.999, eps=1e-8),
    'krum': dict(n_byzantine=KRUM_BYZANTINE, n_selected=1),
    'trimmed_mean': dict(trim_number=TRIM_NUMBER),
    'cr_mogm': dict(base='mgda', alpha=0.9, base_hparams={'match_sum': False}),
    'modo': dict(gamma=0.1, rho=0.1, num_batches=3, match_sum=False),
    'sdmgrad': dict(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3, match_sum=False),
    'random': dict(match_sum=False),
    'stch': dict(mu=1.0),
    'imtl_l': dict(lr=SCALES_LR),
    'cosmos': dict(lambda_=2.0),
    'pbi': dict(theta=5.0),
}
# d_mtl_jax * scale is compared with d_torchjd
TORCHJD_SCALE = {'aligned_mtl': lambda num: 1.0 / num}
# LibMTL 1.1.5: EW sums the losses; MGDA mgda_gn='none', weights on the simplex; CAGrad
# calpha=0.5, rescale=1 (its defaults), mean-gradient scale; IMTL's weights sum to 1 (its
# IMTL-L loss scales start at 0 and do not change the gradients of the first step); PCGrad sum.
# Issue 14: GradVac beta 0.5 without eps; GradDrop leak 0 on the representation gradients
# (rep_grad=True, its only mode); IMTL (hybrid) weights summing to 1, its scales stepped by
# Adam(0.025) in the agreement; RLW dist='Normal' (softmax of N(0, 1): mtl_jax's 'random').
AS_LIBMTL = {
    'ew': dict(reduction='sum'),
    'mgda': dict(normalization='none', match_sum=False),
    'cagrad': dict(c=CAGRAD_C, rescale=1, match_sum=False),
    'imtl_g': dict(match_sum=False),
    'pcgrad': dict(reduction='sum'),
    'gradvac': dict(beta=0.5, eps=0.0),
    'graddrop': dict(leak=0.0),
    'imtl': dict(lr=SCALES_LR, match_sum=False),
    'random': dict(match_sum=False),
}
LIBMTL_KWARGS = {'ew': {}, 'mgda': {'mgda_gn': 'none'}, 'pcgrad': {},
                 'cagrad': {'calpha': CAGRAD_C, 'rescale': 1}, 'imtl_g': {},
                 'gradvac': {'beta': 0.5}, 'graddrop': {'leak': 0.0}, 'imtl': {},
                 'random': {'dist': 'Normal'}}
LIBMTL_REP_GRAD = ('graddrop',)         # LibMTL runs these on representation gradients only
# Random methods whose draws are injected into the peer (the same draws on both sides);
# other random methods (PCGrad) are compared through means over draws.
SAME_DRAWS = ('gradvac', 'graddrop', 'random')
FLOAT64_CHECK = 1e-3   # above this difference from TorchJD, TorchJD is rerun in float64


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
      from torchjd import aggregation, autogram, autojac, scalarization
      self.torchjd = types.SimpleNamespace(aggregation=aggregation, autogram=autogram,
                                           autojac=autojac, scalarization=scalarization)
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
             'imtl_g': lw.IMTL, 'imtl': lw.IMTL, 'gradvac': lw.GradVac,
             'graddrop': lw.GradDrop, 'random': lw.RLW}
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
      ('zero_grad (GradVac)', peers.libmtl.weighting.GradVac, {'beta': 0.5}, 'zero_grad'),
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


def _libmtl_rep_probe(peers: Peers, cls, rows, z):
  """A LibMTL weighting on representation gradients (``rep_grad=True``, as LibMTL's HPS sets
  it up: one copy of z per task): task t's loss is sum(rows[t] * z_t), so its
  gradient with respect to z_t is exactly ``rows[t]`` ([T, B, d]); the combined cotangent of
  z ends up in ``probe.z.grad``.  ``probe.set(rows, z)`` feeds the next step."""
  torch = peers.torch

  class RepProbe(cls):
    def __init__(self):
      super().__init__()
      self.task_num, self.device, self.rep_grad = rows.shape[0], torch.device('cpu'), True
      self.task_name = [f't{t}' for t in range(rows.shape[0])]
      self.init_param()
      self.set(rows, z)

    def set(self, new_rows, new_z):
      self.z = new_z.detach().clone().requires_grad_()
      self.rep = {n: self.z for n in self.task_name}            # HPS: a dict of one z
      self.rep_tasks = {n: new_z.detach().clone().requires_grad_() for n in self.task_name}
      self.losses = torch.stack([(new_rows[t] * self.rep_tasks[n]).sum()
                                 for t, n in enumerate(self.task_name)])

  return RepProbe()


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
  """The method with the settings matched to ``peer`` (to the other peer's where only that one
  has it: the timed step uses TorchJD's settings, LibMTL's for IMTL)."""
  first, other = (AS_LIBMTL, AS_TORCHJD) if peer == 'libmtl' else (AS_TORCHJD, AS_LIBMTL)
  return weighting.get(name, **first.get(name, other.get(name, {})))


def init_state(method, num: int, shared):
  """``method.init(num)``, or ``method.init(num, shared)`` for a method whose state is sized by
  the shared parameters (``state_like_params``: ExcessMTL's accumulated squares)."""
  return method.init(num, shared) if method.state_like_params else method.init(num)


def skip_reason(name: str, num: int, peer: str = 'torchjd'):
  """Why mtl_jax's method (matched to ``peer``) cannot run with ``num`` tasks, or None."""
  method = mtl_jax_method(name, peer)
  if num < method.min_tasks:
    return f'{name} needs at least {method.min_tasks} tasks'
  try:
    jax.eval_shape(lambda: init_state(method, num, jax.ShapeDtypeStruct((8,), jnp.float32)))
  except ValueError as e:  # e.g. trimmed_mean(trim_number=1) at T = 2
    return str(e)
  return None


def sub_batch_data(data, method):
  """The problem with its batch cut to a multiple of the method's sub-batches (63 of 64 for
  MoDo and SDMGrad), the same cut on every side; the problem itself otherwise."""
  k = method.sub_batches
  if k == 1:
    return data
  x, y, shared, heads = data
  n = (x.shape[0] // k) * k
  return x[:n], y[:n], shared, heads


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


def torch_setup(peers, data, lr):
  """The batch as tensors, the torch model at the shared initialisation and SGD over all of
  it: ``(xt, yt, shared_module, head_modules, opt)``."""
  torch = peers.torch
  x, y, shared, heads = data
  shared_module, head_modules = torch_model(peers, shared, heads)
  opt = torch.optim.SGD([*shared_module.parameters(), *head_modules.parameters()], lr=lr)
  return torch.from_numpy(x), torch.from_numpy(y), shared_module, head_modules, opt


def torch_sum_runner(peers, data, lr):
  torch = peers.torch
  xt, yt, shared_module, head_modules, opt = torch_setup(peers, data, lr)

  def step():
    _, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    torch.stack(losses).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def torchjd_aggregator(peers, name: str, num_tasks: int):
  """TorchJD's aggregator (the autojac path); None where it has none (MoDo, SDMGrad: a matrix
  weighting of J_1 J_2^T; STCH, IMTL-L, COSMOS, PBI: scalarizers; IMTL)."""
  agg = peers.torchjd.aggregation
  make = {
      'ew': agg.Mean, 'mgda': agg.MGDA, 'upgrad': agg.UPGrad, 'dualproj': agg.DualProj,
      'cagrad': lambda: agg.CAGrad(c=CAGRAD_C), 'imtl_g': agg.IMTLG, 'pcgrad': agg.PCGrad,
      'aligned_mtl': agg.AlignedMTL,
      'nash_mtl': lambda: agg.NashMTL(n_tasks=num_tasks, max_norm=1.0,
                                      update_weights_every=1, optim_niter=20),
      'gradvac': lambda: agg.GradVac(beta=0.5, eps=1e-8), 'graddrop': agg.GradDrop,
      'fairgrad': lambda: agg.FairGrad(alpha=FAIRGRAD_ALPHA),
      'excess_mtl': lambda: agg.ExcessMTL(robust_step_size=1.0, n_warmup_steps=0),
      'con_fig': agg.ConFIG, 'pcd': lambda: agg.PCD(tau=0.02, beta=0.999, eps=1e-8),
      'krum': lambda: agg.Krum(n_byzantine=KRUM_BYZANTINE, n_selected=1),
      'trimmed_mean': lambda: agg.TrimmedMean(trim_number=TRIM_NUMBER),
      'cr_mogm': lambda: agg.GramianWeightedAggregator(torchjd_weighting(peers, 'cr_mogm')),
      'random': agg.Random,
  }.get(name)
  return make() if make else None


def torchjd_weighting(peers, name: str):
  """The Gramian weighting for the autogram path; None where TorchJD has none (Nash-MTL,
  GradDrop, ConFIG, TrimmedMean, ExcessMTL and Random weigh the Jacobian itself)."""
  agg = peers.torchjd.aggregation
  make = {
      'ew': agg.MeanWeighting, 'mgda': agg.MGDAWeighting, 'upgrad': agg.UPGradWeighting,
      'dualproj': agg.DualProjWeighting, 'cagrad': lambda: agg.CAGradWeighting(c=CAGRAD_C),
      'imtl_g': agg.IMTLGWeighting, 'pcgrad': agg.PCGradWeighting,
      'aligned_mtl': agg.AlignedMTLWeighting,
      'gradvac': lambda: agg.GradVacWeighting(beta=0.5, eps=1e-8),
      'fairgrad': lambda: agg.FairGradWeighting(alpha=FAIRGRAD_ALPHA),
      'pcd': lambda: agg.PCDWeighting(tau=0.02, beta=0.999, eps=1e-8),
      'krum': lambda: agg.KrumWeighting(n_byzantine=KRUM_BYZANTINE, n_selected=1),
      'cr_mogm': lambda: agg.CRMOGMWeighting(agg.MGDAWeighting(), alpha=0.9),
  }.get(name)
  return make() if make else None


def torchjd_cross_weighting(peers, name: str):
  """MoDo / SDMGrad: TorchJD's weighting of A = J_1 J_2^T (two independent sub-batches)."""
  agg = peers.torchjd.aggregation
  make = {'modo': lambda: agg.MoDoWeighting(gamma=0.1, rho=0.1),
          'sdmgrad': lambda: agg.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20,
                                                  lambda_=0.3)}.get(name)
  return make() if make else None


def torchjd_scalarizer(peers, name: str, num_tasks: int):
  """TorchJD's scalarizer (losses -> scalar, one backward); None where it has none.  COSMOS and
  PBI have no default preference: 1/T each (mtl_jax's default), as STCH's own default."""
  sc, torch = peers.torchjd.scalarization, peers.torch
  uniform = torch.full((num_tasks,), 1.0 / num_tasks)
  make = {'random': sc.Random, 'stch': lambda: sc.STCH(mu=1.0),
          'imtl_l': lambda: sc.IMTLL(num_tasks),
          'cosmos': lambda: sc.COSMOS(lambda_=2.0, weights=uniform),
          'pbi': lambda: sc.PBI(theta=5.0, weights=uniform)}.get(name)
  return make() if make else None


def torchjd_has(peers, name: str) -> bool:
  """Whether TorchJD 0.18 has the method (aggregator, scalarizer or sub-batch weighting)."""
  if peers.torchjd is None:
    return False
  return any(make is not None for make in (
      torchjd_aggregator(peers, name, 4), torchjd_scalarizer(peers, name, 4),
      torchjd_cross_weighting(peers, name)))


def torchjd_autojac_runner(peers, name, data, lr):
  """mtl_backward (Jacobian of the shared parameters, plain gradients for the heads) +
  jac_to_grad with the aggregator, SGD step: TorchJD's documented MTL loop."""
  xt, yt, shared_module, head_modules, opt = torch_setup(peers, data, lr)
  shared_params = list(shared_module.parameters())
  aggregator = torchjd_aggregator(peers, name, yt.shape[1])
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
  xt, yt, shared_module, head_modules, opt = torch_setup(peers, data, lr)
  engine = peers.torchjd.autogram.Engine(shared_module, batch_dim=None)

  def step():
    _, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    losses = torch.stack(losses)
    gramian = engine.compute_gramian(losses)
    losses.backward(weighting_(gramian))
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def torchjd_scalarize_runner(peers, name, data, lr):
  """TorchJD's scalarizer on the stacked losses, one backward, SGD step (the scalarizer's own
  parameters, IMTL-L's log-scales, by Adam(SCALES_LR) as mtl_jax's); None without one."""
  torch = peers.torch
  scalarizer = torchjd_scalarizer(peers, name, data[1].shape[1])
  if scalarizer is None:
    return None
  xt, yt, shared_module, head_modules, opt = torch_setup(peers, data, lr)
  own = list(scalarizer.parameters())
  scales_opt = torch.optim.Adam(own, lr=SCALES_LR) if own else None

  def step():
    _, losses = torch_losses(peers, shared_module, head_modules, xt, yt)
    scalarizer(torch.stack(losses)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if scales_opt is not None:
      scales_opt.step()
      scales_opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def torchjd_sub_batch_runner(peers, name, data, lr):
  """MoDo / SDMGrad as in TorchJD's examples (three batches per step): one forward of the
  batch (cut to a multiple of 3), per-task losses on each third; ``autojac.jac`` of the first
  two w.r.t. the shared parameters, A = J_1 J_2^T, weights from the weighting, the third's
  losses backward with them (so the heads get w_t grad L_t of the third), SGD step."""
  torch = peers.torch
  f = torch.nn.functional
  xt, yt, shared_module, head_modules, opt = torch_setup(peers, data, lr)
  shared_params = list(shared_module.parameters())
  cross = torchjd_cross_weighting(peers, name)
  n = xt.shape[0] // 3

  def step():
    features = shared_module(xt)
    losses = [torch.stack([f.cross_entropy(h(features[b * n:(b + 1) * n]),
                                           yt[b * n:(b + 1) * n, t])
                           for t, h in enumerate(head_modules)]) for b in range(3)]
    jacs = [torch.cat([j.flatten(1) for j in peers.torchjd.autojac.jac(
        losses[b], shared_params, retain_graph=True)], dim=1) for b in range(2)]
    losses[2].backward(cross(jacs[0] @ jacs[1].T))
    opt.step()
    opt.zero_grad(set_to_none=True)

  return TorchRunner(step)


def libmtl_model(peers, name, shared, heads, num_tasks):
  """LibMTL's own model: HPS architecture x weighting class, as ``LibMTL.Trainer`` builds it
  (on the CPU: the Trainer itself hard-codes cuda:0), with shim 2; ``rep_grad=True`` for the
  methods that LibMTL runs on representation gradients only (GradDrop)."""
  torch = peers.torch
  shared_module, head_modules = torch_model(peers, shared, heads)
  names = [f't{t}' for t in range(num_tasks)]
  decoders = torch.nn.ModuleDict({n: h for n, h in zip(names, head_modules)})

  class MTLModel(peers.libmtl.architecture.HPS, peers.libmtl.classes[name]):
    def __init__(self):
      super().__init__(names, lambda: shared_module, decoders, name in LIBMTL_REP_GRAD,
                       False, torch.device('cpu'))
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
  """({name: (factory, meta)}, {method: why skipped}); factories are called lazily (a failure
  skips the runner).  TorchJD's paths: autojac (an aggregator), autogram (a Gramian
  weighting), scalarize (a scalarizer) and, for MoDo and SDMGrad, its three-batch loop."""
  num = data[1].shape[1]
  out, skipped = {}, {}

  def jax_runner(method, mode, data):
    step, optimizer = mtl_jax_step(method, mode, lr)
    state = init_state(method, num, jax_params(*data[2:])['shared'])
    return JaxRunner(step, optimizer, state, data, compiler_options)

  out[JAX_SUM] = (lambda: JaxRunner(*jax_sum_step(lr), (), data, compiler_options),
                  {'lib': 'jax', 'method': None})
  if peers.torch is not None:
    out[TORCH_SUM] = (lambda: torch_sum_runner(peers, data, lr), {'lib': 'torch', 'method': None})
  for m in methods:
    method = mtl_jax_method(m)
    skipped[m] = skip_reason(m, num)
    if skipped[m]:
      continue
    cut = sub_batch_data(data, method)
    meta = {'method': m, 'batch_used': int(cut[0].shape[0])}
    for mode in modes:
      out[f'mtl_jax[{mode}] {m}'] = (
          lambda method=method, mode=mode, cut=cut: jax_runner(method, mode, cut),
          {'lib': 'mtl_jax', 'mode': mode, **meta})
    if torchjd_has(peers, m) and 'torchjd' not in skip:
      sub = method.sub_batches > 1      # autojac: TorchJD's three-batch example loop
      paths = {'autojac': ((torchjd_cross_weighting(peers, m) if sub else
                            torchjd_aggregator(peers, m, num)),
                           torchjd_sub_batch_runner if sub else torchjd_autojac_runner),
               'autogram': (torchjd_weighting(peers, m), torchjd_autogram_runner),
               'scalarize': (torchjd_scalarizer(peers, m, num), torchjd_scalarize_runner)}
      for path, (made, runner) in paths.items():
        if made is not None:
          out[f'torchjd {path} {m}'] = (lambda runner=runner, cut=cut, m=m: runner(
              peers, m, cut, lr), {'lib': 'torchjd', 'path': path, **meta})
    if peers.libmtl is not None and 'libmtl' not in skip and m in peers.libmtl.classes:
      out[f'libmtl {m}'] = (lambda m=m: libmtl_runner(peers, m, data, lr),
                            {'lib': 'libmtl', **meta})
  return out, {m: why for m, why in skipped.items() if why}


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
           'torchjd_scalarize_ms': med.get(f'torchjd scalarize {m}'),
           'libmtl_ms': med.get(f'libmtl {m}')}
    tjd = {path: row[f'torchjd_{path}_ms'] for path in ('autojac', 'autogram', 'scalarize')
           if row[f'torchjd_{path}_ms'] is not None}
    row['torchjd_faster_ms'] = min(tjd.values()) if tjd else None
    row['torchjd_faster_path'] = min(tjd, key=tjd.get) if tjd else None
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
    row['targeted'] = m in TARGET_METHODS
    out['methods'][m] = row
  return out


# --------------------------------------------------------------------------- agreement

class AgreementInputs:
  """The agreement's inputs (torch, float32), computed on first use.  Step k's batch: step 0
  the problem's own, later steps fresh N(0, 1) inputs and uniform labels of the same size
  (seeded), all at the initial parameters, so that J_k changes with the batch only.  Kinds:
  'J' (J [T, P] of the shared parameters, losses [T]), 'J3' (the same on three equal
  sub-batches of the batch cut to a multiple of 3, sub-batch major: [3T, P], [3T]) and 'rep'
  (rows dL_t/dz [T, B, d] of the representation z [B, d], losses [T])."""

  def __init__(self, peers, data, seed: int):
    self.peers, self.data, self.seed, self.cache = peers, data, seed, {}
    self.num = data[1].shape[1]

  def batch(self, k: int):
    x, y, _, heads = self.data
    if k == 0:
      return x, y
    rng = np.random.default_rng([self.seed, 1000 + k])
    return (rng.standard_normal(x.shape, dtype=np.float32),
            rng.integers(0, heads[1].shape[1], size=y.shape).astype(np.int64))

  def get(self, kind: str, k: int):
    if (kind, k) not in self.cache:
      self.cache[kind, k] = torch_inputs(self.peers, self.data, *self.batch(k), kind)
    return self.cache[kind, k]


def torch_inputs(peers, data, x, y, kind: str):
  """One agreement step's inputs on the batch (x, y) at the initial point (see
  ``AgreementInputs``): a namespace with ``jac`` (or ``rows`` and ``z``) and ``losses``."""
  torch = peers.torch
  f = torch.nn.functional
  shared_module, head_modules = torch_model(peers, *data[2:])
  params = list(shared_module.parameters())
  parts = 3 if kind == 'J3' else 1
  n = x.shape[0] // parts
  features = shared_module(torch.from_numpy(x[:n * parts]))
  yt = torch.from_numpy(y)
  losses = [f.cross_entropy(h(features[b * n:(b + 1) * n]), yt[b * n:(b + 1) * n, t])
            for b in range(parts) for t, h in enumerate(head_modules)]
  wrt = [features] if kind == 'rep' else params
  rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, wrt, retain_graph=True)])
          for loss in losses]
  out = types.SimpleNamespace(losses=torch.stack(losses).detach())
  if kind == 'rep':
    out.rows = torch.stack(rows).reshape(len(losses), *features.shape).detach()
    out.z = features.detach()
  else:
    out.jac = torch.stack(rows).detach()
  return out


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
  if name in ('imtl_g', 'con_fig'):  # equal projections on (cosines with) the unit gradients
    p = g / norms
    return {'projection_spread': float((p.max() - p.min()) / abs(p.mean()))}
  if name in ('nash_mtl', 'fairgrad'):  # alpha_t (G alpha)_t equal (= 1 unclipped): spread 0
    gram = jac64 @ jac64.T
    alpha = np.linalg.lstsq(gram, g, rcond=None)[0]
    r = alpha * (gram @ alpha)
    return {'fixed_point_spread': float(np.std(r) / abs(np.mean(r))), 'norm_d': float(
        np.linalg.norm(d))}
  return {}


@contextlib.contextmanager
def same_draws(peers, m: str, lib: str, key, num: int, size: int, probe=None):
  """Inside, the peer's random draws for method ``m`` are mtl_jax's, made from ``key``:
  GradVac's orders (``gradvac_orders``; TorchJD reads ``torch.randperm``, LibMTL
  ``random.shuffle``), GradDrop's uniforms over ``size`` coordinates (``graddrop_uniform``;
  TorchJD ``torch.rand``, LibMTL ``torch.rand_like``), Random's N(0, 1) vector (TorchJD
  ``torch.randn``, LibMTL RLW's ``probe.distribution.sample``).  Yields the list of the draws
  served: empty means the peer read no patched generator (its draws were its own)."""
  torch, served, patches = peers.torch, [], []
  if m == 'gradvac':
    orders = np.asarray(gradvac_orders(key, num))

    def visit(i):
      return [int(j) for j in orders[i] if j != i]

    def randperm(n, *args, **kwargs):    # TorchJD: for i = 0, 1, ...: the others' positions
      i = len(served)
      served.append(n)
      return torch.tensor([j - (j > i) for j in visit(i)], dtype=torch.long)

    def shuffle(order):                   # LibMTL: the list of the others, shuffled in place
      i = (set(range(num)) - set(order)).pop()
      served.append(i)
      order[:] = visit(i)

    module = sys.modules[peers.libmtl.classes[m].__module__] if lib == 'libmtl' else None
    patches.append((torch, 'randperm', randperm) if lib == 'torchjd' else
                   (module, 'random', types.SimpleNamespace(shuffle=shuffle)))
  elif m == 'graddrop':
    u = torch.from_numpy(np.array(graddrop_uniform(
        key, [jax.ShapeDtypeStruct((size,), jnp.float32)])[0]))

    def uniform(shape, *args, **kwargs):
      numel = shape.numel() if hasattr(shape, 'numel') else int(np.prod(shape))
      if numel != size:
        raise ValueError(f'{lib} GradDrop drew {numel} uniforms, {size} expected')
      served.append(size)
      return u.clone().reshape(shape.shape if torch.is_tensor(shape) else shape)

    patches.append((torch, 'rand' if lib == 'torchjd' else 'rand_like', uniform))
  elif m == 'random':
    xi = torch.from_numpy(np.array(jax.random.normal(key, (num,), jnp.float32)))

    def normal(*args, **kwargs):
      served.append(num)
      return xi.clone()

    patches.append((torch, 'randn', normal) if lib == 'torchjd' else
                   (probe, 'distribution', types.SimpleNamespace(sample=normal)))
  saved = [(obj, name, getattr(obj, name, None)) for obj, name, _ in patches]
  for obj, name, value in patches:
    setattr(obj, name, value)
  try:
    yield served
  finally:
    for obj, name, value in saved:
      setattr(obj, name, value)


def ours_directions(method, seq, keys, rep: bool = False) -> list:
  """mtl_jax's directions (float64) over consecutive steps, its state carried along:
  ``weighting.combine`` (float32, jitted) on each step's J and losses; ``rep``: the method's
  update on the representation rows (GradDrop's form in LibMTL), d = the cotangent of z."""
  num = seq[0].losses.shape[0] // method.sub_batches
  if rep:
    def one(inp, state, key, k):
      res = method.update(weighting.WeightingInputs(
          losses=inp['losses'], step=k, jacobian=inp['rows'], representation=inp['z']),
          state, key)
      return res.direction, res.state
    row = jax.ShapeDtypeStruct(seq[0].z.shape, jnp.float32)
  else:
    def one(inp, state, key, k):
      out = weighting.combine(method, inp['jac'], inp['losses'], state=state, key=key, step=k)
      return out.direction, out.state
    row = jax.ShapeDtypeStruct(seq[0].jac.shape[1:], jnp.float32)
  run = jax.jit(one)
  state, out = init_state(method, num, row), []
  for k, (inp, key) in enumerate(zip(seq, keys)):
    arrays = {n: jnp.asarray(v.numpy()) for n, v in vars(inp).items()}
    d, state = run(arrays, state, key, jnp.asarray(k, jnp.int32))
    out.append(np.asarray(d, np.float64).reshape(-1))
  return out


def torchjd_stepper(peers, m: str, num: int):
  """(step inputs, key) -> (TorchJD's direction as float64, draws served); one aggregator /
  weighting / scalarizer object across the calls (its state carried).  Sub-batch methods:
  the weighting of J_1 J_2^T applied to J_3; scalarizers: alpha = dS/dL at the losses, d =
  alpha J, their own parameters (IMTL-L's log-scales) stepped by Adam(SCALES_LR)."""
  torch = peers.torch
  cross, agg = torchjd_cross_weighting(peers, m), torchjd_aggregator(peers, m, num)
  scalarizer = None if agg is not None else torchjd_scalarizer(peers, m, num)
  own = list(scalarizer.parameters()) if scalarizer is not None else []
  opt = torch.optim.Adam(own, lr=SCALES_LR) if own else None

  def run(inp, key):
    with same_draws(peers, m, 'torchjd', key, num, inp.jac.shape[1]) as served:
      if cross is not None:
        j = inp.jac.reshape(3, num, -1)
        d = cross(j[0] @ j[1].T) @ j[2]
      elif agg is not None:
        d = agg(inp.jac)
      else:
        losses = inp.losses.clone().requires_grad_()
        scalarizer(losses).backward()
        d = losses.grad @ inp.jac
        if opt is not None:
          opt.step()
          opt.zero_grad()
    return d.detach().double().numpy(), len(served)

  return run


def libmtl_stepper(peers, m: str, num: int):
  """(step inputs, key) -> (LibMTL's direction as float64, draws served); one probe across the
  calls (its state carried: GradVac's targets, IMTL's loss scales, stepped by
  Adam(SCALES_LR) from the gradient LibMTL's backward leaves on them).  The probe's losses are
  J theta + L (theta = 0), so that they have the step's values and the rows of J as
  gradients; GradDrop runs on the representation rows (``_libmtl_rep_probe``)."""
  torch = peers.torch
  cls, kwargs, held = peers.libmtl.classes[m], LIBMTL_KWARGS[m], {}

  def run(inp, key):
    if m in LIBMTL_REP_GRAD:
      if 'probe' not in held:
        held['probe'] = _libmtl_rep_probe(peers, cls, inp.rows, inp.z)
      probe = held['probe']
      probe.set(inp.rows, inp.z)
      with same_draws(peers, m, 'libmtl', key, num, inp.z.shape[-1]) as served:
        probe.backward(probe.losses, **kwargs)
      return probe.z.grad.double().numpy().reshape(-1), len(served)
    if 'probe' not in held:
      held['probe'] = probe = _libmtl_probe(peers, cls, inp.jac)
      scales = [p for n, p in probe.named_parameters() if n == 'loss_scale']
      held['opt'] = torch.optim.Adam(scales, lr=SCALES_LR) if scales else None
    probe, opt = held['probe'], held['opt']
    probe.jac, probe.theta.grad = inp.jac, None
    with same_draws(peers, m, 'libmtl', key, num, inp.jac.shape[1], probe) as served:
      probe.backward(probe.jac @ probe.theta + inp.losses, **kwargs)
    if opt is not None:
      opt.step()
      opt.zero_grad()
    return probe.theta.grad.double().numpy(), len(served)

  return run


def _rel(a, b) -> float:
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def float64_reference(peers, m: str, num: int, seq, mine, theirs) -> dict:
  """Where mtl_jax and TorchJD differ by more than FLOAT64_CHECK: TorchJD once more on the
  same inputs in float64, to tell rounding in the peer's float32 run (e.g. SDMGrad's simplex
  projection of a badly scaled J_1 J_2^T) from a difference of algorithm or tolerance (MGDA's
  Frank-Wolfe stopping rule, which float64 does not change)."""
  run = torchjd_stepper(peers, m, num)
  keys = [jax.random.PRNGKey(k) for k in range(len(seq))]
  ref = [run(types.SimpleNamespace(**{n: v.double() for n, v in vars(inp).items()}), key)[0]
         for inp, key in zip(seq, keys)]
  return {'rel_diff_vs_peer_float64': max(_rel(a, c) for a, c in zip(mine, ref)),
          'peer_float32_vs_float64': max(_rel(b, c) for b, c in zip(theirs, ref))}


def compare_peer(peers, m: str, lib: str, inputs, steps: int, draws: int) -> dict:
  """mtl_jax (matched to ``lib``) against the peer on the same inputs: over ``steps``
  consecutive steps for a stateful method (1 otherwise), with the same draws for the methods
  in SAME_DRAWS; PCGrad: the means of ``draws`` draws of the first step on each side, with two
  sets of mtl_jax's draws for scale.  rel_diff: the largest |d_mtl_jax - d_peer| / |d_peer|
  over the steps, cos the smallest cosine; objectives at the first step."""
  method, num = mtl_jax_method(m, lib), inputs.num
  kind = ('J3' if method.sub_batches > 1 else
          'rep' if lib == 'libmtl' and m in LIBMTL_REP_GRAD else 'J')
  state = jax.eval_shape(lambda: init_state(method, num, jax.ShapeDtypeStruct((8,), jnp.float32)))
  n = steps if jax.tree.leaves(state) else 1
  seq = [inputs.get(kind, k) for k in range(n)]
  make = torchjd_stepper if lib == 'torchjd' else libmtl_stepper
  scale = TORCHJD_SCALE.get(m, lambda t: 1.0)(num) if lib == 'torchjd' else 1.0
  out = {'inputs': kind, 'steps': n, 'scale': scale}
  if method.random and m not in SAME_DRAWS:
    def peer_draw(seed):
      peers.torch.manual_seed(seed)      # TorchJD's generator
      random.seed(seed)                  # LibMTL's
      return make(peers, m, num)(seq[0], None)[0]

    def ours_mean(start):                # stateless: the same step with `draws` keys
      keys = [jax.random.PRNGKey(start + k) for k in range(draws)]
      return np.mean(ours_directions(method, seq[:1] * draws, keys), 0) * scale
    mine, theirs = [ours_mean(0)], [np.mean([peer_draw(k) for k in range(draws)], 0)]
    out['draws'] = f'means of {draws} draws'
    out['self_rel_diff'] = float(np.linalg.norm(mine[0] - ours_mean(draws)) /
                                 np.linalg.norm(mine[0]))
  else:
    keys = [jax.random.PRNGKey(k) for k in range(n)]
    mine = [d * scale for d in ours_directions(method, seq, keys, rep=kind == 'rep')]
    peer_run, theirs, served = make(peers, m, num), [], 0
    for inp, key in zip(seq, keys):
      d, count = peer_run(inp, key)
      theirs.append(d)
      served += count
    if method.random or m in SAME_DRAWS:
      out['draws'] = f'same draws ({served} served)' if served else 'own draws (none served)'
  diffs = [_rel(a, b) for a, b in zip(mine, theirs)]
  cosines = [float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
             for a, b in zip(mine, theirs)]
  out.update(rel_diff=max(diffs), cos=min(cosines), rel_diff_per_step=diffs,
             cos_per_step=cosines)
  if lib == 'torchjd' and max(diffs) > FLOAT64_CHECK and not method.random:
    out.update(float64_reference(peers, m, num, seq, mine, theirs))
  if kind == 'J':
    jac64 = seq[0].jac.double().numpy()
    out['objective_mtl_jax'] = objectives(m, jac64, mine[0])
    out['objective_peer'] = objectives(m, jac64, theirs[0])
  return out


def agreement(peers, data, methods, draws: int, steps: int, skip=(), seed: int = 0) -> dict:
  """The directions of mtl_jax (``weighting.combine``, float32), TorchJD (its aggregator,
  sub-batch weighting or scalarizer on the same inputs) and LibMTL (its weighting on a probe
  whose per-task gradients are the rows of J, or of the representation rows), each peer
  against mtl_jax set to match it (``compare_peer``)."""
  inputs = AgreementInputs(peers, data, seed)
  num = inputs.num
  out = {'num_params': int(inputs.get('J', 0).jac.shape[1]), 'pcgrad_draws': draws,
         'steps': steps}
  for m in methods:
    row = {}
    has = {'torchjd': torchjd_has(peers, m),
           'libmtl': peers.libmtl is not None and m in peers.libmtl.classes}
    for lib in ('torchjd', 'libmtl'):
      if not has[lib] or lib in skip:
        continue
      why = skip_reason(m, num, lib)
      if why:
        row[lib] = {'skipped': why}
        continue
      try:
        row[lib] = compare_peer(peers, m, lib, inputs, steps, draws)
      except Exception as e:  # report and go on: a peer that fails on this input
        row[lib] = {'error': f'{type(e).__name__}: {e}'[:300]}
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


def print_timing(report: dict) -> None:
  """The timed table of each (T, B): ms per step and the ratios."""
  modes = report['config']['modes']
  for key, res in report['results'].items():
    base = res['summary']['baselines_ms']
    print(f"\n{key}: ms per step (median of {report['config']['repeats']}); "
          f"jax (sum) {_ms(base[JAX_SUM])}, torch (sum) {_ms(base[TORCH_SUM])}")
    head = f"{'method':<13}" + ''.join(f"{'mtl_jax[' + mode + ']':>16}{'x sum':>7}"
                                       for mode in modes)
    head += f"{'TJD autojac':>12}{'autogram':>10}{'scalar':>9}{'TJD fast':>10}{'LibMTL':>9}"
    head += ''.join(f"{'TJD/' + mode:>11}{'Lib/' + mode:>11}" for mode in modes)
    head += f"{'cmp s':>7}"
    print(head)
    for m, row in res['summary']['methods'].items():
      if m in res.get('skipped', {}) or not any(row['mtl_jax_ms'].values()):
        continue
      line = f'{m:<13}'
      for mode in modes:
        line += f"{_ms(row['mtl_jax_ms'][mode]):>16}{_x(row['mtl_jax_over_jax_sum'][mode]):>7}"
      fast = row['torchjd_faster_path']
      aj, ag, sc = (_ms(row[f'torchjd_{p}_ms']) + ('*' if fast == p else ' ')
                    for p in ('autojac', 'autogram', 'scalarize'))
      line += f"{aj:>12}{ag:>10}{sc:>9}{_ms(row['torchjd_faster_ms']):>10}"
      line += f"{_ms(row['libmtl_ms']):>9}"
      for mode in modes:
        line += f"{_x(row['torchjd_over_mtl_jax'][mode]):>11}"
        line += f"{_x(row['libmtl_over_mtl_jax'][mode]):>11}"
      setup = res['timing']['setup'].get(f'mtl_jax[{modes[0]}] {m}', {})
      line += f"{setup.get('total_s', float('nan')):>7.1f}"
      print(line)
    for m, why in res.get('skipped', {}).items():
      print(f'  skipped {m}: {why}')
    for name, err in res['timing']['errors'].items():
      print(f'  failed {name}: {err}')
  print("\n(ms per step; '*' and 'TJD fast': TorchJD's faster path (autojac: an aggregator, or "
        "for modo/sdmgrad its three-batch loop; autogram: a Gramian weighting; scalar: a "
        "scalarizer); 'TJD/<mode>': TorchJD's faster path / mtl_jax, 'Lib/<mode>': LibMTL / "
        "mtl_jax (> 1: mtl_jax faster); 'x sum': mtl_jax / the plain JAX step; 'cmp s': "
        "lower + compile of the first mode's step)")


def print_agreement(report: dict) -> None:
  """Per method and peer: the largest relative difference of the directions over the steps
  compared, the smallest cosine, how randomness was matched, and the objectives."""
  for key, res in report['results'].items():
    if 'agreement' not in res:
      continue
    print(f"\nagreement on the same inputs ({key}, {res['agreement']['num_params']} shared "
          f"params, float32): max_k |d_mtl_jax - d_peer| / |d_peer| over the steps compared, "
          f"min cosine, objectives")
    for m, row in res['agreement'].items():
      if not isinstance(row, dict) or not row:
        continue
      parts = []
      for peer in ('torchjd', 'libmtl'):
        r = row.get(peer)
        if r is None:
          continue
        if 'error' in r or 'skipped' in r:
          parts.append(f"{peer}: {r.get('error', r.get('skipped'))[:70]}")
          continue
        obj = ', '.join(f"{k} {r['objective_mtl_jax'][k]:.5g}/{r['objective_peer'][k]:.5g}"
                        for k in r.get('objective_mtl_jax', {}))
        notes = [f"{r['steps']} steps"] if r['steps'] > 1 else []
        notes += [r['draws']] if 'draws' in r else []
        notes += [f"self {r['self_rel_diff']:.2g}"] if 'self_rel_diff' in r else []
        notes += [r['inputs']] if r['inputs'] != 'J' else []
        if 'rel_diff_vs_peer_float64' in r:
          notes.append(f"vs TorchJD in float64 {r['rel_diff_vs_peer_float64']:.2g}, its float32 "
                       f"vs float64 {r['peer_float32_vs_float64']:.2g}")
        parts.append(f"{peer} {r['rel_diff']:.2e} cos {r['cos']:.7f}"
                     + (f" ({'; '.join(notes)})" if notes else '') + (f' [{obj}]' if obj else ''))
      print(f'  {m:<13}' + ' | '.join(parts))
  if any('agreement' in res for res in report['results'].values()):
    print("  (objectives: mtl_jax/peer; 'means of N draws': PCGrad, self = two mtl_jax means; "
          "'same draws': the peer given mtl_jax's random draws; J3: three sub-batches; rep: "
          "representation rows)")


def print_tables(report: dict) -> None:
  if report['config']['timing']:
    print_timing(report)
  print_agreement(report)
  if report['targets']:
    passed = sum(t['pass'] for t in report['targets'])
    print(f"\ntarget: every Gram method of issue 13 >= {TARGET}x faster than TorchJD's faster "
          f"path at T in {TARGET_TASKS}, batch {TARGET_BATCH}: "
          f"{passed}/{len(report['targets'])} pass")
    for t in report['targets']:
      if not t['pass']:
        print(f"  below: T={t['T']} {t['method']} mode {t['mode']}: {t['value']:.2f}x")


def check_targets(results: dict) -> list:
  targets = []
  for res in results.values():
    if res['num_tasks'] not in TARGET_TASKS or res['batch'] != TARGET_BATCH:
      continue
    for m, row in res['summary']['methods'].items():
      if not row['gram_method'] or m not in TARGET_METHODS or row['torchjd_faster_ms'] is None:
        continue
      for mode, value in row['torchjd_over_mtl_jax'].items():
        if value is not None:
          targets.append({'T': res['num_tasks'], 'batch': res['batch'], 'method': m,
                          'mode': mode, 'value': value, 'bound': TARGET,
                          'pass': value >= TARGET})
  return targets


def run_cell(peers, args, data, modes, rng, agree: bool) -> dict:
  """One (T, B): the timed runners (unless ``--no-timing``) and, if ``agree``, the
  agreement on this problem's inputs."""
  num, batch = data[1].shape[1], data[0].shape[0]
  runners, skipped = build_runners(peers, data, args.methods, modes, args.lr, args.skip,
                                   QUICK_COMPILE if args.quick else None)
  for m, why in skipped.items():
    print(f'  skip {m}: {why}', file=sys.stderr, flush=True)
  phase = time.time()
  timing = time_runners(runners, args, rng) if args.timing else {
      'times_ms': {}, 'steps': {}, 'setup': {}, 'errors': {}}
  out = {'num_tasks': num, 'batch': batch, 'timing': timing,
         'summary': summarize(timing, args.methods, modes), 'skipped': skipped,
         'runners': {n: meta for n, (_, meta) in runners.items()},
         'phase_s': time.time() - phase}
  if args.agreement and agree and peers.torch is not None:
    phase = time.time()
    print(f'  agreement ({args.agreement_steps} steps for stateful methods)',
          file=sys.stderr, flush=True)
    out['agreement'] = agreement(peers, data, args.methods, args.pcgrad_draws,
                                 args.agreement_steps, args.skip, args.seed)
    out['agreement_s'] = time.time() - phase
  return out


def parse_args(argv=None):
  """The command line, with the defaults of the full run or of ``--quick`` filled in."""
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
  parser.add_argument('--agreement-steps', type=int, default=3,
                      help='consecutive steps (batches) compared for stateful methods')
  parser.add_argument('--no-agreement', dest='agreement', action='store_false')
  parser.add_argument('--no-timing', dest='timing', action='store_false',
                      help='agreement only (the timed tables stay empty)')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: input 64, hidden 32-32, T 4, batch 16, 2 repeats, '
                           'XLA backend optimisation level 0')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    'results', 'peers.json'))
  args = parser.parse_args(argv)
  args.tasks = args.tasks or ('4' if args.quick else '2,8,32')
  args.batch = args.batch or ('16' if args.quick else '64,256')
  args.repeats = args.repeats or (2 if args.quick else 7)
  args.repeat_s = args.repeat_s or (0.02 if args.quick else 0.25)
  args.methods = (args.methods or ','.join(METHODS)).split(',')
  unknown = sorted(set(args.methods) - set(METHODS))
  if unknown:
    parser.error(f'methods {unknown} are not shared with a peer; choose from {METHODS}')
  args.skip = {s for s in args.skip.split(',') if s}
  return args


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
  TorchJD's scalarizers (Random, STCH, IMTL-L, COSMOS, PBI): one backward of the scalarized
  losses; MoDo / SDMGrad: TorchJD's three-batch example loop (``torchjd_sub_batch_runner``),
  the batch cut to a multiple of 3 on every side.  The step-time target covers
  ``TARGET_METHODS`` (issue 13's nine).

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
  CAGrad min_t g_t.d / |g0|^2; IMTL-G, ConFIG spread of the projections on the unit
  gradients; Nash-MTL, FairGrad spread of alpha_t (G alpha)_t).  Stateful methods: over
  ``--agreement-steps`` consecutive steps (fresh batches at the same parameters, the same
  J_k on both sides, each keeping its state).  GradVac, GradDrop, Random: the peer gets
  mtl_jax's draws (``same_draws``).  PCGrad: means over ``--pcgrad-draws`` draws on each side,
  with mtl_jax's own draw-to-draw difference for scale.  MoDo, SDMGrad: J of three
  sub-batches.  Scalarizers (TorchJD's Random, STCH, IMTL-L, COSMOS, PBI): alpha = dS/dL at
  the same losses.  LibMTL's GradDrop: on the representation rows.  A difference from TorchJD
  above ``FLOAT64_CHECK``: TorchJD again in float64.  Nothing is asserted.
  """
  args = parse_args(argv)
  cfg, methods, skip = QUICK if args.quick else FULL, args.methods, args.skip

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
      results[key] = run_cell(peers, args, make_problem(num, batch, cfg, args.seed), modes,
                              rng, agree=batch == batches[0])
  report = {
      'config': {**cfg, 'hidden': list(cfg['hidden']), 'tasks': tasks, 'batch': batches,
                 'methods': methods, 'modes': modes, 'repeats': args.repeats,
                 'repeat_s': args.repeat_s, 'max_steps': args.max_steps, 'warmup': args.warmup,
                 'lr': args.lr, 'optimizer': 'sgd', 'threads': args.threads,
                 'quick': args.quick, 'seed': args.seed, 'skip': sorted(skip),
                 'as_torchjd': AS_TORCHJD, 'as_libmtl': AS_LIBMTL,
                 'libmtl_kwargs': LIBMTL_KWARGS, 'pcgrad_draws': args.pcgrad_draws,
                 'agreement_steps': args.agreement_steps, 'timing': args.timing,
                 'target_methods': list(TARGET_METHODS), 'same_draws': list(SAME_DRAWS)},
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
