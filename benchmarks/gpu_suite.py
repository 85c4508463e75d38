"""GPU suite: step time, compile time, XLA memory and FLOPs utilisation of the weighting methods
on two models big enough to load one GPU, in about 8 minutes; ``--quick``: a CPU smoke test.

    .venv/bin/python benchmarks/gpu_suite.py                        # one GPU, ~8 min
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/gpu_suite.py --quick --out /tmp/q.json

Models (synthetic N(0, 1) inputs and random {0, 1} labels of the right shapes; no downloads),
each a ``shared_bottom`` with one linear head per task, T binary tasks named after the first T
CelebA attributes, batch 128, ``optax.adam(1e-3)``:

* ``resnet``: the ``resnet`` backbone, ResNet-18 (BasicBlocks [2, 2, 2, 2], widths 64-512,
  BatchNorm, whose ``batch_stats`` the step carries) with the 3x3 stride-1 'cifar' stem, on
  64 x 64 x 3 images (CelebA-shaped): 11.2 M shared parameters, 1.6 TFLOP per ew step;
* ``transformer``: the ``transformer`` backbone made bigger, d_model 512, 8 heads, 6 layers,
  MLP ratio 4, 8 x 8 patches of the same images (64 tokens), mean-pooled: 19.0 M shared
  parameters, 0.96 TFLOP per ew step.

Phases, in this order; each runs until its share of ``--budget-s`` (cumulative: time an earlier
phase leaves unused passes on) is spent, and records every cell it does not reach as
``skipped`` with the reason 'budget'.  A cell that cannot run (a method undefined for T tasks,
a mode the model or method does not allow) is ``skipped`` with the library's own message; one
that raises while compiling or running (e.g. out of memory) is ``failed`` with the error.

1. ``overhead`` (10 %): ``ew`` through ``make_train_step`` against a hand-written single-loss
   step (``jax.value_and_grad`` of the summed task losses + the same optax update, the
   BatchNorm statistics carried; written here), on both models at T = 8, in float32 and
   bfloat16, their steps interleaved one by one: the ratio is the trainer's overhead.
2. ``grid`` (40 %): ew, famo (a loss method), mgda, upgrad (Gram methods; mode 'auto', the
   engine's choice) x T in {2, 8, 32} x both models x {float32, bfloat16}.
3. ``memory`` (15 %): upgrad's step compiled (not run) in each engine mode, 'param',
   'param' with ``chunk_size`` = T/4, 'rep' and 'gram', and 'param' in bfloat16 with the
   per-task gradients in float32 and in bfloat16 (dtype 'bfloat16+grads',
   ``grad_dtype='bfloat16'``), at T = 8 and 32 on both models:
   ``compiled.memory_analysis()``, peak = argument + output - alias + temp.
4. ``methods`` (35 %): every registered method (``weighting.names()``) at T = 8, float32, on
   the ResNet, methods already timed in the grid not again.

Cells go in chunks of 2 x ``--compile-workers`` (default 4 on a GPU, 1 on a CPU): built and
lowered in order, compiled concurrently in threads (XLA compiles without the GIL), then
timed one after another while nothing compiles.  Compile times are therefore those of up to 4
concurrent compiles, whose autotuning shares the GPU (``--compile-workers 1``: serial).
Every run cell: lower and compile wall times (apart from the steps), then ``--warmup`` steps,
then ``--steps`` steps each ended by ``jax.block_until_ready``: the median per-step time.
FLOPs: ``compiled.cost_analysis()['flops']`` of the step (XLA's static count: a loop body
counts once; where it is under half the lowered program's count, e.g. library calls left
uncounted, the lowered count: ``flops_basis``), over the median step time = achieved FLOP/s;
over the device's peak (``PEAK_FLOPS`` by ``device_kind``; float32 cells against the TF32
peak, the precision XLA uses for float32 dots and convolutions on these GPUs by default) =
MFU.  On a CPU: achieved FLOP/s only.  bfloat16 cells pass ``make_train_step(...,
compute_dtype='bfloat16')`` (model in bfloat16; params, optimizer state, losses, Gram matrix
and solvers in float32); where the library has no ``compute_dtype`` they are skipped with
reason 'compute_dtype not available'.

Writes JSON (``--out``; default ``benchmarks/results/gpu_suite.json``, ``--quick`` a temp file)
and prints a table.  ``--quick``: tiny images, widths and batch, T = 2 and 3, a handful of
methods, 2 timed steps: every code path in about a minute on 2 CPU cores.
"""

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

