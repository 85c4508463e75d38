"""benchmarks/gpu_suite.py: its --quick CPU mode runs every phase and writes sane JSON; the
budget guard; the peak-FLOPs table and the utilisation arithmetic."""

import importlib.util
import json
import os
import statistics

import pytest

from tests.conftest import REPO, run_python

SCRIPT = os.path.join(REPO, 'benchmarks', 'gpu_suite.py')
TIMED = ('overhead', 'grid', 'methods')


def _module():
  spec = importlib.util.spec_from_file_location('gpu_suite', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp('gpu_suite') / 'quick.json'
  # Two concurrent compiles: the GPU default's code path (4 there).
  proc = run_python([SCRIPT, '--quick', '--compile-workers', '2', '--out', str(out)],
                    timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out) as f:
    return json.load(f), proc.stdout


def test_quick_mode_runs_every_phase_and_prints_the_table(quick):
  report, stdout = quick
  cells = report['cells']
  assert report['phases'] == ['overhead', 'grid', 'memory', 'methods'] and report['quick']
  assert {c['phase'] for c in cells} == set(report['phases'])
  assert report['counts'] == {s: sum(c['status'] == s for c in cells)
                              for s in ('ok', 'skipped', 'failed')}
  failed = [(c['method'], c['reason']) for c in cells if c['status'] == 'failed']
  assert not failed
  for text in ('phase    model', 'overhead: ew step / hand-written', 'memory: XLA peak MB',
               'wrote '):
    assert text in stdout
  assert sum(line.startswith(('overhead ', 'grid ', 'memory ', 'methods '))
             for line in stdout.splitlines()) == len(cells)
  assert report['machine']['backend'] == 'cpu' and report['peak_flops'] is None
  assert report['config']['compile_workers'] == 2


def test_timed_cells_have_positive_times_flops_and_memory(quick):
  report, _ = quick
  timed = [c for c in report['cells'] if c['phase'] in TIMED and c['status'] == 'ok']
  assert {c['model'] for c in timed} == {'resnet', 'transformer'}
  assert {c['num_tasks'] for c in timed} == {2, 3}
  for c in timed:
    assert len(c['step_ms_all']) == report['config']['steps'], c
    assert c['step_ms'] == statistics.median(c['step_ms_all']) > 0
    assert 0 < c['step_ms_min'] <= c['step_ms']
    assert c['compile_s'] > 0 and c['lower_s'] > 0
    assert c['flops'] > 0 and c['flops_lowered'] > 0
    assert c['flops_per_s'] == pytest.approx(c['flops'] / (c['step_ms'] / 1e3))
    assert 'mfu' not in c and c['flops_basis'] == 'compiled'    # a CPU: no peak
    m = c['memory']
    assert m['peak'] == m['argument'] + m['output'] - m['alias'] + m['temp'] > 0
    assert m['argument'] > 0 and m['temp'] >= 0


def test_overhead_pairs_ew_with_the_hand_written_step(quick):
  report, _ = quick
  cells = [c for c in report['cells'] if c['phase'] == 'overhead']
  dtypes = ['float32', 'bfloat16'] if report['compute_dtype_available'] else ['float32']
  assert sorted((r['dtype'] for r in report['overhead']), key=dtypes.index) == dtypes
  for r in report['overhead']:
    pair = {c['method']: c for c in cells if c['dtype'] == r['dtype']}
    assert r['ratio'] == pytest.approx(pair['ew']['step_ms'] / pair['(hand-written)']['step_ms'])
    # The library's step of a loss-only method is one forward and one backward pass, as the
    # hand-written step (README): the same FLOPs up to the trainer's norms and metrics.
    assert r['flops_ratio'] == pytest.approx(1.0, abs=0.1)
  if not report['compute_dtype_available']:
    assert all(c['status'] == 'skipped' and c['reason'] == 'compute_dtype not available'
               for c in cells if c['dtype'] == 'bfloat16')


def test_memory_phase_compiles_every_engine_mode(quick):
  report, _ = quick
  cells = [c for c in report['cells'] if c['phase'] == 'memory']
  (num_tasks,) = report['config']['memory_tasks']
  chunk = max(1, num_tasks // 4)
  assert {(c['mode'], c['chunk_size']) for c in cells} == {
      ('param', None), ('param', chunk), ('rep', None), ('gram', None)}
  for c in cells:
    assert c['status'] == 'ok' and 'step_ms' not in c          # compiled, not run
    assert c['memory']['peak'] > 0 and c['flops'] > 0
  (row,) = report['memory']
  low = ({'param_bfloat16', 'param_bfloat16+grads'} if report['compute_dtype_available']
         else set())           # J in float32 and J stored in bfloat16, model in bfloat16
  assert set(row['peak']) == {'param', f'param_chunk{chunk}', 'rep', 'gram'} | low
  assert {c['dtype'] for c in cells} == {'float32'} | {k.split('_')[1] for k in low}
  # (The Gramian mode's peak is not asserted below 'param''s: on a small CNN it is above,
  # as benchmarks/memory.py found on its CNN.)


def test_methods_undefined_for_t_are_skipped_with_the_librarys_reason(quick):
  report, _ = quick
  methods = {c['method']: c for c in report['cells'] if c['phase'] == 'methods'}
  assert methods['krum']['status'] == 'skipped'
  assert 'needs at least' in methods['krum']['reason']
  assert methods['static']['status'] == 'ok'
  # ew was timed in the overhead phase, at the same model, T and dtype: not again.
  assert 'ew' not in methods


def test_budget_guard_records_every_cell_as_skipped(tmp_path):
  out = tmp_path / 'budget.json'
  proc = run_python([SCRIPT, '--quick', '--budget-s', '0', '--out', str(out)], timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out) as f:
    report = json.load(f)
  assert report['cells'] and report['counts']['ok'] == 0
  assert all(c['status'] == 'skipped' and c['reason'].startswith('budget')
             for c in report['cells'])


def test_peak_table_and_utilisation():
  suite = _module()
  assert suite.peak_flops('NVIDIA H200')['bfloat16'] == 989e12
  assert suite.peak_flops('NVIDIA H100 PCIe')['bfloat16'] == 756e12
  assert suite.peak_flops('NVIDIA H100 80GB HBM3')['tf32'] == 494.7e12
  assert suite.peak_flops('NVIDIA A100-SXM4-80GB')['bfloat16'] == 312e12
  assert suite.peak_flops('cpu') is None
  cell = {'dtype': 'bfloat16', 'flops': 2e12, 'step_ms': 10.0}
  suite.utilisation(cell, suite.peak_flops('NVIDIA H200'))
  assert cell['flops_per_s'] == pytest.approx(2e14)
  assert cell['mfu'] == pytest.approx(2e14 / 989e12) and cell['peak_basis'] == 'bfloat16'
  cell = {'dtype': 'float32', 'flops': 2e12, 'step_ms': 10.0}
  suite.utilisation(cell, suite.peak_flops('NVIDIA H200'))
  assert cell['peak_basis'] == 'tf32' and cell['mfu'] == pytest.approx(2e14 / 494.7e12)
  # A compiled count under half the lowered one (uncounted library calls): the lowered one.
  cell = {'dtype': 'bfloat16', 'flops': 1e9, 'flops_lowered': 2e12, 'step_ms': 10.0}
  suite.utilisation(cell, None)
  assert cell['flops_basis'] == 'lowered' and cell['flops_per_s'] == pytest.approx(2e14)
  assert 'mfu' not in cell
