"""Peak memory and step time of the engine's gradient modes against the number of tasks T.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/memory.py           # full run (see README)
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/memory.py --quick   # smoke test, < 1 min

Two shared-bottom models with T linear heads of 10 classes (cross-entropy per task, batch
64, ``optax.sgd(0.01)``), built with the public trainer pieces (``models.get``,
``init_train_state``, ``make_train_step``: the jitted, state-donating step):

* ``mlp``: a shared MLP 784-256-256 (ReLU);
* ``cnn``: ``models.get_backbone('cnn', channels=(16, 32), output='flatten')`` on 28x28x1
  (conv 3x3 -> ReLU -> max-pool 2, twice; a 1568-d representation).

and five steps per (model, T): ``ew`` (loss-only: one backward pass, the baseline "what the
model's activations need"), and ``upgrad`` (a Gram method) in ``mode='param'`` (the per-task
Jacobian J of the shared parameters), ``mode='param', chunk_size=8`` (J pulled back 8 tasks
at a time with ``lax.map``), ``mode='rep'`` (per-task gradients of the representation only)
and ``mode='gram'`` (the Gramian mode: G from each layer's inputs and per-task output
cotangents, never J).

Every (model, T, mode) runs in its own subprocess (``--per-process one``) and reports:

* XLA's compiled memory analysis of the step: argument, output, alias (donated inputs reused
  as outputs) and temp sizes, and **XLA peak = argument + output - alias + temp**, the bytes
  the step's buffers occupy at once (an aliased buffer counted once);
* the process's resident set (Linux ``VmRSS``, and its peak ``VmHWM``, the counter behind
  ``ru_maxrss``), against a baseline taken after imports, data, model and train state (and
  one small warm-up compile), since the JAX runtime alone is a few hundred MB: the peak
  while compiling (``RSS cmp``), the peak while running the step's first two steps over the
  baseline (``RSS +base``: it includes what the compiler leaves resident, tens to hundreds
  of MB, never returned to the system), and the same peak over the resident set right after
  compiling (``RSS run``: what running the step adds, comparable with the XLA peak).  The
  peak counter is reset after compiling by writing 5 to ``/proc/self/clear_refs``; where
  that fails only ``RSS +base`` (then ``ru_maxrss``, compiling included) is reported;
* the lower + compile wall time;
* the step time: median over interleaved repeats of a few back-to-back steps of this step
  and of the ``ew`` step compiled in the same subprocess (after the memory measurements),
  and their ratio.  Steps slower than ``--slow-s`` get ``--slow-repeats`` repeats of one step.

``--quick`` is a smoke test of the script: a tiny MLP (64-32-32, batch 16), T in {2, 8}, all
configurations in one subprocess (``--per-process all``: the RSS figures are then not per
configuration, memory freed by one is reused by the next), compiled at XLA's backend
optimisation level 0, short timings, no ``--explain``; it writes ``results/memory_quick.*``.

With ``--explain`` (on by default in the full run), one more subprocess per (model, T)
compiles the ``gram`` step with XLA's dump turned on and records the largest buffers of its
memory-usage report, to show what grows with T.

Target (issue 13): the Gramian mode's peak at T = 128 within 1.2x its peak at T = 2 beyond
what the model's activations need, i.e. (peak_gram(128) - peak_ew(128)) <= 1.2
(peak_gram(2) - peak_ew(2)), on XLA peaks; reported, never asserted.  Writes ``--out``
(JSON) and ``--plot`` (peak memory vs T per mode, log-log, a panel per model).
"""