if '--quick' in sys.argv and '--xla_backend_optimization_level' not in os.environ.get(
    'XLA_FLAGS', ''):  # tiny programs: compile fast rather than well (before jax loads)
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

import mtl_jax  # pylint: disable=wrong-import-position
from mtl_jax import models, tasks as tasks_lib, weighting  # pylint: disable=wrong-import-position
from mtl_jax._src.data.celeb_a import ATTRIBUTES  # pylint: disable=wrong-import-position

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'gpu_suite.json')
HAND = '(hand-written)'
PHASES = ('overhead', 'grid', 'memory', 'methods')
SHARES = {'overhead': 0.10, 'grid': 0.40, 'memory': 0.15, 'methods': 0.35}
NO_DTYPE = 'compute_dtype not available'

# Dense peak FLOP/s from NVIDIA's datasheets (SXM unless named); matched in this order against
# jax.devices()[0].device_kind.
PEAK_FLOPS = (
    ('H200', {'bfloat16': 989e12, 'tf32': 494.7e12, 'float32': 66.9e12}),
    ('H100 PCIe', {'bfloat16': 756e12, 'tf32': 378e12, 'float32': 51.2e12}),
    ('H100', {'bfloat16': 989e12, 'tf32': 494.7e12, 'float32': 66.9e12}),
    ('A100', {'bfloat16': 312e12, 'tf32': 156e12, 'float32': 19.5e12}),
)

FULL = dict(
    image_size=64, batch=128, warmup=2, steps=10, budget_s=450.0, compile_workers=None,
    models=('resnet', 'transformer'), dtypes=('float32', 'bfloat16'),
    resnet=dict(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem='cifar', norm='batch'),
    transformer=dict(d_model=512, num_heads=8, num_layers=6, mlp_ratio=4.0, patch_size=8),
    overhead_tasks=(8,), overhead_models=('resnet', 'transformer'),
    grid_tasks=(2, 8, 32), grid_methods=('ew', 'famo', 'mgda', 'upgrad'),
    grid_dtypes=('float32', 'bfloat16'),
    memory_tasks=(8, 32), memory_models=('resnet', 'transformer'), memory_method='upgrad',
    methods_tasks=8, methods_model='resnet', methods=None)     # None: weighting.names()
QUICK = dict(
    FULL, image_size=16, batch=8, warmup=1, steps=2, budget_s=600.0,
    resnet=dict(blocks=(1, 1), widths=(4, 8), stem='cifar', norm='batch'),
    transformer=dict(d_model=16, num_heads=2, num_layers=1, mlp_ratio=2.0, patch_size=8),
    overhead_tasks=(2,), overhead_models=('resnet',), grid_tasks=(3,),
    grid_methods=('famo',), grid_dtypes=('float32',), memory_tasks=(3,),
    memory_models=('resnet',), methods_tasks=2, methods=('ew', 'krum', 'static'))


# ----------------------------------------------------------------------------- setup


def has_compute_dtype() -> bool:
  """Whether ``make_train_step`` takes ``compute_dtype`` (mixed precision)."""
  return 'compute_dtype' in inspect.signature(mtl_jax.make_train_step).parameters


def make_method(name: str, num_tasks: int):
  """A registered method with its defaults (dwa, forum, static get their required options)."""
  if name in ('dwa', 'forum'):
    return weighting.get(name, steps_per_epoch=100)
  if name == 'static':
    return weighting.get(name, weights=np.ones(num_tasks, np.float32))
  return weighting.get(name)


def method_state(method, num_tasks: int, shared):
  """The method's initial state (sized like the shared params where it says so)."""
  if method.state_like_params:
    return method.init(num_tasks, shared)
  return method.init(num_tasks)


