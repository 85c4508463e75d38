"""mtl_jax.report: plots and the results table of a run, from hand-written metrics.jsonl files
(known values, checked against the figures' line data) and from a real tiny run; bad input;
the command line."""

import itertools
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from mtl_jax import report
from tests.conftest import run_python, train_tiny

TASKS = ('left', 'right', 'third')


def write_metrics(workdir, rows, tail=''):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
    f.write(tail)


def write_results(workdir, results):
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f)


def make_rows(steps, tasks=TASKS, diagnostics=False, seed=0):
  """Metrics lines like the MetricWriter's, with random values (and gradient diagnostics:
  norms every 2nd step, NaN conflicts elsewhere, cosines every 5th step)."""
  rng = np.random.default_rng(seed)
  rows = []
  for step in range(1, steps + 1):
    row = {'step': step, 'loss': 1.0, 'grad_norm': 1.0, 'param_norm': 3.0, 'lr': 1e-3,
           'rejected': 0.0, 'nonfinite_inputs': 0.0}
    for t in tasks:
      row[f'loss/{t}'] = float(rng.uniform(1.0, 2.0))
      row[f'weight/{t}'] = float(rng.uniform(0.5, 1.5))
      row[f'invalid_labels/{t}'] = 0.0
    if diagnostics:
      row['conflicts'] = float(rng.integers(0, 3)) if step % 2 == 0 else float('nan')
      if step % 2 == 0:
        row.update({f'grad_norm/{t}': float(rng.uniform(0.5, 2.0)) for t in tasks})
      if step % 5 == 0:
        row.update({f'grad_cos/{a}/{b}': float(rng.uniform(-1, 1))
                    for a, b in itertools.combinations(tasks, 2)})
    rows.append(row)
  return rows


def line(fig, gid):
  found = [l for ax in fig.axes for l in ax.get_lines() if l.get_gid() == gid]
  assert len(found) == 1, (gid, [l.get_gid() for ax in fig.axes for l in ax.get_lines()])
  return found[0]


def column(rows, key):
  """(steps, values) of the rows with a finite ``key``, by hand."""
  kept = [(r['step'], r[key]) for r in rows if key in r and np.isfinite(r[key])]
  return np.array([s for s, _ in kept], float), np.array([v for _, v in kept], float)


def numpy_ema(x, w):
  """s_i = w^i x_0 + (1 - w) sum_{k=1..i} w^(i-k) x_k, as one matrix product."""
  i, k = np.arange(len(x))[:, None], np.arange(len(x))[None, :]
  coef = np.where(k <= i, (1 - w) * w ** np.maximum(i - k, 0).astype(float), 0.0)
  coef[:, 0] = w ** np.arange(len(x), dtype=float)
  return coef @ x


def test_loss_curves_are_the_written_values_and_their_ema(tmp_path):
  rows = make_rows(40)
  write_metrics(tmp_path, rows)
  for smooth, weight in ((0.8, 0.8), (None, 0.0)):   # 40 points: too few to smooth by default
    fig = report.figures(str(tmp_path), smooth=smooth)['losses']
    for task in TASKS:
      steps, values = column(rows, f'loss/{task}')
      raw, smoothed = line(fig, f'loss/{task}/raw'), line(fig, f'loss/{task}/smoothed')
      np.testing.assert_array_equal(raw.get_xdata(), steps)
      np.testing.assert_array_equal(raw.get_ydata(), values)
      np.testing.assert_allclose(smoothed.get_ydata(), numpy_ema(values, weight), rtol=1e-12)
      assert smoothed.get_label() == task
    assert fig.axes[0].get_yscale() == 'linear'       # 1..2: within a decade
  assert report.smoothing_weight(500) == pytest.approx(0.9)   # a window of 10 steps
  assert report.smoothing_weight(10**6) == pytest.approx(0.95)


