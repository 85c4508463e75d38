"""Train-step speed of every weighting method on a shared-bottom MLP (CPU benchmark).

    .venv/bin/python benchmarks/step_time.py                 # full run (~10 min, 2 cores)
    .venv/bin/python benchmarks/step_time.py --quick         # tiny smoke test

For each number of tasks T (regression tasks on the synthetic data, one fixed batch) it
measures, in one process with the methods interleaved in a fresh random order each repeat:

* every registered method's jitted, state-donating train step (``make_train_step``, the
  default ``mode='auto'``: the Gramian mode for Gram methods): the median over ``--repeats``
  of the wall time of ``--steps`` back-to-back steps (ended by ``jax.block_until_ready``),
  after warm-up, as a ratio to ``ew``; ``--mode-methods`` also in each other ``--modes``
  entry (rows ``name[mode]``);
* a hand-written step: ``jax.value_and_grad`` of the sum of per-task MSEs on the same flax
  model's ``apply`` plus the same optax update, jitted and donated;
* three engine floors (not registered methods, diagnostic only): per-task Jacobian with
  trivial weights, with and without the Gram matrix and the extra VJP that Gram methods use;
* each Gram method's ``update`` alone, jitted on the Gram matrix of real per-task gradients;
* lower + compile wall time of the ``ew`` step and of ``--compile-methods`` in every mode.

Targets: ew <= 1.05 x hand-written; each Gram method in the Gramian mode <= 1.3 (1 + T) / 2
x ew (forward, T cotangent passes without weight gradients, one backward pass for d) at every
T; compile(T=32) <= 2 x compile(T=2) in every mode.  Writes ``--out`` (JSON) and prints a
table.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models
from mtl_jax import weighting
from mtl_jax.data import take, with_all_masks
from mtl_jax.data import make_synthetic
from mtl_jax import init_train_state, make_train_step
from mtl_jax.weighting import Needs, Weighting, WeightingInputs, WeightingResult

# Every method reading per-task gradients (GRAM or JACOBIAN; bilevel methods are reported
# against ew without a bound).
GRADIENT_METHODS = tuple(
    n for n in weighting.names()
    if weighting.get(n, **({'steps_per_epoch': 1} if n in ('dwa', 'forum') else {})).needs
    is not Needs.LOSSES and n != 'forum')
BILEVEL_METHODS = ('auto_lambda', 'moml', 'forum')
EW_VS_HAND = 1.05
GRAD_SLACK = 1.3
COMPILE_RATIO = 2.0
HAND = '(hand-written)'
GUARDED = '(hand-written + guard)'  # + the trainer's grad/param norms and non-finite guard
FLOORS = {  # name -> (needs, weights read the Gram matrix)
    '(floor: J)': (Needs.JACOBIAN, False),
    '(floor: J+G)': (Needs.JACOBIAN, True),
    '(floor: J+G+vjp)': (Needs.GRAM, True),
}

FULL = dict(input_dim=100, hidden=(512, 512), tower_hidden=(64,), batch_size=256)
QUICK = dict(input_dim=32, hidden=(32,), tower_hidden=(8,), batch_size=32)
QUICK_METHODS = 'ew,famo,mgda,upgrad'


def grad_bound(num_tasks: int) -> float:
  """The allowed Gram-method / ew ratio at T tasks in the Gramian mode: 1.3 (1 + T) / 2."""
  return GRAD_SLACK * (1 + num_tasks) / 2


def make_method(name: str, num_tasks: int, steps_per_epoch: int = 100) -> Weighting:
  """A registered method with its defaults (dwa and static get their required args)."""
  if name in ('dwa', 'forum'):
    return weighting.get(name, steps_per_epoch=steps_per_epoch)
  if name == 'static':
    return weighting.get(name, weights=np.ones(num_tasks, np.float32))
  return weighting.get(name)


def defined_for(name: str, num_tasks: int) -> bool:
  """Whether the method with its defaults takes T tasks: ``min_tasks``, and its ``init``'s own
  checks (trimmed_mean's default trim_number=1 needs T >= 3); the others are not timed at T."""
  method = make_method(name, num_tasks)
  if method.min_tasks > num_tasks:
    return False
  if method.state_like_params:
    return True
  try:
    jax.eval_shape(lambda: method.init(num_tasks))
  except ValueError as e:
    print(f'T={num_tasks}: {name} skipped: {e}', file=sys.stderr)
    return False
  return True


def make_floor(name: str) -> Weighting:
  """alpha = 1 (x (1 + 1e-12 tanh(G 1)) if it reads G, so that G is not dead code)."""
  needs, reads_gram = FLOORS[name]

  def update(inputs, state, key):
    del key
    alpha = jnp.ones_like(inputs.losses)
    if reads_gram:
      alpha = alpha + 1e-12 * jnp.tanh(inputs.gram.sum(1))
    return WeightingResult(alpha, state)

  return Weighting(name, needs, init=lambda num_tasks: (), update=update,
                   head_grads='unweighted')


class Setup:
  """Model, tasks, optimizer and one device-resident batch for T tasks."""

  def __init__(self, num_tasks: int, cfg: dict, seed: int = 0):
    data = make_synthetic(num_tasks, 0.5, input_dim=cfg['input_dim'],
                          sizes=(cfg['batch_size'], 1, 1), seed=seed)
    self.num_tasks = num_tasks
    self.tasks = data.tasks
    backbone = models.get_backbone('mlp', hidden=cfg['hidden'])
    self.model = models.get('shared_bottom', self.tasks, backbone,
                            tower_hidden=cfg['tower_hidden'])
    self.optimizer = optax.adam(1e-3)  # the trainer's default (constant lr, no clipping)
    batch = with_all_masks(take(data.split('train'), np.arange(cfg['batch_size'])))
    self.batch = jax.device_put(batch)                       # as the trainer feeds it
    self.hand_batch = jax.device_put({k: batch[k] for k in ('inputs', 'labels')})
    self.rng = jax.random.PRNGKey(seed)

  def state(self, method: Weighting):
    return init_train_state(self.model, self.tasks, self.optimizer, method,
                            self.batch['inputs'], self.rng)

  def batch_for(self, method: Weighting):
    """The batch, cut to a multiple of the method's sub-batches (256 -> 255 for 3)."""
    size = jax.tree_util.tree_leaves(self.batch)[0].shape[0]
    keep = size - size % method.sub_batches
    return self.batch if keep == size else jax.tree.map(lambda x: x[:keep], self.batch)

  def step(self, method: Weighting, mode: str = 'auto', jit: bool = True):
    return make_train_step(self.model, self.tasks, self.optimizer, method, mode=mode, jit=jit)

  def hand_loss(self, params, batch):
    """The hand-written objective: the sum of the tasks' plain MSEs (no masks)."""
    preds = self.model.apply({'params': params}, batch['inputs'], train=True)
    return sum(jnp.mean((preds[n] - batch['labels'][n]) ** 2) for n in self.tasks.names)

  def hand(self, guard: bool = False):
    """(step, state) of the hand-written single-loss step; with ``guard``, plus what the
    trainer's step adds to every method: gradient and parameter norms and the rejection of
    a non-finite update (a whole-state ``lax.cond``)."""
    optimizer = self.optimizer

    def hand_step(state, batch):
      params, opt_state = state
      loss, grads = jax.value_and_grad(self.hand_loss)(params, batch)

      def update():
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return (new_params, new_opt_state), optax.tree.norm(new_params)

      if not guard:
        return update()[0], loss
      # As the trainer's guard: decided before the update, which runs in the branch.
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new_state, param_norm = jax.lax.cond(
          finite, update, lambda: ((params, opt_state), optax.tree.norm(params)))
      return new_state, (loss, grad_norm, param_norm)

    params = self.state(weighting.get('ew')).params
    return jax.jit(hand_step, donate_argnums=0), (params, optimizer.init(params))

  def gram_inputs(self, state):
    """WeightingInputs with the real losses and Gram matrix of per-task shared gradients."""
    def losses_fn(shared):
      preds = self.model.apply({'params': {'shared': shared, 'task': state.params['task']}},
                               self.batch['inputs'], train=True)
      return self.tasks.losses(preds, self.batch)

    losses, jac = weighting.jacobian(losses_fn, state.params['shared'])
    return WeightingInputs(losses=losses, step=jnp.zeros((), jnp.int32),
                           gram=weighting.gram(jac), jacobian=None)


def run_steps(step, state, batch, num_steps):
  """Wall time of ``num_steps`` back-to-back steps and the final state."""
  start = time.perf_counter()
  out = None
  for _ in range(num_steps):
    state, out = step(state, batch)
  jax.block_until_ready((state, out))
  return time.perf_counter() - start, state


def lower_compile(step, state, batch):
  """(compiled step, {lower_s, compile_s, total_s}) of a ``jax.jit`` step."""
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  mid = time.perf_counter()
  compiled = lowered.compile()
  end = time.perf_counter()
  return compiled, {'lower_s': mid - start, 'compile_s': end - mid, 'total_s': end - start}


def time_steps(setup: Setup, methods: list, args, num_steps: int, rng):
  """Per-step times (ms) of every method, the hand-written step and the floors, interleaved,
  and the lower + compile times of their steps (each compiled once, then run compiled)."""
  runners = {HAND: [*setup.hand(), setup.hand_batch]}  # first: absorbs one-off tracing costs
  runners[GUARDED] = [*setup.hand(guard=True), setup.hand_batch]
  for name in methods:
    method = make_method(name, setup.num_tasks)
    batch = setup.batch_for(method)
    runners[name] = [setup.step(method), setup.state(method), batch]
    for mode in args.modes if name in args.mode_methods else ():
      runners[f'{name}[{mode}]'] = [setup.step(method, mode), setup.state(method), batch]
  for name in FLOORS if args.floors else ():
    method = make_floor(name)
    runners[name] = [setup.step(method), setup.state(method), setup.batch]

  compile_s = {}
  for name, r in runners.items():
    print(f'  compiling and warming up {name}', file=sys.stderr, flush=True)
    r[0], compile_s[name] = lower_compile(*r)
    _, r[1] = run_steps(r[0], r[1], r[2], args.warmup)

  times = {name: [] for name in runners}
  order = list(runners)
  for _ in range(args.repeats):
    rng.shuffle(order)
    for name in order:
      r = runners[name]
      seconds, r[1] = run_steps(r[0], r[1], r[2], num_steps)
      times[name].append(1e3 * seconds / num_steps)
  del runners
  return times, compile_s


def time_solvers(setup: Setup, methods: list, args, num_steps: int) -> dict:
  """Median ms of each Gram method's ``update`` alone (jitted) on a real Gram matrix."""
  probe = weighting.get('ew')
  inputs = setup.gram_inputs(setup.state(probe))
  out = {}
  for name in methods:
    method = make_method(name, setup.num_tasks)
    if method.needs is not Needs.GRAM or method.sub_batches > 1 or method.bilevel:
      continue
    update = jax.jit(method.update)
    state, key = method.init(setup.num_tasks), jax.random.PRNGKey(1)
    jax.block_until_ready(update(inputs, state, key))
    runs = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      for _ in range(num_steps):
        res = update(inputs, state, key)
      jax.block_until_ready(res)
      runs.append(1e3 * (time.perf_counter() - start) / num_steps)
    out[name] = statistics.median(runs)
  return out


def compile_times(setup: Setup, names: list, first: dict, repeats: int) -> dict:
  """Best of the first compile and ``repeats`` more of freshly traced train steps (s), for
  ``name`` (mode 'auto') and ``name[mode]`` entries."""
  out = {}
  for entry in names:
    name, mode = entry.rstrip(']').split('[') if '[' in entry else (entry, 'auto')
    method = make_method(name, setup.num_tasks)
    state = setup.state(method)
    runs = [first[entry]] if entry in first else []
    for _ in range(repeats):
      step = jax.jit(setup.step(method, mode, jit=False), donate_argnums=0)
      runs.append(lower_compile(step, state, setup.batch_for(method))[1])
    out[entry] = {**min(runs, key=lambda r: r['total_s']),
                  'runs_total_s': [r['total_s'] for r in runs]}
  return out


def summarize(times: dict) -> dict:
  ew = times['ew']
  out = {}
  for name, runs in times.items():
    out[name] = {
        'median_ms': statistics.median(runs), 'min_ms': min(runs), 'runs_ms': runs,
        'ratio_to_ew': statistics.median(runs) / statistics.median(ew),
        'min_ratio_to_ew': min(runs) / min(ew),
        'paired_ratio_to_ew': statistics.median(a / b for a, b in zip(runs, ew))}
  return out


def param_counts(setup: Setup) -> dict:
  params = setup.state(weighting.get('ew')).params
  size = lambda tree: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
  return {'shared': size(params['shared']), 'task': size(params['task'])}


def machine_info() -> dict:
  import flax
  import jaxlib
  device = jax.devices()[0]
  return {
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
      'optax': optax.__version__, 'numpy': np.__version__, 'python': platform.python_version(),
      'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
      'backend': jax.default_backend(), 'device': f'{device.platform}:{device.device_kind}',
      'num_devices': jax.device_count(), 'cpu_count': os.cpu_count(),
      'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compilation_cache_dir': jax.config.jax_compilation_cache_dir,
  }


def check_targets(results: dict, compile_ratio: dict) -> list:
  targets = []
  for key, res in results.items():
    num = res['num_tasks']
    if 'ew_over_hand' in res:
      targets.append({'target': 'ew <= 1.05 x hand-written', 'T': num, 'method': 'ew',
                      'value': res['ew_over_hand'], 'bound': EW_VS_HAND,
                      'pass': res['ew_over_hand'] <= EW_VS_HAND})
    for name in GRADIENT_METHODS:
      if name in res['steps']:
        value = res['steps'][name]['ratio_to_ew']
        targets.append({'target': 'Gram method (mode auto) <= 1.3 (1+T)/2 x ew', 'T': num,
                        'method': name, 'value': value, 'bound': grad_bound(num),
                        'pass': value <= grad_bound(num)})
  for name, value in compile_ratio.items():
    targets.append({'target': 'compile(T=32) <= 2 x compile(T=2)', 'T': 32, 'method': name,
                    'value': value, 'bound': COMPILE_RATIO, 'pass': value <= COMPILE_RATIO})
  return targets


def print_table(report: dict) -> None:
  results = report['results']
  keys = list(results)
  names = list(dict.fromkeys(n for k in keys for n in results[k]['steps']))
  names = sorted(names, key=lambda n: (n == HAND, n.startswith('('), n != 'ew',
                                       n in GRADIENT_METHODS, n))
  cfg = report['config']
  print(f"\nshared-bottom MLP: input {cfg['input_dim']}, shared {cfg['hidden']}, towers "
        f"{cfg['tower_hidden']} -> 1, batch {cfg['batch_size']}, adam; median of "
        f"{cfg['repeats']} repeats x steps {cfg['steps']}")
  head = f"{'method':<18}" + ''.join(
      f"{'T=' + str(results[k]['num_tasks']):>10}{'x ew':>7}{'slv ms':>8}{'cmp s':>7}{'':>2}"
      for k in keys)
  print(head)
  print(f"{'bound (grad)':<18}" + ''.join(
      f"{'':>10}{grad_bound(results[k]['num_tasks']):>7.2f}{'':>17}"
      for k in keys))
  for name in names:
    line = f'{name:<18}'
    for k in keys:
      s = results[k]['steps'].get(name)
      solver = results[k]['solver_ms'].get(name)
      num = results[k]['num_tasks']
      if s is None:                      # not defined for T tasks (krum, trimmed_mean)
        line += f"{'-':>10}{'':>24}"
        continue
      mark = ''
      if name in GRADIENT_METHODS:
        mark = ' ' if s['ratio_to_ew'] <= grad_bound(num) else '!'
      line += (f"{s['median_ms']:>8.2f}ms{s['ratio_to_ew']:>7.2f}"
               f"{(f'{solver:.2f}' if solver is not None else ''):>8}"
               f"{results[k]['compile_all'][name]['total_s']:>7.1f}{mark:>2}")
    print(line)
  print('ew / hand-written: ' + ', '.join(
      f"T={results[k]['num_tasks']}: {results[k]['ew_over_hand']:.3f}" for k in keys))
  print('ew / (hand-written + guard): ' + ', '.join(
      f"T={results[k]['num_tasks']}: {results[k]['ew_over_guarded_hand']:.3f}" for k in keys))
  for k in keys:
    for name, c in results[k]['compile'].items():
      print(f"compile T={results[k]['num_tasks']:<3} {name:<8} lower {c['lower_s']:.2f}s + "
            f"compile {c['compile_s']:.2f}s = {c['total_s']:.2f}s")
  for name, value in report['compile_ratio'].items():
    print(f'compile(T=32) / compile(T=2), {name}: {value:.2f}')
  failed = [t for t in report['targets'] if not t['pass']]
  print(f"\ntargets: {len(report['targets']) - len(failed)}/{len(report['targets'])} pass")
  for t in failed:
    print(f"  FAIL {t['target']}: T={t['T']} {t['method']} {t['value']:.3f} > {t['bound']:.3f}")
  print("('!': gradient method over its bound; 'slv ms': the method's update alone, jitted; "
        "'cmp s': lower + compile of its step)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default=None,
                      help='comma-separated numbers of tasks (default 2,8,32; --quick: 2,32)')
  parser.add_argument('--repeats', type=int, default=None, help='timed repeats (median)')
  parser.add_argument('--steps', type=int, default=None,
                      help='back-to-back steps per repeat (default 5, 3 at T >= 32; --quick 3)')
  parser.add_argument('--warmup', type=int, default=None, help='steps after compiling')
  parser.add_argument('--methods', default=None,
                      help=f"comma-separated, or 'all' (default; --quick: {QUICK_METHODS})")
  parser.add_argument('--compile-methods', default='ew,upgrad',
                      help='methods whose lower+compile time is measured (gradient methods '
                           'also in each --modes entry and rep)')
  parser.add_argument('--modes', default='param,gram',
                      help="modes besides 'auto' for --mode-methods (rows name[mode])")
  parser.add_argument('--mode-methods', default='mgda,upgrad',
                      help='methods also timed in each --modes entry')
  parser.add_argument('--compile-repeats', type=int, default=2,
                      help='extra compiles of --compile-methods (best is reported)')
  parser.add_argument('--no-floors', dest='floors', action='store_false',
                      help='skip the diagnostic engine floors')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: tiny model, few steps, T in 2,32, a few methods')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    'results', 'step_time.json'))
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  args.repeats = args.repeats or (3 if args.quick else 7)
  steps_for = lambda num: args.steps or (3 if args.quick or num >= 32 else 5)
  args.warmup = args.warmup if args.warmup is not None else 2
  args.tasks = args.tasks or ('2,32' if args.quick else '2,8,32')
  args.methods = args.methods or (QUICK_METHODS if args.quick else 'all')
  task_counts = [int(t) for t in args.tasks.split(',')]
  methods = weighting.names() if args.methods == 'all' else args.methods.split(',')
  if 'ew' not in methods:
    methods = ['ew'] + methods
  unknown = sorted(set(methods) - set(weighting.names()))
  if unknown:
    parser.error(f'unknown methods {unknown}; available: {weighting.names()}')
  args.modes = [m for m in args.modes.split(',') if m]
  args.mode_methods = [m for m in args.mode_methods.split(',') if m]
  compile_methods = []
  for m in (m for m in args.compile_methods.split(',') if m):
    compile_methods.append(m)
    if m in GRADIENT_METHODS:
      compile_methods += [f'{m}[{mode}]' for mode in sorted(set(args.modes) | {'rep'})]

  start = time.time()
  load_before = os.getloadavg()
  rng = np.random.default_rng(args.seed)
  results = {}
  for num in task_counts:
    print(f'T={num}', file=sys.stderr, flush=True)
    setup = Setup(num, cfg, args.seed)
    usable = [m for m in methods if defined_for(m, num)]
    num_steps = steps_for(num)
    phase = {'start': time.time()}
    times, first_compile = time_steps(setup, usable, args, num_steps, rng)
    phase['steps'] = time.time()
    steps = summarize(times)
    solver_ms = time_solvers(setup, usable, args, num_steps)
    phase['solvers'] = time.time()
    compile_s = compile_times(setup, compile_methods, first_compile, args.compile_repeats)
    phase['compile'] = time.time()
    results[f'T={num}'] = {
        'num_tasks': num, 'params': param_counts(setup), 'steps_per_repeat': num_steps,
        'phase_s': {'compile_and_time_steps': phase['steps'] - phase['start'],
                    'solvers': phase['solvers'] - phase['steps'],
                    'extra_compiles': phase['compile'] - phase['solvers']},
        'steps': steps,
        'ew_over_hand': steps['ew']['median_ms'] / steps[HAND]['median_ms'],
        'ew_over_guarded_hand': steps['ew']['median_ms'] / steps[GUARDED]['median_ms'],
        'guarded_hand_over_hand': steps[GUARDED]['median_ms'] / steps[HAND]['median_ms'],
        'ew_over_hand_min': steps['ew']['min_ms'] / steps[HAND]['min_ms'],
        'solver_ms': solver_ms,
        'compile': compile_s,
        'compile_all': first_compile,
    }
  compile_ratio = {}
  if 'T=2' in results and 'T=32' in results:
    compile_ratio = {m: results['T=32']['compile'][m]['total_s'] /
                     results['T=2']['compile'][m]['total_s'] for m in compile_methods}
  report = {
      'config': {**cfg, 'hidden': list(cfg['hidden']), 'tower_hidden': list(cfg['tower_hidden']),
                 'quick': args.quick, 'tasks': task_counts, 'repeats': args.repeats,
                 'steps': {f'T={n}': steps_for(n) for n in task_counts},
                 'warmup': args.warmup, 'mode': 'auto', 'modes': args.modes,
                 'mode_methods': args.mode_methods,
                 'optimizer': 'adam(1e-3)', 'data': 'make_synthetic(T, 0.5), preset google',
                 'compile_repeats': args.compile_repeats, 'seed': args.seed,
                 'why': 'MLP widths and batch large enough that matmuls, not per-op dispatch, '
                        'dominate a CPU step'},
      'machine': {**machine_info(), 'loadavg_before': load_before,
                  'loadavg_after': os.getloadavg(), 'wall_s': time.time() - start},
      'results': results,
      'compile_ratio': compile_ratio,
  }
  report['targets'] = check_targets(results, compile_ratio)
  report['all_pass'] = all(t['pass'] for t in report['targets'])
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print_table(report)
  print(f"wrote {args.out} ({report['machine']['wall_s']:.0f}s)")


if __name__ == '__main__':
  main()