class Setup:
  """One model at T tasks: the model, its tasks, a base train state and a device batch."""

  def __init__(self, name: str, num_tasks: int, cfg: dict, seed: int):
    self.name, self.num_tasks = name, num_tasks
    self.tasks = tasks_lib.TaskSet([tasks_lib.binary(a) for a in ATTRIBUTES[:num_tasks]])
    backbone = models.get_backbone(name, **cfg[name])
    self.model = models.get('shared_bottom', self.tasks, backbone)
    self.optimizer = optax.adam(1e-3)
    rng = np.random.default_rng(seed)
    size, b = cfg['image_size'], cfg['batch']
    inputs = rng.standard_normal((b, size, size, 3)).astype(np.float32)
    labels = {n: rng.integers(0, 2, (b, 1)).astype(np.float32) for n in self.tasks.names}
    self.batch = jax.device_put({'inputs': inputs, 'labels': labels,
                                 'masks': {n: np.ones((b,), bool) for n in labels}})
    self.hand_batch = jax.device_put({'inputs': inputs, 'labels': labels})
    self.base = mtl_jax.init_train_state(self.model, self.tasks, self.optimizer,
                                         weighting.get('ew'), self.batch['inputs'],
                                         jax.random.PRNGKey(seed))

  def state(self, method):
    """A fresh state for ``method`` (its own buffers: the step donates them), from the base
    state's params (``init_train_state`` once per setup: the model's init compiles once)."""
    params = self.base.params
    state = self.base.replace(opt_state=self.optimizer.init(params),
                              weighting_state=method_state(method, self.num_tasks,
                                                           params['shared']))
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)

  def batch_for(self, method):
    """The batch cut to a multiple of the method's sub-batches (128 -> 126 for 3)."""
    size = self.batch['inputs'].shape[0]
    keep = size - size % method.sub_batches
    return self.batch if keep == size else jax.tree.map(lambda x: x[:keep], self.batch)

  def param_counts(self) -> dict:
    count = lambda tree: int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
    return {'shared': count(self.base.params['shared']), 'task': count(self.base.params['task'])}


def library_step(setup: Setup, method, dtype: str, mode: str = 'auto', chunk_size=None):
  """The library's jitted, state-donating train step for ``method``."""
  extra = {}
  if dtype != 'float32':            # 'bfloat16+grads': per-task gradients stored in bf16 too
    extra = {'compute_dtype': 'bfloat16',
             **({'grad_dtype': 'bfloat16'} if dtype.endswith('+grads') else {})}
  return mtl_jax.make_train_step(setup.model, setup.tasks, setup.optimizer, method, mode=mode,
                                 chunk_size=chunk_size, **extra)


def hand_step(setup: Setup, dtype: str):
  """(jitted step, state): ``jax.value_and_grad`` of the sum of the tasks' mean sigmoid
  cross-entropies on the same model, the same optax update, the BatchNorm statistics carried;
  in bfloat16 the params and inputs are cast for the model and its outputs back to float32."""
  model, optimizer, names = setup.model, setup.optimizer, setup.tasks.names
  low = jnp.bfloat16 if dtype == 'bfloat16' else None
  cast = lambda tree: tree if low is None else jax.tree.map(
      lambda x: x.astype(low) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def loss_fn(params, model_state, batch):
    preds, new_state = model.apply({'params': cast(params), **model_state},
                                   cast(batch['inputs']), train=True, mutable=list(model_state))
    logits = jnp.stack([preds[n][:, 0] for n in names]).astype(jnp.float32)
    labels = jnp.stack([batch['labels'][n][:, 0] for n in names])
    loss = jnp.sum(jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=1))
    return loss, dict(new_state)

  def step(state, batch):
    params, model_state, opt_state = state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, model_state)
    return (optax.apply_updates(params, updates), new_state, opt_state), loss

  params = setup.base.params
  state = (params, setup.base.model_state, optimizer.init(params))
  return jax.jit(step, donate_argnums=0), jax.tree.map(lambda x: jnp.array(x, copy=True), state)


# ----------------------------------------------------------------------------- measuring


def flops_of(stage) -> float | None:
  """``cost_analysis()['flops']`` of a lowered or compiled step (a dict, or a list of one)."""
  try:
    cost = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None else None


def memory_of(compiled) -> dict:
  """XLA's buffer sizes (bytes) and peak = argument + output - alias + temp."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  out = {k: int(getattr(stats, f'{k}_size_in_bytes', 0) or 0)
         for k in ('argument', 'output', 'alias', 'temp')}
  out['peak'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  return out


def lower_step(cell: dict, step, state, batch):
  """The lowered step; adds ``lower_s`` and the lowered program's ``flops_lowered``."""
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  cell['lower_s'] = time.perf_counter() - start
  cell['flops_lowered'] = flops_of(lowered)
  return lowered


