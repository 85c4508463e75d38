"""Methods x seeds, with single-task baselines, Delta-m% and mean rank: the sweep runner.

``run_sweep(config, methods, num_seeds, workdir)`` trains ``config`` with every weighting of
``methods`` and every task alone (``experiments.single_task_config``: the baselines), each for
the seeds ``config.seed, config.seed + 1, ...``; with ``variants`` (``{name: {dotted config
key: value}}``) the compared units are those variants of ``config`` instead of weightings
(architectures, say).  A unit (a method, or one task's baseline)
runs its seeds as one vmapped program (``seeds.train_seeds``) where ``seeds.vmappable``
allows, else one after another (``train.train_once``).  The sweep is resumable: finished
units are kept, an interrupted one resumes from its checkpoints.  It writes

    workdir/sweep.json     the set-up, every unit's per-seed test metrics and times, the
                           summary (``summarize``) and the seed-vmap speed-up if measured
    workdir/sweep.md       the Markdown tables (``markdown``)
    workdir/<unit>/        each unit's runs (``seed_<s>/results.json`` per seed)

Delta-m% (``metrics.delta_m``) of a method's seed is taken against the baselines' mean over
seeds; the table gives its mean and standard deviation over seeds.  Mean rank (MR): each
compared metric ranks the methods by their mean over seeds (1 best), averaged over metrics.
The compared metrics are ``config.eval.delta_m_metrics`` (empty: every metric but the loss).
"""

import json
import os
import time
from typing import Optional, Sequence

import ml_collections
import numpy as np

from mtl_jax._src import experiments, registry, seeds as seeds_lib
from mtl_jax._src import metrics as metrics_lib
from mtl_jax._src import train as train_lib
from mtl_jax._src.config_validation import ConfigError

BASELINE = 'baseline-'       # unit name prefix of a task's single-task baseline


def check_request(methods: Sequence[str], num_seeds) -> list:
  """The methods, or ``ConfigError`` naming ``--methods`` / ``--seeds``."""
  methods = [m.strip() for m in methods if m.strip()]
  if not methods:
    raise ConfigError('--methods: name at least one weighting method, e.g. ew,mgda')
  known = registry.WEIGHTINGS.names()
  unknown = [m for m in methods if m not in known]
  if unknown:
    raise ConfigError(f'--methods: unknown weighting method(s) {unknown}; known: '
                      f'{", ".join(known)}')
  if len(set(methods)) != len(methods):
    raise ConfigError(f'--methods: a method is named twice in {methods}')
  _check_seeds(num_seeds)
  return methods


def _check_seeds(num_seeds) -> None:
  if type(num_seeds) is not int or num_seeds < 1:  # pylint: disable=unidiomatic-typecheck
    raise ConfigError(f'--seeds: must be an integer >= 1 (the number of seeds), got '
                      f'{num_seeds!r}')


def _parent(config, key: str):
  """``(node, leaf)`` of a dotted ``key`` in ``config``; node None if the path is not there."""
  node, *path = [config] + key.split('.')
  for part in path[:-1]:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  ok = isinstance(node, ml_collections.ConfigDict) and path[-1] in node
  return (node if ok else None), path[-1]


def check_variants(config, variants: dict) -> dict:
  """``variants`` (``{name: {dotted config key: value}}``), or ``ConfigError`` naming the
  variant and key that ``config`` does not have."""
  if not variants:
    raise ConfigError('variants: name at least one variant, e.g. {"gated": {"model.name": '
                      '"gated_fusion"}}')
  for name, overrides in variants.items():
    if not name or name.startswith(BASELINE) or '/' in name:
      raise ConfigError(f'variants: {name!r} cannot name a unit (empty, has "/" or starts '
                        f'with {BASELINE!r})')
    for key in overrides:
      if _parent(config, key)[0] is None:
        raise ConfigError(f'variants[{name!r}]: config.{key} is not a config key')
  return variants


