"""The two-task toy problem of CAGrad / Nash-MTL / FAMO, run for every weighting method.

Objective, start points and per-method settings follow the public code of CAGrad (Liu et al.,
NeurIPS 2021) and Nash-MTL (Navon et al., ICML 2022).  Two protocols:

* ``cagrad``: scale s = 1 on f1, 3 starts, Adam(1e-3) on x for 100 000 steps (CAGrad ``toy.py``).
* ``nash``: s = 0.1, 5 starts, Adam(1e-3) for 35 000 steps (nash-mtl / FAMO ``trainer.py``).

Every registered method runs in both protocols; a method undefined for two tasks (its builder
or ``init`` raises, e.g. Krum, which needs >= 3) is skipped with the library's reason, printed
and recorded in the JSON.  How each kind of method is driven:

* ordinary, ``direct`` and ``state_like_params`` methods: ``weighting.combine`` on the analytic
  2 x 2 Jacobian (a direct method's direction comes back as ``Combined.direction``; the state
  of a ``state_like_params`` method is ``method.init(2, x)``, sized like one Jacobian row);
* methods reading k independent sub-batches (MoDo, SDMGrad): the toy is deterministic, so all
  k sub-batches have the same gradients: ``combine`` gets the Jacobian rows and losses repeated
  k times, sub-batch major (row b * T + t = task t);
* bilevel methods (Auto-Lambda, MOML, FORUM), which step the parameters on the batch's loss
  function: ``mtl_jax.mtl_value_and_grad`` with x as the only (shared) parameter and a dummy
  batch of k = 2 rows that the losses ignore (inner and outer half-batch give the same losses).

For each protocol and method the whole run is one ``jax.lax.scan`` over steps, ``vmap``ped over
the start points.  Writes ``results/toy_pareto.json`` and ``results/toy_pareto.png`` and prints
a table.  ``--quick`` runs a few thousand steps for smoke testing (results not for publishing).

    python benchmarks/toy_pareto.py [--quick] [--out DIR] [--methods ew,cagrad,...]
"""

import argparse
import inspect
import json
import math
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from scipy.optimize import brentq

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

import mtl_jax  # noqa: E402
from mtl_jax import weighting  # noqa: E402

LOG_FLOOR = 5e-6            # kappa: the lower bound inside the log terms
REFERENCE_FRONT_X2 = -8.3552  # the reference plots draw the Pareto set at this x2
PARETO_X1 = (-7.0, 7.0)
LEARNING_RATE = 1e-3
RECORD_EVERY = 100          # trajectory subsampling (steps)
QUICK_STEPS = 3000
REACHED_TOL = 0.05          # "on the Pareto set": distance to the exact Pareto curve below this
# Methods that read the loss values as positive quantities (logs, ratios, L / L(0), the UW
# regression likelihood, the IMTL-L scales' optimum 1 / L, a cosine or distances from the origin
# taken as the ideal point).  The toy losses are negative near the front (f1 > -20 s, f2 > -20),
# so these methods receive L - L_min with FAMO's L_min = (-21 s, -21), i.e. losses >= 1.  Adding
# a constant changes no gradient, only the weights these methods compute.
SHIFTED_LOSS_METHODS = ('cosmos', 'db_mtl', 'dwa', 'gls', 'go4align', 'gradnorm', 'imtl',
                        'imtl_l', 'pbi', 'si', 'stch', 'uw')
STEPS_PER_EPOCH = 1000      # the toy's "epoch" (DWA's loss averages, FORUM's averaging rate)


def clamp_min(value, bound):
  """max(value, bound) with PyTorch ``clamp`` gradients: value's gradient passes where
  value >= bound (inclusive), unlike ``jnp.maximum`` which splits it 1/2-1/2 at ties."""
  return jnp.where(value >= bound, value, bound)


def toy_losses(x, scale):
  """(f1, f2) at x = (x1, x2); f1 multiplied by ``scale``."""
  x1, x2 = x[0], x[1]
  log1 = jnp.log(clamp_min(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOG_FLOOR)) + 6
  log2 = jnp.log(clamp_min(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOG_FLOOR)) + 6
  square1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  square2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  upper = clamp_min(jnp.tanh(0.5 * x2), 0.0)
  lower = clamp_min(jnp.tanh(-0.5 * x2), 0.0)
  return jnp.stack([scale * (upper * log1 + lower * square1), upper * log2 + lower * square2])