def compile_lowered(cell: dict, lowered):
  """The compiled step; adds ``compile_s``, ``flops`` and ``memory`` (thread-safe: only
  ``cell`` is written)."""
  start = time.perf_counter()
  compiled = lowered.compile()
  cell['compile_s'] = time.perf_counter() - start
  cell.update(flops=flops_of(compiled), memory=memory_of(compiled))
  return compiled


def run_interleaved(runners: list, warmup: int, steps: int) -> list:
  """Per-step wall times (ms) of each runner [compiled, state, batch], their steps
  interleaved one by one, each ended by ``block_until_ready``, after ``warmup`` steps each."""
  for r in runners:
    for _ in range(warmup):
      r[1], out = r[0](r[1], r[2])
      jax.block_until_ready((r[1], out))
  times = [[] for _ in runners]
  for _ in range(steps):
    for r, t in zip(runners, times):
      start = time.perf_counter()
      r[1], out = r[0](r[1], r[2])
      jax.block_until_ready((r[1], out))
      t.append(1e3 * (time.perf_counter() - start))
  return times


def error_text(e: Exception, limit: int = 400) -> str:
  text = f'{type(e).__name__}: {e}'.strip().replace('\n', ' ')
  return text if len(text) <= limit else text[:limit] + '...'


def peak_flops(device_kind: str) -> dict | None:
  """The device's peak FLOP/s by precision, or None (a CPU, an unknown GPU)."""
  for name, peaks in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peaks
  return None


def utilisation(cell: dict, peaks: dict | None) -> None:
  """Adds achieved FLOP/s and, with ``peaks``, MFU to a timed cell: from the compiled step's
  FLOPs, or the lowered (unoptimised) step's where the compiled count is under half of it
  (operations XLA's cost model does not count, such as library calls)."""
  flops, lowered = cell.get('flops'), cell.get('flops_lowered')
  cell['flops_basis'] = 'compiled'
  if lowered and (not flops or flops < 0.5 * lowered):
    flops, cell['flops_basis'] = lowered, 'lowered'
  if not flops or not cell.get('step_ms'):
    return
  cell['flops_per_s'] = flops / (cell['step_ms'] / 1e3)
  if peaks:
    basis = 'bfloat16' if cell['dtype'] == 'bfloat16' else 'tf32'
    cell['peak_basis'], cell['mfu'] = basis, cell['flops_per_s'] / peaks[basis]


# ----------------------------------------------------------------------------- the suite