def _variant(config, name: str, overrides: dict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node, leaf = _parent(c, key)
    node[leaf] = value
  c.eval.baselines = False
  c.name = f'{config.name}-{name}'
  return c


def units(config, methods: Sequence[str], task_names: Sequence[str],
          baselines: bool, variants: Optional[dict] = None) -> dict:
  """``{unit name: its config}``: with ``baselines`` one per task (first, so that a partly
  run sweep has Delta-m% for the methods it finished), then one per method (``config`` with
  that weighting), or, given ``variants``, one per variant (``config`` with its overrides)."""
  out = {}
  if baselines:
    for t in task_names:
      out[BASELINE + t] = experiments.single_task_config(config, t, 'baseline')
  for m in methods:
    out[m] = _variant(config, m, (variants or {}).get(m, {'weighting.name': m}))
  return out


def _setup(config, methods, seeds, baselines, variants=None) -> dict:
  setup = {'config': json.loads(config.to_json_best_effort()), 'methods': list(methods),
           'seeds': list(seeds), 'baselines': baselines}
  if variants is not None:
    setup['variants'] = json.loads(json.dumps(variants))
  return setup


def _load(workdir: str, setup: dict) -> dict:
  """The sweep record of ``workdir`` (a resumed sweep must have the same set-up)."""
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    return {**setup, 'units': {}}
  with open(path) as f:
    record = json.load(f)
  for key in setup:
    if record.get(key) != setup[key]:
      raise ConfigError(f'workdir {workdir!r} holds a sweep with another {key} (sweep.json); '
                        'use a new workdir, or the same flags to resume it')
  return record


def _save(workdir: str, record: dict) -> None:
  tmp = os.path.join(workdir, 'sweep.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'sweep.json'))     # never a half-written sweep.json
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(markdown(record))


def run_unit(config, seeds: Sequence[int], workdir: str, vmap: bool = True) -> dict:
  """Trains one unit for ``seeds``; ``{'seeds': {s: test metrics}, 'time_s', 'vmapped',
  'why_sequential'}``."""
  start = time.time()
  why = None if vmap else 'vmap turned off (--vmap=false)'
  why = why or seeds_lib.vmappable(config)
  if why is None:
    records = seeds_lib.train_seeds(config, seeds, workdir)
  else:
    records = [train_lib.train_once(seeds_lib.seed_config(config, s),
                                    os.path.join(workdir, f'seed_{s}')) for s in seeds]
  return {'status': 'completed', 'vmapped': why is None, 'why_sequential': why,
          'time_s': time.time() - start,
          'train_time_s': float(sum(r['train_time_s'] for r in records)) if why
                          else float(records[0]['train_time_s']),
          'seeds': {str(s): r['metrics'] for s, r in zip(seeds, records)},
          'higher_is_better': records[0]['higher_is_better']}


def run_sweep(config, methods: Sequence[str], num_seeds: int, workdir: str, *,
              baselines: bool = True, vmap: bool = True,
              sequential_check: Optional[str] = None,
              variants: Optional[dict] = None) -> dict:
  """Runs (or resumes) the sweep into ``workdir`` and returns its record (module docstring).

  ``sequential_check``: a method whose seeds are also run one after another (in
  ``workdir/sequential/<method>``) to measure the seed-vmap speed-up (``record['speedup']``).
  ``variants``: compare these instead of weighting methods, ``{name: {dotted config key:
  value}}`` (e.g. ``{'gated': {'model.name': 'gated_fusion'}}``; ``methods`` is ignored and
  the tables' rows are the variants).
  """
  if variants is not None:
    _check_seeds(num_seeds)
    methods = list(check_variants(config, dict(variants)))
  else:
    methods = check_request(list(methods), num_seeds)
  if sequential_check is not None and sequential_check not in methods:
    raise ConfigError(f'--sequential_check: {sequential_check!r} is not one of --methods')
  train_lib.make_workdir(workdir)
  seeds = [config.seed + k for k in range(num_seeds)]
  tasks = train_lib.build_dataset(config).tasks.names
  record = _load(workdir, _setup(config, methods, seeds, baselines, variants))
  for name, unit_config in units(config, methods, tasks, baselines, variants).items():
    if record['units'].get(name, {}).get('status') == 'completed':
      continue
    print(f'sweep: {name} ({len(seeds)} seeds)')
    record['units'][name] = run_unit(unit_config, seeds, os.path.join(workdir, name), vmap)
    record['summary'] = summarize(record)
    _save(workdir, record)
  if sequential_check is not None and 'speedup' not in record:
    record['speedup'] = measure_speedup(config, record, sequential_check, workdir)
    _save(workdir, record)
  record['summary'] = summarize(record)
  _save(workdir, record)
  return record


def measure_speedup(config, record: dict, method: str, workdir: str) -> dict:
  """Runs ``method``'s seeds one after another and compares with its vmapped unit."""
  vmapped = record['units'][method]
  if not vmapped['vmapped']:
    return {'method': method, 'note': f'not vmapped: {vmapped["why_sequential"]}'}
  unit = units(config, [method], [], False, record.get('variants'))[method]
  seq = run_unit(unit, record['seeds'], os.path.join(workdir, 'sequential', method), False)
  return {'method': method, 'seeds': len(record['seeds']),
          'vmapped_s': vmapped['time_s'], 'sequential_s': seq['time_s'],
          'speedup': seq['time_s'] / vmapped['time_s'],
          'vmapped_train_s': vmapped['train_time_s'], 'sequential_train_s': seq['train_time_s'],
          'train_speedup': seq['train_time_s'] / vmapped['train_time_s']}


def _chosen(record: dict) -> tuple:
  """``config.eval.delta_m_metrics`` of the sweep (empty: every metric but the loss)."""
  return tuple(record['config']['eval'].get('delta_m_metrics', ()) or ())


def _compared(record: dict) -> list:
  """The (task, metric) pairs Delta-m% and MR compare."""
  chosen = _chosen(record)
  done = [record['units'][m] for m in record['methods']
          if record['units'].get(m, {}).get('status') == 'completed']
  if not done:
    return []
  metrics = next(iter(done[0]['seeds'].values()))
  return [(t, m) for t in metrics for m in metrics[t]
          if m not in ('loss', 'count') and (not chosen or m in chosen)]


def _baseline_means(record: dict) -> Optional[dict]:
  """``{task: {metric: mean over seeds}}`` of the baselines, or None if any is missing."""
  out = {}
  for unit_name, unit in record['units'].items():
    if unit_name.startswith(BASELINE) and unit.get('status') == 'completed':
      task = unit_name[len(BASELINE):]
      runs = [m[task] for m in unit['seeds'].values()]
      out[task] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
  return out or None


def summarize(record: dict) -> dict:
  """``{method: {'metrics': {task: {metric: [mean, std]}}, 'delta_m': [mean, std] or None,
  'mean_rank': float}}`` plus ``'baseline'`` (the baselines' metrics)."""
  pairs = _compared(record)
  chosen = _chosen(record)
  base = _baseline_means(record)
  done = {m: record['units'][m] for m in record['methods']
          if record['units'].get(m, {}).get('status') == 'completed'}
  out = {}
  for m, unit in done.items():
    runs = list(unit['seeds'].values())
    stats = {t: {k: [float(np.mean([r[t][k] for r in runs])), float(np.std([r[t][k] for r in runs]))]
                 for k in runs[0][t]} for t in runs[0]}
    delta = None
    if base and all(t in base for t, _ in pairs):
      per_seed = [metrics_lib.delta_m(r, base, unit['higher_is_better'], only=chosen)
                  for r in runs]
      delta = [float(np.mean(per_seed)), float(np.std(per_seed))]
    out[m] = {'metrics': stats, 'delta_m': delta}
  for m, rank in _mean_ranks(out, pairs, record).items():
    out[m]['mean_rank'] = rank
  if base:
    out['baseline'] = {'metrics': {t: {k: [v, None] for k, v in ms.items()}
                                   for t, ms in base.items()}}
  return out


def _mean_ranks(summary: dict, pairs, record: dict) -> dict:
  methods = list(summary)
  if not methods or not pairs:
    return {}
  higher = record['units'][methods[0]]['higher_is_better']
  ranks = np.zeros(len(methods))
  for t, k in pairs:
    values = np.array([summary[m]['metrics'][t][k][0] for m in methods])
    order = -values if higher[t][k] else values
    ranks += _rank(order)
  return {m: float(r / len(pairs)) for m, r in zip(methods, ranks)}


def _rank(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing their mean rank (lower value, better rank)."""
  order = np.argsort(values, kind='stable')
  ranks = np.empty(len(values))
  ranks[order] = np.arange(1, len(values) + 1)
  for v in np.unique(values):
    tied = values == v
    ranks[tied] = ranks[tied].mean()
  return ranks


def markdown(record: dict) -> str:
  """The sweep's tables: per compared metric, mean ± std over seeds for every method and the
  baselines; then Delta-m% (mean ± std over seeds) and mean rank per method."""
  summary = record.get('summary') or summarize(record)
  pairs = _compared(record)
  seeds = len(record['seeds'])
  lines = [f'{len(record["methods"])} methods x {seeds} seeds '
           f'(seeds {record["seeds"][0]}..{record["seeds"][-1]}); mean ± std over seeds.', '']
  head = ['method'] + [f'{t} {k}' for t, k in pairs] + ['Δm% ↓', 'MR ↓']
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  cell = lambda v: '–' if v is None else (f'{v[0]:.4g}' if v[1] is None
                                           else f'{v[0]:.4g} ± {v[1]:.2g}')
  for m, s in summary.items():
    row = [m] + [cell(s['metrics'].get(t, {}).get(k)) for t, k in pairs]
    d = s.get('delta_m')
    row += ['–' if d is None else f'{d[0]:+.2f} ± {d[1]:.2f}',
            f'{s["mean_rank"]:.2f}' if 'mean_rank' in s else '–']
    lines.append('| ' + ' | '.join(row) + ' |')
  if 'speedup' in record and 'speedup' in record['speedup']:
    sp = record['speedup']
    lines += ['', f'Seed vmap: {sp["method"]}\'s {sp["seeds"]} seeds took {sp["vmapped_s"]:.1f} s '
              f'as one program and {sp["sequential_s"]:.1f} s one after another: '
              f'{sp["speedup"]:.2f}x (training alone {sp["train_speedup"]:.2f}x).']
  times = [f'{n} {u["time_s"]:.0f} s{"" if u["vmapped"] else " (sequential)"}'
           for n, u in record['units'].items() if u.get('status') == 'completed']
  lines += ['', 'Unit times: ' + ', '.join(times) + '.']
  return '\n'.join(lines) + '\n'