def test_losses_spanning_decades_use_a_log_axis_and_val_metrics_get_panels(tmp_path):
  rows = make_rows(20, tasks=('left', 'right'))
  for r in rows:
    r['loss/left'] = 10.0 ** (-r['step'] / 5)
    if r['step'] % 10 == 0:
      r.update({'val/left/accuracy': r['step'] / 100, 'val/right/accuracy': r['step'] / 50,
                'val/left/loss': 1.0 / r['step']})
  write_metrics(tmp_path, rows)
  write_results(tmp_path, {'tasks': ['left', 'right'], 'status': 'stopped', 'steps': 20,
                           'higher_is_better': {'left': {'accuracy': True, 'loss': False},
                                                'right': {'accuracy': True}}})
  fig = report.figures(str(tmp_path))['losses']
  assert fig.axes[0].get_yscale() == 'log'
  titles = [ax.get_title() for ax in fig.axes]
  assert titles[1:] == ['validation accuracy ↑', 'validation loss ↓']
  np.testing.assert_array_equal(line(fig, 'val/right/accuracy').get_ydata(), [0.2, 0.4])
  np.testing.assert_array_equal(line(fig, 'val/left/loss').get_xdata(), [10, 20])
  assert [l.get_gid() for l in fig.axes[2].get_lines()] == ['val/left/loss']


def test_weights_curves(tmp_path):
  rows = make_rows(15)
  write_metrics(tmp_path, rows)
  fig = report.figures(str(tmp_path))['weights']          # 15 points: not smoothed
  smoothed = report.figures(str(tmp_path), smooth=0.7)['weights']
  for task in TASKS:
    values = column(rows, f'weight/{task}')[1]
    np.testing.assert_array_equal(line(fig, f'weight/{task}').get_ydata(), values)
    assert line(fig, f'weight/{task}').get_label() == task
    np.testing.assert_array_equal(line(smoothed, f'weight/{task}').get_ydata(), values)
    np.testing.assert_allclose(line(smoothed, f'weight/{task}/smoothed').get_ydata(),
                               numpy_ema(values, 0.7), rtol=1e-12)
  assert len(fig.axes[0].get_lines()) == 3 and len(smoothed.axes[0].get_lines()) == 6


def test_conflict_curves_norms_and_counts(tmp_path):
  rows = make_rows(30, diagnostics=True)
  write_metrics(tmp_path, rows)
  fig = report.figures(str(tmp_path), smooth=0.5)['conflicts']
  for a, b in itertools.combinations(TASKS, 2):
    cos = line(fig, f'grad_cos/{a}/{b}')
    np.testing.assert_array_equal(cos.get_xdata(), [5, 10, 15, 20, 25, 30])
    np.testing.assert_array_equal(cos.get_ydata(), column(rows, f'grad_cos/{a}/{b}')[1])
  for task in TASKS:
    steps, values = column(rows, f'grad_norm/{task}')
    np.testing.assert_array_equal(line(fig, f'grad_norm/{task}').get_xdata(), steps)
    np.testing.assert_array_equal(line(fig, f'grad_norm/{task}').get_ydata(), values)
  steps, counts = column(rows, 'conflicts')                     # the NaN steps left out
  np.testing.assert_array_equal(line(fig, 'conflicts/raw').get_xdata(), np.arange(2, 31, 2))
  np.testing.assert_array_equal(line(fig, 'conflicts/raw').get_ydata(), counts)
  np.testing.assert_allclose(line(fig, 'conflicts/smoothed').get_ydata(),
                             numpy_ema(counts, 0.5), rtol=1e-12)


def test_many_pairs_are_shown_as_mean_cosine_matrices(tmp_path):
  tasks = ('a', 'b', 'c', 'd', 'e')                                  # 10 pairs
  rows = make_rows(40, tasks=tasks, diagnostics=True)                 # cosines at 8 steps
  write_metrics(tmp_path, rows)
  fig = report.figures(str(tmp_path))['conflicts']
  images = [ax.images[0] for ax in fig.axes if ax.images]
  assert len(images) == 4
  for part, image in enumerate(images):
    expected = np.eye(5)
    for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
      steps, values = column(rows, f'grad_cos/{a}/{b}')
      expected[i, j] = expected[j, i] = values[2 * part:2 * part + 2].mean()
    np.testing.assert_allclose(np.asarray(image.get_array()), expected, rtol=1e-12)
  assert images[0].axes.get_title() == 'gradient cosine, steps 5-10'
  assert not any(l.get_gid() and l.get_gid().startswith('grad_cos/')
                 for ax in fig.axes for l in ax.get_lines())