class Suite:
  """The cells measured so far, the budget, and one ``Setup`` per (model, T)."""

  def __init__(self, cfg: dict, phases: tuple):
    self.cfg, self.phases = cfg, phases
    self.start = time.monotonic()
    self.cells, self.timed, self.setups, self.params = [], {}, {}, {}
    self.device_kind = jax.devices()[0].device_kind
    self.peaks = peak_flops(self.device_kind) if jax.default_backend() == 'gpu' else None
    self.bf16 = has_compute_dtype()
    shares = [SHARES[p] for p in phases]
    total = sum(shares)
    self.deadline = {p: cfg['budget_s'] * sum(shares[:i + 1]) / total
                     for i, p in enumerate(phases)}

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def setup(self, model: str, num_tasks: int) -> Setup:
    if (model, num_tasks) not in self.setups:
      s = Setup(model, num_tasks, self.cfg, self.cfg['seed'])
      self.setups[model, num_tasks] = s
      self.params.setdefault(model, {})[num_tasks] = s.param_counts()
    return self.setups[model, num_tasks]

  def skip_reason(self, cell: dict) -> str | None:
    """Why ``cell`` is not measured: the budget, or bfloat16 without the library's support."""
    if self.elapsed() > self.deadline[cell['phase']]:
      return (f"budget: {self.elapsed():.0f} s used, phase {cell['phase']} allotted up to "
              f"{self.deadline[cell['phase']]:.0f} s of --budget-s {self.cfg['budget_s']:.0f}")
    if cell['dtype'] == 'bfloat16' and not self.bf16:
      return NO_DTYPE
    return None

  def measure(self, groups: list, run: bool = True) -> None:
    """Measures groups of cells [(cell, build)], ``build() -> (step, state, batch)``, in
    chunks of about 2 x ``compile_workers`` cells: built and lowered in order, compiled
    concurrently, then each group's steps timed, interleaved within the group, while nothing
    compiles.  Records every cell with its status."""
    size = 2 * self.cfg['compile_workers'] if self.cfg['compile_workers'] > 1 else 1
    chunk = []
    for group in groups:
      chunk.append(group)
      if sum(len(g) for g in chunk) >= size:
        self._measure_chunk(chunk, run)
        chunk = []
    if chunk:
      self._measure_chunk(chunk, run)

  def _measure_chunk(self, chunk: list, run: bool) -> None:
    prepared = [[(cell, runner) for cell, runner in
                 ((cell, self._prepare(cell, build)) for cell, build in group)
                 if runner is not None] for group in chunk]
    jobs = [job for group in prepared for job in group]
    workers = min(self.cfg['compile_workers'], len(jobs))
    if workers > 1:
      with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: self._compile(*job), jobs))
    else:
      for job in jobs:
        self._compile(*job)
    for group in prepared:
      done = [(cell, runner) for cell, runner in group if cell['status'] == 'ok']
      if run and done:
        self._time(done)

  def _prepare(self, cell: dict, build):
    """[lowered step, state, batch], or None with the cell recorded skipped or failed."""
    self.cells.append(cell)
    reason = self.skip_reason(cell)
    if reason is None:
      try:
        step, state, batch = build()
      except (ValueError, TypeError) as e:     # the library's checks: not defined here
        reason = str(e).split('\n')[0]
    if reason is not None:
      cell.update(status='skipped', reason=reason)
      return None
    cell['batch'] = int(batch['inputs'].shape[0])
    print(f"  {cell['phase']} {cell['model']} T={cell['num_tasks']} {cell['dtype']} "
          f"{cell['method']} {cell['mode']}{cell['chunk_size'] or ''}", file=sys.stderr,
          flush=True)
    try:
      return [lower_step(cell, step, state, batch), state, batch]
    except Exception as e:  # pylint: disable=broad-except
      cell.update(status='failed', reason=error_text(e))
      return None

  @staticmethod
  def _compile(cell: dict, runner: list) -> None:
    try:
      runner[0] = compile_lowered(cell, runner[0])
      cell['status'] = 'ok'
    except Exception as e:  # pylint: disable=broad-except
      cell.update(status='failed', reason=error_text(e))

  def _time(self, runners: list) -> None:
    try:
      times = run_interleaved([r for _, r in runners], self.cfg['warmup'], self.cfg['steps'])
    except Exception as e:  # pylint: disable=broad-except
      for cell, _ in runners:
        cell.update(status='failed', reason=error_text(e))
      return
    for (cell, _), t in zip(runners, times):
      cell.update(step_ms=statistics.median(t), step_ms_min=min(t), step_ms_all=t)
      utilisation(cell, self.peaks)
      self.timed[key(cell)] = cell

  def method_cell(self, phase, model, num_tasks, dtype, name, mode='auto', chunk=None):
    """(cell, build) of the library's step for method ``name``."""
    cell = dict(phase=phase, model=model, num_tasks=num_tasks, dtype=dtype, method=name,
                mode=mode, chunk_size=chunk)

    def build():
      setup = self.setup(model, num_tasks)
      method = make_method(name, num_tasks)
      jax.eval_shape(lambda: method_state(method, num_tasks, setup.base.params['shared']))
      step = library_step(setup, method, dtype, mode, chunk)
      return step, setup.state(method), setup.batch_for(method)

    return cell, build

  def hand_cell(self, phase, model, num_tasks, dtype):
    cell = dict(phase=phase, model=model, num_tasks=num_tasks, dtype=dtype, method=HAND,
                mode='-', chunk_size=None)

    def build():
      setup = self.setup(model, num_tasks)
      return (*hand_step(setup, dtype), setup.hand_batch)

    return cell, build


def key(cell: dict) -> tuple:
  return (cell['model'], cell['num_tasks'], cell['dtype'], cell['method'], cell['mode'],
          cell['chunk_size'])


# ----------------------------------------------------------------------------- phases