def losses_and_jacobian(x, scale):
  """(losses [2], Jacobian [2 tasks, 2 coordinates]) by one ``jax.jacrev``."""
  losses_twice = lambda x: (toy_losses(x, scale),) * 2
  jacobian, losses = jax.jacrev(losses_twice, has_aux=True)(x)
  return losses, jacobian


class Protocol(NamedTuple):
  scale: float
  starts: tuple
  steps: int
  settings: dict            # method -> hyperparameters (defaults for the rest)
  note: str
  mean_convention: bool     # every method with a match_sum option runs with match_sum=False


def loss_floor(scale):
  """FAMO's L_min = (-21 s, -21): below every reachable loss value."""
  return (-21.0 * scale, -21.0)


def protocols():
  """The two protocols and their per-method settings (reference notes, section (b))."""
  # cagrad: the reference "sgd" is Adam on the MEAN gradient and its MGDA / PCGrad / CAGrad are
  # unnormalised (no x T), so simplex methods run with match_sum=False here (mean_convention).
  cagrad_mgda = {'normalization': 'none', 'match_sum': False}
  cagrad = Protocol(
      scale=1.0, starts=((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)), steps=100_000,
      settings={'ew': {'reduction': 'mean'},
                'mgda': cagrad_mgda,
                'pcgrad': {'reduction': 'mean'},
                'cagrad': {'c': 0.5, 'rescale': 2, 'match_sum': False},
                'famo': {'gamma': 0.0, 'beta': 0.025, 'min_losses': loss_floor(1.0),
                         'match_sum': False},
                # SDMGrad's toy (OptMN-Lab/sdmgrad experiments/toy/toy.py) runs these starts
                # with lambda = 0.01 (and noisy gradients, Adam 2e-3, 70k steps).
                'sdmgrad': {'lambda_': 0.01},
                'cr_mogm': {'base': 'mgda', 'base_hparams': cagrad_mgda}},
      note='CAGrad toy.py: s=1, Adam 1e-3, 100k steps, mean convention',
      mean_convention=True)
  # nash: nash-mtl's sum convention (LS = sum, MGDA and CAGrad x T, PCGrad sum), Nash-MTL with
  # its shared-gradient clip at 1, FAMO as in the FAMO repo's toy run.sh.
  nash_mgda = {'normalization': 'none', 'match_sum': True}
  nash = Protocol(
      scale=0.1, starts=((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
      steps=35_000,
      settings={'ew': {'reduction': 'sum'},
                'mgda': nash_mgda,
                'pcgrad': {'reduction': 'sum'},
                'cagrad': {'c': 0.4, 'rescale': 1, 'match_sum': True},
                'nash_mtl': {'max_norm': 1.0, 'max_iters': 20},
                'famo': {'gamma': 0.0, 'beta': 0.025, 'min_losses': loss_floor(0.1),
                         'match_sum': False},
                'cr_mogm': {'base': 'mgda', 'base_hparams': nash_mgda}},
      note='nash-mtl trainer.py: s=0.1, Adam 1e-3, 35k steps, sum convention',
      mean_convention=False)
  for protocol in (cagrad, nash):
    protocol.settings.setdefault('static', {'weights': (1.0, 1.0)})
    protocol.settings.setdefault('dwa', {'steps_per_epoch': STEPS_PER_EPOCH})
    protocol.settings.setdefault('forum', {'steps_per_epoch': STEPS_PER_EPOCH})
    protocol.settings.setdefault('uw', {'lr': 0.025})
  return {'cagrad': cagrad, 'nash': nash}


def method_settings(protocol, name):
  """Hyperparameters for ``name``; ValueError if a required one has no setting here."""
  settings = dict(protocol.settings.get(name, {}))
  hyperparameters = weighting.hyperparameters(name)
  if protocol.mean_convention and 'match_sum' in hyperparameters:
    settings.setdefault('match_sum', False)
  missing = [k for k, default in hyperparameters.items()
             if default is inspect.Parameter.empty and k not in settings]
  if missing:
    raise ValueError(f'no toy setting for required hyperparameter(s) {missing}')
  return settings


def build_method(protocol, name):
  """The method with its toy settings; ValueError (the library's message) if it is undefined
  for two tasks: its builder, its ``min_tasks`` or its ``init`` rejects T = 2."""
  method = weighting.get(name, **method_settings(protocol, name))
  jax.eval_shape(lambda: init_state(method, jnp.zeros(2, jnp.float32)))  # init's own checks
  if method.min_tasks > 2:
    raise ValueError(f'{name}: needs at least {method.min_tasks} tasks (min_tasks), the toy '
                     'has 2')
  return method


def init_state(method, x):
  """``method.init(2)``, or ``method.init(2, x)`` for a method whose state is sized like one
  Jacobian row (``state_like_params``: here the 2-vector x)."""
  return method.init(2, x) if method.state_like_params else method.init(2)


def direction_fn(method, scale, offset):
  """``(x, state, key, step) -> (direction [2], new state, losses [2] the method saw)``."""
  k = method.sub_batches
  if method.bilevel:
    # The engine's public entry: the virtual parameter step needs the loss function.  Every
    # positional argument is split into k sub-batches along axis 0; the toy ignores the batch.
    def losses_fn(params, batch):
      del batch
      return toy_losses(params['x'], scale) - offset

    vg = mtl_jax.mtl_value_and_grad(losses_fn, method, shared={'x': True}, mode='param')
    batch = jnp.zeros((k, 1), jnp.float32)

    def direction(x, state, key, step):
      losses, grads, _, state = vg({'x': x}, state, key, batch, step=step)
      return grads['x'], state, losses
    return direction

  def direction(x, state, key, step):
    losses, jacobian = losses_and_jacobian(x, scale)
    losses = losses - offset
    if k > 1:       # k identical sub-batches, sub-batch major: row b * T + t is task t
      jacobian, seen = jnp.tile(jacobian, (k, 1)), jnp.tile(losses, k)
    else:
      seen = losses
    out = weighting.combine(method, jacobian, seen, state=state, key=key, step=step,
                            after_step='manual')
    return out.direction, out.state, losses
  return direction


def make_run(method, scale, steps, loss_offset):
  """Jitted ``(starts [S, 2], keys [S]) -> trajectories [S, steps // RECORD_EVERY + 1, 2]``."""
  optimizer = optax.adam(LEARNING_RATE)
  offset = jnp.asarray(loss_offset, jnp.float32)
  direction_of = direction_fn(method, scale, offset)

  def one_step(carry, step):
    x, opt_state, method_state, key = carry
    direction, method_state, losses = direction_of(x, method_state,
                                                   jax.random.fold_in(key, step), step)
    updates, opt_state = optimizer.update(direction, opt_state, x)
    new_x = optax.apply_updates(x, updates)
    if method.after_step is not None:     # FAMO: losses at the new point
      method_state = weighting.after_step(method, method_state, losses,
                                          toy_losses(new_x, scale) - offset)
    return (new_x, opt_state, method_state, key), None

  def run_one(start, key):
    def chunk(carry, first_step):
      carry, _ = jax.lax.scan(one_step, carry, first_step + jnp.arange(RECORD_EVERY))
      return carry, carry[0]
    carry = (start, optimizer.init(start), init_state(method, start), key)
    _, points = jax.lax.scan(chunk, carry, jnp.arange(0, steps, RECORD_EVERY))
    return jnp.concatenate([start[None], points])

  return jax.jit(jax.vmap(run_one))


def exact_pareto_curve(num=1401):
  """Points of the exact Pareto set: for x1 in [-7, 7], the x2 in [-9, -8] where det J = 0
  (f1 and f2 gradients anti-parallel); the reference segment x2 = -8.3552 approximates it."""
  det = jax.jit(lambda x: jnp.linalg.det(losses_and_jacobian(x, 1.0)[1]))
  x1s = np.linspace(*PARETO_X1, num)
  x2s = [brentq(lambda x2: float(det(jnp.array([x1, x2], jnp.float32))), -9.0, -8.0,
                xtol=1e-6) for x1 in x1s]
  return np.stack([x1s, np.asarray(x2s)], 1)


def distance_to_segment(point):
  """Distance from ``point`` to the reference segment x1 in [-7, 7], x2 = -8.3552."""
  nearest = np.array([np.clip(point[0], *PARETO_X1), REFERENCE_FRONT_X2])
  return float(np.linalg.norm(np.asarray(point) - nearest))


def distance_to_curve(point, curve):
  return float(np.min(np.linalg.norm(curve - np.asarray(point)[None], axis=1)))


def run_protocol(name, protocol, method_names, steps):
  """{method: {'trajectories': [S, K, 2] array, 'seconds': float, 'compile_seconds': float}
  or {'skipped': reason}}."""
  starts = jnp.asarray(protocol.starts, jnp.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(
      jnp.arange(len(protocol.starts)))
  results = {}
  for method_name in method_names:
    try:
      method = build_method(protocol, method_name)
    except ValueError as error:
      results[method_name] = {'skipped': str(error)}
      print(f'[{name}] {method_name}: skipped ({error})', flush=True)
      continue
    offset = (loss_floor(protocol.scale) if method_name in SHIFTED_LOSS_METHODS else (0.0, 0.0))
    began = time.perf_counter()
    compiled = make_run(method, protocol.scale, steps, offset).lower(starts, keys).compile()
    compiled_at = time.perf_counter()
    trajectories = np.asarray(compiled(starts, keys))
    seconds = time.perf_counter() - compiled_at
    results[method_name] = {'trajectories': trajectories, 'seconds': seconds,
                            'compile_seconds': compiled_at - began}
    print(f'[{name}] {method_name}: compile {compiled_at - began:.1f} s, run {seconds:.1f} s '
          f'({seconds / steps * 1e6:.0f} us/step for {len(protocol.starts)} starts)', flush=True)
  return results


def late_movement(trajectory):
  """Distance travelled over the last 10% of the recorded trajectory (0: converged or stuck)."""
  tail = trajectory[-(len(trajectory) // 10 + 1):]
  return float(np.sum(np.linalg.norm(np.diff(tail, axis=0), axis=1)))


def as_json_float(value):
  """A Python float, None for NaN / inf (which JSON cannot hold)."""
  return float(value) if math.isfinite(float(value)) else None


def as_json_floats(values):
  return [as_json_float(v) for v in values]


def summarise(protocol, results, curve):
  """JSON rows per method: start, final point, losses, and the distances (for the table); a
  skipped method keeps its {'skipped': reason}."""
  losses_at = jax.jit(lambda x: toy_losses(x, protocol.scale))
  summary = {}
  for method_name, result in results.items():
    if 'skipped' in result:
      summary[method_name] = {'skipped': result['skipped']}
      continue
    rows = []
    for start, trajectory in zip(protocol.starts, result['trajectories']):
      final = trajectory[-1]
      losses = np.asarray(losses_at(jnp.asarray(final)))
      finite = bool(np.all(np.isfinite(final)))
      rows.append({'start': as_json_floats(start), 'final': as_json_floats(final),
                   'losses': as_json_floats(losses),
                   'distance_to_segment': (as_json_float(distance_to_segment(final))
                                           if finite else None),
                   'distance_to_pareto': (as_json_float(distance_to_curve(final, curve))
                                          if finite else None),
                   'late_move': as_json_float(late_movement(trajectory))})
    summary[method_name] = rows
  return summary


def fmt(value, width=8, digits=3):
  """Fixed-point, 'nan' for None / non-finite values."""
  finite = value is not None and math.isfinite(value)
  return f'{value:{width}.{digits}f}' if finite else f'{"nan":>{width}}'


def on_set(row):
  return row['distance_to_pareto'] is not None and row['distance_to_pareto'] < REACHED_TOL


def mean_loss(row):
  return None if None in row['losses'] else sum(row['losses']) / 2


def print_table(name, protocol, summary):
  """Method x start: final point, losses, distances to the reference segment and to the exact
  Pareto curve, path length over the last 10% of steps, on the set (d_pareto < REACHED_TOL);
  then one line per method."""
  print(f'\n== protocol {name}: {protocol.note} ==')
  print(f'{"method":<13}{"start":>14}{"final x1":>10}{"final x2":>10}{"f1":>10}{"f2":>10}'
        f'{"mean f":>10}{"d_segment":>11}{"d_pareto":>10}{"late move":>11}  on set')
  for method_name, rows in summary.items():
    if isinstance(rows, dict):
      print(f'{method_name:<13}  skipped: {rows["skipped"]}')
      continue
    for row in rows:
      start = '({:g}, {:g})'.format(*row['start'])
      print(f'{method_name:<13}{start:>14}{fmt(row["final"][0], 10)}{fmt(row["final"][1], 10)}'
            f'{fmt(row["losses"][0], 10)}{fmt(row["losses"][1], 10)}'
            f'{fmt(mean_loss(row), 10)}{fmt(row["distance_to_segment"], 11)}'
            f'{fmt(row["distance_to_pareto"], 10)}{fmt(row["late_move"], 11)}'
            f'  {"yes" if on_set(row) else "no"}')
  print(f'\n-- protocol {name}, per method: starts on the set, final x1 of those on it, mean '
        'loss (f1 + f2) / 2 per start, largest late move --')
  for method_name, rows in summary.items():
    if isinstance(rows, dict):
      continue
    reached = [row for row in rows if on_set(row)]
    x1s = ' '.join(fmt(row['final'][0], 0, 2) for row in reached) or '-'
    means = ' '.join(fmt(mean_loss(row), 0, 2) for row in rows)
    late = max((row['late_move'] if row['late_move'] is not None else math.inf) for row in rows)
    print(f'{method_name:<13}{len(reached)}/{len(rows)}  x1 [{x1s}]  mean f [{means}]  '
          f'late <= {fmt(late, 0, 2)}')


START_COLORS = ('tab:orange', 'tab:blue', 'tab:red', 'tab:purple', 'tab:brown')
PLOT_COLUMNS = 8
PLOT_LIMIT = 10.5           # every panel shows x in [-10.5, 10.5]^2


def average_loss_optimum(protocol, curve):
  """The point of the Pareto curve with the smallest average loss (f1 + f2) / 2."""
  average = jax.vmap(lambda x: toy_losses(x, protocol.scale).mean())(jnp.asarray(curve))
  return curve[int(np.argmin(np.asarray(average)))]


def plot(all_results, all_protocols, curve, path):
  """One figure, the protocols one above the other; per protocol a grid of small panels, one
  per method in alphabetical order: trajectories in x over the contours of the average loss,
  the Pareto set (grey), its average-loss optimum (star), start points (black) and final points
  (one colour per start; a cross where a run ended off the set, drawn at the edge with its
  coordinates where it ended outside the box).  A skipped method's panel gives the reason."""
  grid = np.linspace(-PLOT_LIMIT, PLOT_LIMIT, 241)
  mesh = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
  counts = [len(results) for results in all_results.values()]
  rows_per = [math.ceil(n / PLOT_COLUMNS) for n in counts]
  figure = plt.figure(figsize=(2.35 * PLOT_COLUMNS, 2.45 * sum(rows_per) + 1.0 * len(counts)),
                      layout='constrained')
  subfigures = figure.subfigures(len(all_results), 1, hspace=0.02, height_ratios=rows_per)
  for subfigure, (name, results) in zip(np.atleast_1d(subfigures), all_results.items()):
    protocol = all_protocols[name]
    average = np.asarray(jax.jit(jax.vmap(lambda x: toy_losses(x, protocol.scale).mean()))(
        jnp.asarray(mesh, jnp.float32))).reshape(grid.size, grid.size)
    optimum = average_loss_optimum(protocol, curve)
    rows = math.ceil(len(results) / PLOT_COLUMNS)
    axes = subfigure.subplots(rows, PLOT_COLUMNS, sharex=True, sharey=True).reshape(-1)
    steps = None
    for axis, method_name in zip(axes, sorted(results)):
      result = results[method_name]
      axis.set_xlim(-PLOT_LIMIT, PLOT_LIMIT)
      axis.set_ylim(-PLOT_LIMIT, PLOT_LIMIT)
      axis.set_aspect('equal')
      axis.tick_params(labelsize=6, length=2, pad=1)
      if 'skipped' in result:
        axis.set_title(f'{method_name} (skipped)', fontsize=9, pad=2)
        axis.text(0, 0, '\n'.join(_wrap(result['skipped'], 28)), ha='center', va='center',
                  fontsize=6.5, color='0.3')
        continue
      steps = (result['trajectories'].shape[1] - 1) * RECORD_EVERY
      axis.contour(grid, grid, average, levels=14, cmap='viridis', linewidths=0.4, alpha=0.7)
      axis.plot(curve[:, 0], curve[:, 1], color='0.6', linewidth=3, zorder=1)
      axis.plot(*optimum, '*', color='k', markersize=9, zorder=1.5)
      reached = 0
      for trajectory, color in zip(result['trajectories'], START_COLORS):
        axis.plot(trajectory[:, 0], trajectory[:, 1], color=color, linewidth=1.0, zorder=2)
        axis.plot(*trajectory[0], 'o', color='k', markersize=2.5, zorder=3)
        final = trajectory[-1]
        hit = bool(np.all(np.isfinite(final))) and distance_to_curve(final, curve) < REACHED_TOL
        reached += hit
        shown_at = np.clip(final, -PLOT_LIMIT + 0.4, PLOT_LIMIT - 0.4)
        if np.all(np.isfinite(final)) and np.any(shown_at != final):   # ended outside the box
          side = 'left' if shown_at[0] < 0 else 'right'     # the label inside the panel
          axis.annotate('({:.1f}, {:.1f})'.format(*final), shown_at, fontsize=6, color=color,
                        xytext=(0, 5), textcoords='offset points', ha=side, zorder=5)
        axis.plot(*shown_at, 'o' if hit else 'X', color=color, markeredgecolor='k',
                  markersize=5 if hit else 6, markeredgewidth=0.6, zorder=4)
      axis.set_title(f'{method_name}  {reached}/{len(protocol.starts)}', fontsize=9, pad=2)
    for axis in axes[len(results):]:
      axis.axis('off')
    starts = ', '.join('({:g}, {:g})'.format(*start) for start in protocol.starts)
    subfigure.suptitle(f'protocol "{name}": s = {protocol.scale:g}, Adam lr {LEARNING_RATE:g}, '
                       f'{steps} steps; starts {starts}.  Title: method, starts ending on the '
                       f'Pareto set (d < {REACHED_TOL:g}; X: ended off it)\ncontours: '
                       '(f1 + f2) / 2; grey: Pareto set; star: its average-loss optimum',
                       fontsize=10)
  figure.savefig(path, dpi=80)
  plt.close(figure)


def _wrap(text, width):
  """``text`` in lines of at most about ``width`` characters (at word boundaries)."""
  lines, line = [], ''
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f'{line} {word}' if line else word
  return lines + ([line] if line else [])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help=f'{QUICK_STEPS} steps per run instead of the full protocol')
  parser.add_argument('--out', type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parent / 'results')
  parser.add_argument('--methods', default='',
                      help='comma-separated subset of methods (default: every registered one)')
  args = parser.parse_args()
  method_names = args.methods.split(',') if args.methods else weighting.names()
  all_protocols = protocols()
  curve = exact_pareto_curve()
  began = time.perf_counter()
  all_results, json_out = {}, {}
  for name, protocol in all_protocols.items():
    steps = QUICK_STEPS if args.quick else protocol.steps
    all_results[name] = run_protocol(name, protocol, method_names, steps)
    summary = summarise(protocol, all_results[name], curve)
    print_table(name, protocol, summary)
    json_out[name] = summary
  print(f'\ntotal run time {time.perf_counter() - began:.0f} s'
        f'{" (--quick)" if args.quick else ""}')
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / 'toy_pareto.json').write_text(json.dumps(json_out, indent=1, allow_nan=False)
                                            + '\n')
  plot(all_results, all_protocols, curve, args.out / 'toy_pareto.png')
  print(f'wrote {args.out / "toy_pareto.json"} and {args.out / "toy_pareto.png"}')


if __name__ == '__main__':
  main()