import argparse
import glob
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MODES = {   # name -> (weighting method, make_train_step keyword arguments)
    'ew': ('ew', {}),
    'param': ('upgrad', {'mode': 'param'}),
    'param_chunk8': ('upgrad', {'mode': 'param', 'chunk_size': 8}),
    'rep': ('upgrad', {'mode': 'rep'}),
    'gram': ('upgrad', {'mode': 'gram'}),
}
FULL_MODELS = {
    'mlp': {'backbone': 'mlp', 'options': {'hidden': (256, 256)}, 'input_shape': (784,),
            'title': 'MLP 784-256-256'},
    'cnn': {'backbone': 'cnn', 'options': {'channels': (16, 32), 'output': 'flatten'},
            'input_shape': (28, 28, 1), 'title': 'CNN conv16-pool-conv32-pool on 28x28x1'},
}
QUICK_MODELS = {
    'mlp': {'backbone': 'mlp', 'options': {'hidden': (32, 32)}, 'input_shape': (64,),
            'title': 'MLP 64-32-32'},
    'cnn': {'backbone': 'cnn', 'options': {'channels': (4, 8), 'output': 'flatten'},
            'input_shape': (8, 8, 1), 'title': 'CNN conv4-pool-conv8-pool on 8x8x1'},
}
CLASSES = 10
TARGET_RATIO = 1.2
TARGET_TASKS = (2, 128)
MB = 2.0 ** 20
MACHINE = {}    # filled from a worker's report (the parent imports no JAX)
QUICK_COMPILE = {'xla_backend_optimization_level': 0}   # --quick only: compile fast


# ------------------------------------------------------------------ memory counters (Linux)

def proc_status() -> dict:
  """{'VmRSS': bytes, 'VmHWM': bytes} of this process (empty off Linux)."""
  out = {}
  try:
    with open('/proc/self/status') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
          out[key] = int(value.split()[0]) * 1024
  except OSError:
    pass
  return out


def reset_peak() -> bool:
  """Resets the process's peak resident set (VmHWM, hence ru_maxrss) to the current one."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss() -> int:
  """The process's peak resident set in bytes (VmHWM, else ru_maxrss)."""
  status = proc_status()
  if 'VmHWM' in status:
    return status['VmHWM']
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss() -> int:
  return proc_status().get('VmRSS', 0)


# ----------------------------------------------------------------------------- the worker