def test_write_report_writes_valid_pngs_and_the_table(tmp_path):
  rows = make_rows(30, diagnostics=True)
  write_metrics(tmp_path, rows)
  write_results(tmp_path, {
      'config_name': 'hand', 'status': 'completed', 'tasks': list(TASKS), 'model': 'mmoe',
      'weighting': 'ew', 'steps': 30, 'rejected_steps': 0,
      'metrics': {t: {'mse': 0.25, 'count': 96} for t in TASKS},
      'higher_is_better': {t: {'mse': False} for t in TASKS}})
  out = tmp_path / 'elsewhere'
  paths = report.write_report(str(tmp_path), out_dir=str(out))
  assert set(paths) == {'losses', 'weights', 'conflicts', 'results'} and not paths.notes
  for name in ('losses', 'weights', 'conflicts'):
    assert paths[name] == str(out / f'{name}.png')
    with Image.open(paths[name]) as image:
      image.verify()
      assert image.format == 'PNG' and min(image.size) > 100
  text = open(paths['results']).read()
  assert text.startswith('# hand: mmoe, ew\n') and '| left | 0.2500 | 96 |' in text
  assert '![conflicts](conflicts.png)' in text


def test_missing_diagnostics_leave_out_conflicts_and_say_why(tmp_path):
  write_metrics(tmp_path, make_rows(12))
  paths = report.write_report(str(tmp_path))
  assert set(paths) == {'losses', 'weights', 'results'}
  assert not os.path.exists(tmp_path / 'plots' / 'conflicts.png')
  assert os.path.exists(tmp_path / 'plots' / 'losses.png')
  assert 'no gradient diagnostics' in paths.notes['conflicts']
  assert 'diagnostics_every is 0' in paths.notes['conflicts']
  text = open(paths['results']).read()
  assert 'No results.json: the run has not finished (metrics.jsonl reaches step 12)' in text
  assert '* no conflicts.png: metrics.jsonl has no gradient diagnostics' in text
  assert 'conflicts' not in report.figures(str(tmp_path))


def test_a_line_cut_short_is_skipped_and_task_names_are_inferred(tmp_path):
  rows = make_rows(5, tasks=('zeta', 'alpha'))
  write_metrics(tmp_path, rows, tail='\n' + json.dumps(rows[0])[:25])   # a killed run
  got = report.read_metrics(str(tmp_path))
  assert got == rows
  assert report.task_names(got) == ['zeta', 'alpha']                    # first-seen order
  assert report.task_names(got, {'tasks': ['alpha', 'zeta']}) == ['alpha', 'zeta']
  figs = report.figures(str(tmp_path))
  assert 'line 7' in figs.notes['metrics.jsonl']
  assert [l.get_label() for l in figs['losses'].axes[0].get_lines()
          if l.get_gid().endswith('smoothed')] == ['zeta', 'alpha']


def test_results_table_with_baselines_and_delta_m():
  results = {
      'config_name': 'celeb', 'status': 'completed', 'tasks': ['b', 'a'], 'model': 'ple',
      'weighting': 'upgrad', 'steps': 100, 'rejected_steps': 2,
      'metrics': {'a': {'accuracy': 0.912345, 'loss': 0.25, 'count': 50.0},
                  'b': {'accuracy': 0.5, 'loss': 1.0e-5, 'count': 40.0}},
      'baselines': {'a': {'accuracy': 0.9, 'loss': 0.3, 'count': 50.0},
                    'b': {'accuracy': 0.55, 'loss': 0.2, 'count': 40.0}},
      'delta_m': -3.14159,
      'higher_is_better': {'a': {'accuracy': True, 'loss': False},
                           'b': {'accuracy': True, 'loss': False}},
      'split_metrics': {'val': {'a': {'accuracy': 0.75, 'loss': 0.5, 'count': 10}}}}
  text = report.results_table(results)
  lines = text.split('\n')
  assert lines[0] == '# celeb: ple, upgrad'
  assert 'Tasks: b, a. 100 steps, 2 updates rejected (status completed).' in lines
  test = lines.index('## Test metrics')
  assert lines[test + 2:test + 6] == ['| task | accuracy ↑ | loss ↓ | n |',
                                      '|---|---:|---:|---:|',
                                      '| b | 0.5000 | 1.000e-05 | 40 |',
                                      '| a | 0.9123 | 0.2500 | 50 |']
  base = lines.index('## Single-task baselines (test)')
  assert lines[base + 4:base + 6] == ['| b | 0.5500 | 0.2000 | 40 |',
                                      '| a | 0.9000 | 0.3000 | 50 |']
  assert ('**Δm% = -3.14** against the single-task baselines (lower is better; the loss left '
          'out).') in lines
  val = lines.index('## val metrics')
  assert lines[val + 4:val + 6] == ['| b | - | - | - |', '| a | 0.7500 | 0.5000 | 10 |']
  assert 'Δm' not in report.results_table({**results, 'delta_m': None, 'baselines': None})