def among(cfg: dict, field: str, allowed: str) -> tuple:
  """The phase's own list ``cfg[field]`` restricted to ``cfg[allowed]`` (--models, --dtypes)."""
  return tuple(x for x in cfg[field] if x in cfg[allowed])


def phase_overhead(suite: Suite) -> None:
  """ew against the hand-written step, interleaved, per (model, T, dtype)."""
  cfg = suite.cfg
  suite.measure([[suite.hand_cell('overhead', model, num_tasks, dtype),
                  suite.method_cell('overhead', model, num_tasks, dtype, 'ew')]
                 for num_tasks in cfg['overhead_tasks']
                 for model in among(cfg, 'overhead_models', 'models')
                 for dtype in cfg['dtypes']])


def new_cells(suite: Suite, cells) -> list:
  """One group per cell not timed before (at the same model, T, dtype, method and mode)."""
  return [[cell] for cell in cells if key(cell[0]) not in suite.timed]


def phase_grid(suite: Suite) -> None:
  """The representative methods x T x models x dtypes."""
  cfg = suite.cfg
  suite.measure(new_cells(suite, (
      suite.method_cell('grid', model, num_tasks, dtype, name)
      for num_tasks in cfg['grid_tasks'] for model in cfg['models']
      for name in cfg['grid_methods'] for dtype in among(cfg, 'grid_dtypes', 'dtypes'))))