def cotangent_widths(spec: dict) -> list:
  """Per-sample output sizes of the shared layers whose per-task cotangents the Gramian
  (and the param) mode hold: the dense layers' widths, the convolutions' H x W x C."""
  if spec['backbone'] == 'mlp':
    return list(spec['options']['hidden'])
  sizes, spatial = [], list(spec['input_shape'][:-1])
  for channels in spec['options']['channels']:
    sizes.append(int(_prod(spatial)) * channels)
    spatial = [n // 2 if n >= 2 else n for n in spatial]
  return sizes


def _prod(xs):
  out = 1
  for x in xs:
    out *= x
  return out


class Problem:
  """Model, tasks, optimizer and one device-resident batch for (model, T)."""

  def __init__(self, spec: dict, num_tasks: int, batch_size: int, seed: int = 0):
    import jax
    import numpy as np
    import optax
    from mtl_jax import models, tasks as tasks_lib
    self.tasks = tasks_lib.TaskSet([tasks_lib.multiclass(f't{i}', CLASSES)
                                    for i in range(num_tasks)])
    backbone = models.get_backbone(spec['backbone'], **spec['options'])
    self.model = models.get('shared_bottom', self.tasks, backbone, tower_hidden=())
    self.optimizer = optax.sgd(0.01)
    rng = np.random.default_rng(seed)
    batch = {
        'inputs': rng.standard_normal((batch_size,) + tuple(spec['input_shape']),
                                      dtype=np.float32),
        'labels': {n: rng.integers(0, CLASSES, (batch_size,)).astype(np.int32)
                   for n in self.tasks.names},
        'masks': {n: np.ones((batch_size,), np.float32) for n in self.tasks.names}}
    self.batch = jax.device_put(batch)
    self.key = jax.random.PRNGKey(seed)
    self.ew = None    # [compiled ew step, its state], for the step-time ratios

  def method(self, mode: str):
    from mtl_jax import weighting
    return weighting.get(MODES[mode][0])

  def state(self, mode: str):
    import mtl_jax
    return mtl_jax.init_train_state(self.model, self.tasks, self.optimizer, self.method(mode),
                                    self.batch['inputs'], self.key)

  def step(self, mode: str):
    import mtl_jax
    return mtl_jax.make_train_step(self.model, self.tasks, self.optimizer, self.method(mode),
                                   **MODES[mode][1])

  def param_counts(self, state) -> dict:
    import jax
    import numpy as np
    size = lambda tree: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
    return {'shared': size(state.params['shared']), 'task': size(state.params['task'])}


def run_steps(step, state, batch, num_steps: int):
  """(wall seconds of ``num_steps`` back-to-back steps, the final state): step_time's."""
  from step_time import run_steps as timed  # imports jax: only once the flags are set
  return timed(step, state, batch, num_steps)


def memory_stats(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  out = {k: int(getattr(stats, k + '_size_in_bytes', 0) or 0)
         for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  out['peak'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  return out


def warm_up_runtime(compiler_options) -> None:
  """Compiles and runs a small MLP gradient step once, so that one-off costs of the first
  compile and execution in a process (code generator set-up, thread pools) fall before the
  baseline."""
  import jax
  import jax.numpy as jnp

  def loss(w, x):
    return jnp.sum(jax.nn.relu(x @ w) ** 2)

  x, w = jnp.ones((8, 16)), jnp.ones((16, 16))
  step = jax.jit(lambda w, x: w - 0.1 * jax.grad(loss)(w, x))
  jax.block_until_ready(step.lower(w, x).compile(compiler_options)(w, x))


def measure(problem: Problem, mode: str, args) -> dict:
  """Memory, compile time and step time of one (model, T, mode) in this process."""
  import jax
  import numpy as np
  state = problem.state(mode)
  jax.block_until_ready(state)
  res = {'mode': mode, 'method': MODES[mode][0], 'options': MODES[mode][1],
         'params': problem.param_counts(state)}

  base = current_rss()
  resettable = reset_peak()
  start = time.perf_counter()
  lowered = problem.step(mode).lower(state, problem.batch)
  mid = time.perf_counter()
  compiled = lowered.compile(args.compiler_options)
  end = time.perf_counter()
  res['compile'] = {'lower_s': mid - start, 'compile_s': end - mid, 'total_s': end - start}
  res['xla'] = memory_stats(compiled)
  res['rss'] = {'baseline': base, 'peak_resettable': resettable,
                'compile_peak_increase': peak_rss() - base}
  after_compile = current_rss()
  if resettable:
    reset_peak()
  else:
    res['rss']['compile_peak_increase'] = None    # only the whole process's peak is known

  # The memory run: the first steps (allocation of every buffer), then the peak.
  first_s, state = run_steps(compiled, state, problem.batch, 1)
  second_s, state = run_steps(compiled, state, problem.batch, 1)
  res['rss']['after_compile_increase'] = after_compile - base
  res['rss']['run_peak_increase'] = peak_rss() - base
  res['rss']['run_peak_over_compiled'] = peak_rss() - after_compile if resettable else None
  res['rss']['after_run_increase'] = current_rss() - base
  res['first_step_s'], res['second_step_s'] = first_s, second_s

  # Step time, interleaved with the ew step compiled here (after the memory measurements).
  runners = {mode: [compiled, state]}
  if mode != 'ew':
    if problem.ew is None:   # compiled once per (model, T) and process
      ew_state = problem.state('ew')
      ew_step = problem.step('ew').lower(ew_state, problem.batch).compile(args.compiler_options)
      _, ew_state = run_steps(ew_step, ew_state, problem.batch, 2)
      problem.ew = [ew_step, ew_state]
    runners['ew'] = problem.ew
  slow = second_s > args.slow_s
  repeats = args.slow_repeats if slow else args.repeats
  steps = 1 if slow else int(np.clip(round(args.repeat_s / max(second_s, 1e-6)), 1,
                                     args.max_steps))
  times = {name: [] for name in runners}
  cpu = {name: [0.0, 0.0] for name in runners}
  order = list(runners)
  rng = np.random.default_rng(args.seed)
  for _ in range(repeats):
    rng.shuffle(order)
    for name in order:
      r = runners[name]
      before = os.times()
      seconds, r[1] = run_steps(r[0], r[1], problem.batch, steps)
      after = os.times()
      times[name].append(1e3 * seconds / steps)
      cpu[name][0] += after.user - before.user
      cpu[name][1] += after.system - before.system
  res['timing'] = {'repeats': repeats, 'steps_per_repeat': steps, 'capped': slow,
                   'runs_ms': times,
                   'median_ms': {n: statistics.median(v) for n, v in times.items()},
                   'cpu_user_s': {n: c[0] for n, c in cpu.items()},
                   'cpu_system_s': {n: c[1] for n, c in cpu.items()}}
  res['step_ms'] = res['timing']['median_ms'][mode]
  res['ew_step_ms'] = res['timing']['median_ms']['ew']
  res['ratio_to_ew'] = res['step_ms'] / res['ew_step_ms']
  del runners, compiled, state
  return res


def worker(args) -> None:
  """Runs ``--configs`` (model:T:mode,...) in this process; JSON lines on stdout."""
  import jax  # noqa: F401  (imports before the baseline)
  import mtl_jax  # noqa: F401
  models = QUICK_MODELS if args.quick else FULL_MODELS
  warm_up_runtime(args.compiler_options)
  problems = {}
  for config in args.configs.split(','):
    model, num, mode = config.split(':')
    key = (model, int(num))
    if key not in problems:
      problems.clear()
      problems[key] = Problem(models[model], int(num), args.batch, args.seed)
    res = measure(problems[key], mode, args)
    res.update(model=model, num_tasks=int(num))
    print('RESULT ' + json.dumps(res), flush=True)
  print('MACHINE ' + json.dumps(machine_info()), flush=True)


def explain_worker(args) -> None:
  """Compiles the gram step of --configs (model:T) with the dump of XLA on (XLA_FLAGS set by
  the parent); prints the dump's memory-usage report's largest buffers."""
  models = QUICK_MODELS if args.quick else FULL_MODELS
  for config in args.configs.split(','):
    model, num = config.split(':')
    problem = Problem(models[model], int(num), args.batch, args.seed)
    state = problem.state('gram')
    problem.step('gram').lower(state, problem.batch).compile()
    print('EXPLAINED ' + json.dumps({'model': model, 'num_tasks': int(num)}), flush=True)


def parse_usage_report(path: str, top: int) -> dict:
  """The total and the ``top`` largest allocations (size, shapes) of XLA's
  memory-usage report of the temp space (its first table)."""
  with open(path) as f:
    text = f.read()
  total = re.search(r'Total bytes: (\d+)', text)
  rows = []
  for line in text.splitlines():
    m = re.match(r'\s*[\d.]+\w+\(\s*\d+%\);\s*([\d.]+)(\w+);\s*\d+;\s*(\d+);\s*(.*)$', line)
    if m:
      scale = {'B': 1, 'KiB': 2 ** 10, 'MiB': 2 ** 20, 'GiB': 2 ** 30}.get(m.group(2), 1)
      rows.append({'bytes': int(float(m.group(1)) * scale), 'values': int(m.group(3)),
                   'shapes': m.group(4).strip()})
    elif rows and not line.strip():
      break                                  # the first table (the temp space) only
  return {'total_bytes': int(total.group(1)) if total else None, 'largest': rows[:top]}


# ----------------------------------------------------------------------------- the parent

def spawn(args, configs: list, extra_env=None, explain=False) -> list:
  cmd = [sys.executable, os.path.abspath(__file__), '--explain-worker' if explain else
         '--worker', '--configs', ','.join(configs), '--batch', str(args.batch),
         '--seed', str(args.seed), '--repeats', str(args.repeats),
         '--slow-repeats', str(args.slow_repeats), '--slow-s', str(args.slow_s),
         '--repeat-s', str(args.repeat_s), '--max-steps', str(args.max_steps)]
  if args.quick:
    cmd.append('--quick')
  env = {**os.environ, **(extra_env or {})}
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
  if proc.returncode != 0:
    tail = '\n'.join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f'worker {configs} failed (exit {proc.returncode}):\n{tail}')
  tag = 'EXPLAINED ' if explain else 'RESULT '
  out = [json.loads(line[len(tag):]) for line in proc.stdout.splitlines()
         if line.startswith(tag)]
  for r in out:
    r['process_wall_s'] = time.time() - start
  for line in proc.stdout.splitlines():
    if line.startswith('MACHINE '):
      MACHINE.update(json.loads(line[len('MACHINE '):]))
  return out


def explain(args, model: str, num: int) -> dict:
  """The gram step's largest temp buffers, from XLA's memory-usage report (a dump)."""
  tmp = tempfile.mkdtemp(prefix='memory_explain_')
  try:
    flags = (os.environ.get('XLA_FLAGS', '') + f' --xla_dump_to={tmp}'
             ' --xla_dump_hlo_module_re=.*train_step.*').strip()
    spawn(args, [f'{model}:{num}'], {'XLA_FLAGS': flags}, explain=True)
    reports = glob.glob(os.path.join(tmp, '*train_step*memory-usage-report.txt'))
    if not reports:
      return {'error': 'no memory-usage report in the dump'}
    return parse_usage_report(sorted(reports)[-1], args.explain_top)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def machine_info() -> dict:
  import flax
  import jax
  import jaxlib
  import numpy as np
  import optax
  return {
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
      'optax': optax.__version__, 'numpy': np.__version__, 'python': platform.python_version(),
      'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
      'backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
      'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'jax_platforms': os.environ.get('JAX_PLATFORMS', ''),
  }


def verdict(results: list, model: str, lo: int, hi: int) -> dict:
  """The target: the gram peak beyond ew's at T=hi vs T=lo (XLA peaks; RSS alongside)."""
  get = lambda num, mode: next((r for r in results if r['model'] == model and
                                r['num_tasks'] == num and r['mode'] == mode), None)
  rows = {(num, mode): get(num, mode) for num in (lo, hi) for mode in ('gram', 'ew')}
  if any(v is None for v in rows.values()):
    return {}
  out = {'model': model, 'T_low': lo, 'T_high': hi}
  for kind, value in (('xla', lambda r: r['xla']['peak']),
                      ('rss', lambda r: r['rss']['run_peak_over_compiled'])):
    if any(value(r) is None for r in rows.values()):
      out[kind] = {'raw_ratio': None, 'beyond_ratio': None}
      continue
    g_lo, g_hi = value(rows[lo, 'gram']), value(rows[hi, 'gram'])
    e_lo, e_hi = value(rows[lo, 'ew']), value(rows[hi, 'ew'])
    beyond_lo, beyond_hi = g_lo - e_lo, g_hi - e_hi
    out[kind] = {'gram_low': g_lo, 'gram_high': g_hi, 'ew_low': e_lo, 'ew_high': e_hi,
                 'raw_ratio': g_hi / g_lo if g_lo > 0 else None,
                 'beyond_ew_low': beyond_lo, 'beyond_ew_high': beyond_hi,
                 'beyond_ratio': beyond_hi / beyond_lo if beyond_lo > 0 else None}
  cot = lambda num: next(r.get('cotangent_bytes') for r in results if r['model'] == model
                         and r['num_tasks'] == num and r['mode'] == 'gram')
  if cot(hi):
    out['xla']['beyond_ew_high_in_cotangent_sets'] = out['xla']['beyond_ew_high'] / cot(hi)
  ratio = out['xla']['beyond_ratio']
  out['pass'] = ratio is not None and ratio <= TARGET_RATIO
  return out


def print_table(report: dict) -> None:
  cfg = report['config']
  print(f"\nbatch {cfg['batch']}, sgd(0.01), Gram method upgrad.  XLA peak = argument + output - "
        "alias + temp (compiled.memory_analysis()); RSS +base: the process's peak resident set "
        "while running the step over the baseline after imports, data and state (the compiler's "
        "leftovers included); RSS run: the same peak over the resident set after compiling; "
        "RSS cmp: the peak while compiling, over the baseline; step: median ms, and x the ew "
        "step timed in the same process")
  print(f"{'model':<5}{'T':>5} {'mode':<13}{'XLA peak':>10}{'temp':>10}{'RSS +base':>11}"
        f"{'RSS run':>10}{'RSS cmp':>10}{'cot':>10}{'step ms':>10}{'x ew':>7}{'cmp s':>7}")
  mb = lambda b: 'n/a' if b is None else f'{b / MB:.{2 if abs(b) < 10 * MB else 1}f}MB'
  for r in report['results']:
    rss = r['rss']
    mark = '*' if r['timing']['capped'] else ''
    print(f"{r['model']:<5}{r['num_tasks']:>5} {r['mode']:<13}{mb(r['xla']['peak']):>10}"
          f"{mb(r['xla']['temp']):>10}{mb(rss['run_peak_increase']):>11}"
          f"{mb(rss.get('run_peak_over_compiled')):>10}{mb(rss['compile_peak_increase']):>10}"
          f"{mb(r.get('cotangent_bytes')):>10}{r['step_ms']:>9.2f}{mark:1}"
          f"{r['ratio_to_ew']:>7.2f}{r['compile']['total_s']:>7.1f}")
  print("(cot: T x B x the shared layers' output sizes x 4 bytes, one set of per-task "
        "cotangents; '*': a slow step, timed with fewer repeats of one step)")
  for v in report['verdicts']:
    x, rss = v['xla'], v['rss']
    ratio = lambda r, f: f'{r:{f}}x' if r is not None else 'n/a'
    print(f"\n{v['model']}: gram peak T={v['T_high']} / T={v['T_low']}: raw "
          f"{ratio(x['raw_ratio'], '.2f')} ({mb(x['gram_high'])} / {mb(x['gram_low'])}); "
          f"beyond ew: {mb(x['beyond_ew_high'])} / {mb(x['beyond_ew_low'])} = "
          f"{ratio(x['beyond_ratio'], '.1f')} (target <= {TARGET_RATIO}x: "
          f"{'PASS' if v['pass'] else 'FAIL'}); RSS run: raw {ratio(rss['raw_ratio'], '.2f')}, "
          f"beyond ew {ratio(rss['beyond_ratio'], '.1f')}")
    if 'beyond_ew_high_in_cotangent_sets' in x:
      print(f"  beyond ew at T={v['T_high']} = {x['beyond_ew_high_in_cotangent_sets']:.1f} x the "
            f"T per-task cotangents of the shared layers' outputs")
  for key, e in report.get('explain', {}).items():
    if 'largest' not in e:
      print(f"\ngram {key}: {e}")
      continue
    print(f"\ngram {key}: XLA's buffer assignment, {e['total_bytes'] / MB:.1f} MB in all "
          "(arguments, outputs, temp); the largest allocations (size: the values that share "
          "it over the step):")
    for row in e['largest']:
      print(f"  {row['bytes'] / MB:8.2f} MB  {row['shapes'][:110]}")


def plot(report: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter, ScalarFormatter
  models = list(dict.fromkeys(r['model'] for r in report['results']))
  fig, axes = plt.subplots(1, len(models), figsize=(5.8 * len(models), 4.4), squeeze=False)
  colors = dict(zip(MODES, ('black', 'tab:red', 'tab:orange', 'tab:green', 'tab:blue')))
  for ax, model in zip(axes[0], models):
    for mode in MODES:
      rows = sorted((r for r in report['results'] if r['model'] == model and r['mode'] == mode),
                    key=lambda r: r['num_tasks'])
      if not rows:
        continue
      ts = [r['num_tasks'] for r in rows]
      ax.plot(ts, [r['xla']['peak'] / MB for r in rows], 'o-', color=colors[mode],
              label=f'{mode} (XLA peak)')
      if any(r['rss']['run_peak_over_compiled'] is None for r in rows):
        continue
      ax.plot(ts, [max(r['rss']['run_peak_over_compiled'], 1) / MB for r in rows], 'x:',
              color=colors[mode], alpha=0.7, label=f'{mode} (RSS run)')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(report['config']['tasks'])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('number of tasks T')
    ax.set_ylabel('peak memory of one train step (MB)')
    spec = report['config']['models'][model]
    title = spec.get('title') or (QUICK_MODELS if report['config']['quick']
                                  else FULL_MODELS).get(model, {}).get('title', model)
    ax.set_title(f"{model}: {title}, "
                 f"{CLASSES}-class linear heads", fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
  axes[0][0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"Peak memory vs T (batch {report['config']['batch']}; upgrad in the gradient "
               f"modes; ew: loss only)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default=None, help='comma-separated T (default 2,8,32,128)')
  parser.add_argument('--models', default=None, help='default mlp,cnn (--quick: mlp)')
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--batch', type=int, default=None, help='batch size (default 64)')
  parser.add_argument('--repeats', type=int, default=None, help='timed repeats (median)')
  parser.add_argument('--repeat-s', type=float, default=None,
                      help='aim of each repeat in seconds, sets the steps per repeat '
                           '(default 0.3; --quick 0.05)')
  parser.add_argument('--max-steps', type=int, default=20, help='at most this many per repeat')
  parser.add_argument('--slow-s', type=float, default=2.0,
                      help='a step slower than this gets --slow-repeats repeats of 1 step')
  parser.add_argument('--slow-repeats', type=int, default=3)
  parser.add_argument('--skip', default='',
                      help='model:T:mode,... configurations left out (e.g. to cap a slow one)')
  parser.add_argument('--per-process', choices=('one', 'all'), default=None,
                      help="'one' configuration per subprocess (default), or 'all' in one "
                           "(--quick; peaks separated by resetting VmHWM)")
  parser.add_argument('--explain', dest='explain', action='store_true', default=None,
                      help="dump the gram step's XLA buffers (default: on, off with --quick)")
  parser.add_argument('--no-explain', dest='explain', action='store_false')
  parser.add_argument('--explain-top', type=int, default=8)
  parser.add_argument('--timeout', type=float, default=1800, help='per subprocess, seconds')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: a tiny MLP, T in 2,8, batch 16, one subprocess, '
                           'compiled at XLA backend optimisation level 0')
  parser.add_argument('--seed', type=int, default=0)
  here = os.path.dirname(os.path.abspath(__file__))
  parser.add_argument('--out', default=None)
  parser.add_argument('--plot', default=None)
  parser.add_argument('--from-json', default=None,
                      help='print the table and draw the plot of an earlier run\'s JSON')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--explain-worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--configs', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.batch = args.batch or (16 if args.quick else 64)
  args.repeats = args.repeats or (3 if args.quick else 7)
  args.compiler_options = QUICK_COMPILE if args.quick else None
  args.repeat_s = args.repeat_s or (0.05 if args.quick else 0.3)
  if args.worker:
    return worker(args)
  if args.explain_worker:
    return explain_worker(args)
  if args.from_json:
    with open(args.from_json) as f:
      report = json.load(f)
    print_table(report)
    plot(report, args.plot or os.path.splitext(args.from_json)[0] + '.png')
    return None
  args.tasks = args.tasks or ('2,8' if args.quick else '2,8,32,128')
  args.models = args.models or ('mlp' if args.quick else 'mlp,cnn')
  args.per_process = args.per_process or ('all' if args.quick else 'one')
  args.explain = (not args.quick) if args.explain is None else args.explain
  suffix = '_quick' if args.quick else ''
  args.out = args.out or os.path.join(here, 'results', f'memory{suffix}.json')
  args.plot = args.plot or os.path.join(here, 'results', f'memory{suffix}.png')
  model_specs = QUICK_MODELS if args.quick else FULL_MODELS
  models = args.models.split(',')
  modes = args.modes.split(',')
  unknown = sorted(set(models) - set(model_specs)) + sorted(set(modes) - set(MODES))
  if unknown:
    parser.error(f'unknown models or modes {unknown}')
  task_counts = [int(t) for t in args.tasks.split(',')]
  skip = set(s for s in args.skip.split(',') if s)
  configs = [f'{m}:{t}:{mode}' for m in models for t in task_counts for mode in modes
             if f'{m}:{t}:{mode}' not in skip]

  start = time.time()
  load_before = os.getloadavg()
  results = []
  if args.per_process == 'all':
    print(f'{len(configs)} configurations in one subprocess', file=sys.stderr, flush=True)
    results = spawn(args, configs)
  else:
    for i, config in enumerate(configs):
      print(f'[{i + 1}/{len(configs)}] {config} (load {os.getloadavg()[0]:.1f}, '
            f'{time.time() - start:.0f}s)', file=sys.stderr, flush=True)
      results += spawn(args, [config])
  for r in results:
    spec = model_specs[r['model']]
    r['cotangent_bytes'] = 4 * r['num_tasks'] * args.batch * sum(cotangent_widths(spec))
  explained = {}
  if args.explain and 'gram' in modes:
    for m in models:
      for t in task_counts:
        print(f'explain gram {m} T={t}', file=sys.stderr, flush=True)
        explained[f'{m} T={t}'] = explain(args, m, t)

  lo, hi = min(task_counts), max(task_counts)
  if not args.quick and (lo, hi) != TARGET_TASKS:
    print(f'note: the target compares T={TARGET_TASKS[1]} with T={TARGET_TASKS[0]}; this run '
          f'compares T={hi} with T={lo}', file=sys.stderr)
  verdicts = [v for v in (verdict(results, m, lo, hi) for m in models) if v]
  report = {
      'config': {'quick': args.quick, 'tasks': task_counts, 'batch': args.batch,
                 'models': {m: {**model_specs[m], 'input_shape': list(model_specs[m]['input_shape']),
                                'cotangent_widths': cotangent_widths(model_specs[m])}
                            for m in models},
                 'modes': {m: {'method': MODES[m][0], **MODES[m][1]} for m in modes},
                 'heads': f'linear, {CLASSES} classes each (tower_hidden=())',
                 'optimizer': 'sgd(0.01)', 'repeats': args.repeats,
                 'repeat_s': args.repeat_s, 'max_steps': args.max_steps,
                 'slow_s': args.slow_s, 'slow_repeats': args.slow_repeats,
                 'skipped': sorted(skip), 'per_process': args.per_process, 'seed': args.seed,
                 'xla_peak': 'argument + output - alias + temp (compiled.memory_analysis())',
                 'rss': 'run_peak_increase: VmHWM while running - VmRSS at the baseline '
                        '(after imports, data, model, state); run_peak_over_compiled: VmHWM '
                        'while running - VmRSS after compiling; compile_peak_increase: VmHWM '
                        'while compiling - baseline'},
      'machine': {**MACHINE, 'loadavg_before': load_before,
                  'loadavg_after': os.getloadavg(), 'wall_s': time.time() - start},
      'results': results,
      'verdicts': verdicts,
      'explain': explained,
      'target': f'(peak_gram(T={TARGET_TASKS[1]}) - peak_ew) <= {TARGET_RATIO} x '
                f'(peak_gram(T={TARGET_TASKS[0]}) - peak_ew), XLA peaks',
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print_table(report)
  try:
    plot(report, args.plot)
    print(f'wrote {args.plot}')
  except ImportError as e:
    print(f'no plot ({e}; pip install -e ".[plots]")')
  print(f"wrote {args.out} ({report['machine']['wall_s']:.0f}s; load average "
        f"{load_before[0]:.2f} before, {report['machine']['loadavg_after'][0]:.2f} after)")


if __name__ == '__main__':
  main()