def test_results_table_of_a_stopped_run():
  text = report.results_table({'config_name': 'x', 'status': 'stopped', 'steps': 40,
                               'tasks': ['t0'], 'stop_reason': 'step 40: 30 of the last\n40 '
                               'updates were rejected'})
  assert '**Stopped** at step 40: step 40: 30 of the last 40 updates were rejected' in text
  assert 'No test metrics' in text and '|' not in text


def test_bad_input_is_a_clear_error(tmp_path, monkeypatch):
  missing = str(tmp_path / 'nope')
  with pytest.raises(report.ReportError, match='nope: no such directory'):
    report.write_report(missing)
  (tmp_path / 'file').write_text('x')
  with pytest.raises(report.ReportError, match='not a directory'):
    report.read_metrics(str(tmp_path / 'file'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(report.ReportError, match=r'has no metrics: metrics.jsonl is missing; '
                     "was this a training run's work directory"):
    report.write_report(str(empty))
  (empty / 'metrics.jsonl').write_text('')
  with pytest.raises(report.ReportError, match='metrics.jsonl is empty'):
    report.figures(str(empty))
  (empty / 'metrics.jsonl').write_text('{"step": 1, "loss/a"\n[1, 2]\n')
  with pytest.raises(report.ReportError, match=r'no parseable line \(2 unparseable\)'):
    report.read_metrics(str(empty))
  write_metrics(empty, make_rows(3))
  (empty / 'results.json').write_text('{"tasks": [')
  with pytest.raises(report.ReportError, match=r'results.json: not valid JSON .*line 1'):
    report.write_report(str(empty))
  (empty / 'results.json').write_text('[]')
  with pytest.raises(report.ReportError, match='results.json: expected a JSON object'):
    report.write_report(str(empty))
  os.remove(empty / 'results.json')
  with pytest.raises(ValueError, match=r'smooth: the EMA weight must be in \[0, 1\), got 1.5'):
    report.figures(str(empty), smooth=1.5)
  assert not os.path.exists(empty / 'plots')
  monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)
  with pytest.raises(ImportError, match=r"pip install 'mtl_jax\[plots\]'"):
    report.figures(str(empty))


def test_main_errors_are_one_line_with_status_2(tmp_path, capsys):
  write_metrics(tmp_path, make_rows(3))
  (tmp_path / 'results.json').write_text('{oops')
  for argv, message in (([str(tmp_path)], f'mtl_jax: {tmp_path}/results.json: not valid JSON'),
                        ([str(tmp_path), '--smooth=2'], 'mtl_jax: smooth: the EMA weight'),
                        ([], 'mtl_jax: the following arguments are required: workdir; usage:'),
                        ([str(tmp_path), '--bogus'], 'mtl_jax: unrecognized arguments: --bogus')):
    with pytest.raises(SystemExit) as exit_info:
      report.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message), (argv, err)
    assert err.count('\n') == 1


def test_command_line(tmp_path):
  write_metrics(tmp_path, make_rows(10))
  done = run_python(['-m', 'mtl_jax.report', str(tmp_path)])
  assert done.returncode == 0, done.stderr
  files = done.stdout.split()
  assert [os.path.basename(f) for f in files] == ['losses.png', 'weights.png', 'results.md']
  assert all(os.path.getsize(f) > 0 for f in files)
  assert 'conflicts.png: metrics.jsonl has no gradient diagnostics' in done.stderr
  bad = run_python(['-m', 'mtl_jax.report', str(tmp_path / 'missing')])
  assert bad.returncode == 2 and bad.stdout == ''
  assert bad.stderr == f'mtl_jax: {tmp_path / "missing"}: no such directory\n'


def test_report_of_a_real_tiny_run(tmp_path):
  results = train_tiny(tmp_path)
  paths = report.write_report(str(tmp_path))
  assert {'losses', 'weights', 'results'} <= set(paths)
  rows = report.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == list(range(1, 11))
  fig = report.figures(str(tmp_path))['losses']
  for task in results['tasks']:
    np.testing.assert_array_equal(line(fig, f'loss/{task}/raw').get_ydata(),
                                  [r[f'loss/{task}'] for r in rows])
  text = open(paths['results']).read()
  for task in results['tasks']:
    value = results['metrics'][task]['mse']
    assert f'| {task} | {value:.4f} |' in text
  for name in ('losses', 'weights'):
    with Image.open(paths[name]) as image:
      assert image.format == 'PNG' and min(image.size) > 100