def memory_modes(num_tasks: int) -> tuple:
  """(mode, chunk_size) of the memory phase: 'param' whole and in chunks of T/4, rep, gram."""
  return (('param', None), ('param', max(1, num_tasks // 4)), ('rep', None), ('gram', None))


def phase_memory(suite: Suite) -> None:
  """The memory method's step in every engine mode, compiled only."""
  cfg = suite.cfg
  low = ([(dtype, 'param', None) for dtype in ('bfloat16', 'bfloat16+grads')]
         if has_compute_dtype() else [])         # J in float32 vs J stored in bfloat16
  suite.measure([[suite.method_cell('memory', model, num_tasks, dtype,
                                    cfg['memory_method'], mode, chunk)]
                 for num_tasks in cfg['memory_tasks']
                 for model in among(cfg, 'memory_models', 'models')
                 for dtype, mode, chunk in ([('float32', m, c) for m, c in
                                             memory_modes(num_tasks)] + low)], run=False)


def phase_methods(suite: Suite) -> None:
  """Every method at one T, float32, on one model."""
  cfg = suite.cfg
  if cfg['methods_model'] in cfg['models']:
    suite.measure(new_cells(suite, (
        suite.method_cell('methods', cfg['methods_model'], cfg['methods_tasks'], 'float32',
                          name) for name in cfg['methods'] or weighting.names())))


PHASE_FUNCTIONS = {'overhead': phase_overhead, 'grid': phase_grid, 'memory': phase_memory,
                   'methods': phase_methods}


# ----------------------------------------------------------------------------- summaries


def overhead_summary(cells: list) -> list:
  """ew / hand-written per (model, T, dtype) of the overhead phase, where both ran."""
  pairs = {}
  for c in cells:
    if c['phase'] == 'overhead' and c['status'] == 'ok':
      pairs.setdefault((c['model'], c['num_tasks'], c['dtype']), {})[c['method']] = c
  rows = []
  for (model, num_tasks, dtype), p in pairs.items():
    if HAND in p and 'ew' in p and 'step_ms' in p[HAND] and 'step_ms' in p['ew']:
      ew, hand = p['ew'], p[HAND]
      flops = (ew['flops'] / hand['flops']) if ew.get('flops') and hand.get('flops') else None
      rows.append(dict(model=model, num_tasks=num_tasks, dtype=dtype, ew_ms=ew['step_ms'],
                       hand_ms=hand['step_ms'], ratio=ew['step_ms'] / hand['step_ms'],
                       flops_ratio=flops))
  return rows


def memory_summary(cells: list) -> list:
  """XLA peak bytes per (model, T) and mode of the memory phase, with ew's (same T, float32)
  where it was compiled, as the activations-only reference."""
  ew = {(c['model'], c['num_tasks']): c['memory'].get('peak') for c in cells
        if c['method'] == 'ew' and c['dtype'] == 'float32' and c['status'] == 'ok'}
  rows = {}
  for c in cells:
    if c['phase'] == 'memory' and c['status'] == 'ok':
      row = rows.setdefault((c['model'], c['num_tasks']), dict(
          model=c['model'], num_tasks=c['num_tasks'], method=c['method'],
          ew_peak=ew.get((c['model'], c['num_tasks'])), peak={}, temp={}))
      mode = (c['mode'] + (f"_chunk{c['chunk_size']}" if c['chunk_size'] else '')
              + ('' if c['dtype'] == 'float32' else f"_{c['dtype']}"))
      row['peak'][mode], row['temp'][mode] = c['memory'].get('peak'), c['memory'].get('temp')
  return list(rows.values())


# ----------------------------------------------------------------------------- output


def fmt(value, spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value * scale, spec)


def print_cells(cells: list) -> None:
  print(f"{'phase':<9}{'model':<12}{'T':>3} {'dtype':<15}{'method':<15}{'mode':<9}{'status':<8}"
        f"{'cmp s':>7}{'step ms':>9}{'GFLOP':>9}{'TFLOP/s':>9}{'MFU %':>7}{'peak MB':>9}"
        f"{'temp MB':>9}  note")
  for c in cells:
    mem = c.get('memory') or {}
    mode = c['mode'] + (str(c['chunk_size']) if c['chunk_size'] else '')
    print(f"{c['phase']:<9}{c['model']:<12}{c['num_tasks']:>3} {c['dtype']:<15}"
          f"{c['method']:<15}{mode:<9}{c['status']:<8}{fmt(c.get('compile_s'), '.1f'):>7}"
          f"{fmt(c.get('step_ms'), '.2f'):>9}{fmt(c.get('flops'), '.2f', 1e-9):>9}"
          f"{fmt(c.get('flops_per_s'), '.3f', 1e-12):>9}{fmt(c.get('mfu'), '.1f', 100):>7}"
          f"{fmt(mem.get('peak'), '.1f', 2 ** -20):>9}{fmt(mem.get('temp'), '.1f', 2 ** -20):>9}"
          f"  {(c.get('reason') or '')[:70]}")


def print_report(report: dict) -> None:
  m = report['machine']
  print(f"\nGPU suite on {m['device_kind']} ({m['backend']}), jax {m['jax']}; wall "
        f"{report['wall_s']:.0f} s; load {m['loadavg_before']} -> {m['loadavg_after']}; "
        f"compute_dtype available: {report['compute_dtype_available']}")
  print_cells(report['cells'])
  print('\noverhead: ew step / hand-written single-loss step (interleaved medians)')
  for r in report['overhead']:
    print(f"  {r['model']:<12} T={r['num_tasks']:<3} {r['dtype']:<9} ew {r['ew_ms']:.2f} ms, "
          f"hand {r['hand_ms']:.2f} ms: x{r['ratio']:.2f} (FLOPs x{fmt(r['flops_ratio'], '.3f')})")
  print('\nmemory: XLA peak MB (argument + output - alias + temp) by engine mode')
  for r in report['memory']:
    modes = ', '.join(f'{k} {fmt(v, ".1f", 2 ** -20)}' for k, v in r['peak'].items())
    print(f"  {r['model']:<12} T={r['num_tasks']:<3} {r['method']}: {modes}; ew "
          f"{fmt(r['ew_peak'], '.1f', 2 ** -20)}")
  counts = report['counts']
  print(f"\n{counts['ok']} cells ok, {counts['skipped']} skipped, {counts['failed']} failed")


def machine(load_before) -> dict:
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  return {'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'device_count': jax.device_count(), 'jax': jax.__version__,
          'jaxlib': getattr(jaxlib, '__version__', None), 'flax': flax.__version__,
          'python': platform.python_version(), 'cpu_count': os.cpu_count(),
          'loadavg_before': load_before,
          'loadavg_after': [round(x, 2) for x in os.getloadavg()],
          'matmul_precision': str(getattr(jax.config, 'jax_default_matmul_precision', None)),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def jsonable(value):
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  return value


def report_of(suite: Suite, load_before, args) -> dict:
  cells = suite.cells
  return {
      'design': __doc__,
      'config': jsonable(suite.cfg), 'phases': list(suite.phases), 'quick': args.quick,
      'deadlines_s': suite.deadline, 'param_counts': jsonable(suite.params),
      'compute_dtype_available': suite.bf16, 'peak_flops': suite.peaks,
      'machine': machine(load_before), 'wall_s': suite.elapsed(),
      'counts': {s: sum(c['status'] == s for c in cells) for s in ('ok', 'skipped', 'failed')},
      'overhead': overhead_summary(cells), 'memory': memory_summary(cells), 'cells': cells,
  }


# ----------------------------------------------------------------------------- main


def ints(text: str) -> tuple:
  return tuple(int(x) for x in text.split(',') if x)


def names(text: str) -> tuple:
  return tuple(x.strip() for x in text.split(',') if x.strip())


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='CPU smoke test: tiny models, T = 2, 3')
  p.add_argument('--out', help='JSON path (default: results/gpu_suite.json; --quick: a temp '
                 'file)')
  p.add_argument('--budget-s', type=float, help='stop measuring after this many seconds '
                 '(default 450; --quick 600); the cells left are recorded as skipped')
  p.add_argument('--phases', type=names, default=PHASES, help=f'subset of {PHASES}')
  p.add_argument('--models', type=names, help='subset of resnet,transformer')
  p.add_argument('--dtypes', type=names, help='subset of float32,bfloat16')
  p.add_argument('--grid-tasks', type=ints, help='T values of the grid (default 2,8,32)')
  p.add_argument('--grid-methods', type=names, help='methods of the grid')
  p.add_argument('--methods', type=names, help='methods of the methods phase (default: all)')
  p.add_argument('--methods-tasks', type=int, help='T of the methods phase (default 8)')
  p.add_argument('--overhead-tasks', type=ints, help='T values of the overhead phase')
  p.add_argument('--memory-tasks', type=ints, help='T values of the memory phase (8,32)')
  p.add_argument('--batch', type=int, help='batch size (default 128)')
  p.add_argument('--image-size', type=int, help='image height = width (default 64)')
  p.add_argument('--steps', type=int, help='timed steps per cell (default 10)')
  p.add_argument('--warmup', type=int, help='warm-up steps per cell (default 2)')
  p.add_argument('--compile-workers', type=int, help='concurrent compiles (default: 4 on a '
                 'GPU, 1 on a CPU; 1 gives serial compile times)')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  unknown = set(args.phases) - set(PHASES)
  if unknown:
    p.error(f'--phases: unknown {sorted(unknown)}; choose from {PHASES}')
  return args


def config_from(args) -> dict:
  """FULL or QUICK with the flags that were given."""
  cfg = dict(QUICK if args.quick else FULL, seed=args.seed)
  for field in ('budget_s', 'models', 'dtypes', 'grid_tasks', 'grid_methods', 'methods',
                'methods_tasks', 'overhead_tasks', 'memory_tasks', 'batch', 'image_size',
                'steps', 'warmup', 'compile_workers'):
    if getattr(args, field) is not None:
      cfg[field] = getattr(args, field)
  if cfg['compile_workers'] is None:
    cfg['compile_workers'] = 4 if jax.default_backend() == 'gpu' else 1
  bad = set(cfg['models']) - {'resnet', 'transformer'}
  bad |= set(cfg['dtypes']) - {'float32', 'bfloat16'}
  if bad:
    raise SystemExit(f'gpu_suite: unknown model or dtype {sorted(bad)}')
  return cfg


def main(argv=None) -> dict:
  args = parse_args(argv)
  cfg = config_from(args)
  out = args.out or (os.path.join(tempfile.gettempdir(), 'gpu_suite_quick.json') if args.quick
                     else RESULTS)
  load_before = [round(x, 2) for x in os.getloadavg()]
  phases = tuple(p for p in PHASES if p in args.phases)
  suite = Suite(cfg, phases)
  print(f'gpu_suite: {jax.default_backend()} {suite.device_kind}, phases {phases}, budget '
        f"{cfg['budget_s']:.0f} s, compute_dtype available: {suite.bf16}", file=sys.stderr)
  for phase in phases:      # (the setups stay: 6 (model, T) pairs, each initialised once)
    PHASE_FUNCTIONS[phase](suite)
  report = report_of(suite, load_before, args)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=1)
  print_report(report)
  print(f'\nwrote {out}')
  return report


if __name__ == '__main__':
  main()
