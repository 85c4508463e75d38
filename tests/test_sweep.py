"""The sweep runner and vmapped seeds: equal to separate runs, resumable, and its Delta-m% and
mean ranks against a NumPy computation written here."""

import json
import os

import ml_collections
import numpy as np
import pytest

from mtl_jax import train
from mtl_jax._src import config_validation
from mtl_jax._src import seeds as seeds_lib
from mtl_jax._src import sweep
from mtl_jax.train import ConfigError
from tests.conftest import run_python, tiny_config

STEPS = 10


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """ew and mgda x 2 seeds, and the 2 baselines, on the tiny config (10 steps)."""
  workdir = str(tmp_path_factory.mktemp('sweep'))
  config = tiny_config(**{'train.steps': STEPS, 'train.checkpoint_every': 5})
  return config, workdir, sweep.run_sweep(config, ['ew', 'mgda'], 2, workdir)


def _losses(path):
  return np.array([[v for k, v in sorted(json.loads(l).items()) if k.startswith('loss/')]
                   for l in open(path)])


def test_vmapped_seeds_equal_separate_runs(swept, tmp_path):
  """Seed 1 of the vmapped ew unit trains as train_once with config.seed = 1: the same loss
  at every step and the same test metrics."""
  config, workdir, record = swept
  assert record['units']['ew']['vmapped'] and record['units']['mgda']['vmapped']
  unit = sweep.units(config, ['ew'], [], False)['ew']
  alone = train.train_once(seeds_lib.seed_config(unit, 1), str(tmp_path))
  vmapped = os.path.join(workdir, 'ew', 'seed_1')
  np.testing.assert_allclose(_losses(os.path.join(vmapped, 'metrics.jsonl')),
                             _losses(tmp_path / 'metrics.jsonl'), rtol=1e-5, atol=1e-6)
  got = record['units']['ew']['seeds']['1']
  for task, metrics in alone['metrics'].items():
    for name, value in metrics.items():
      assert got[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6)
  seed0 = _losses(os.path.join(workdir, 'ew', 'seed_0', 'metrics.jsonl'))
  assert not np.allclose(seed0, _losses(tmp_path / 'metrics.jsonl'))    # seeds differ


def test_summary_against_numpy(swept):
  """Delta-m% per seed against the baselines' seed mean, its mean and std, and mean ranks
  with ties, recomputed by hand."""
  _, _, record = swept
  tasks = ('y1', 'y2')
  base = {t: {k: np.mean([record['units'][f'baseline-{t}']['seeds'][s][t][k]
                          for s in ('0', '1')]) for k in ('mse', 'mae')} for t in tasks}
  summary = record['summary']
  for m in ('ew', 'mgda'):
    per_seed = [100 * np.mean([(record['units'][m]['seeds'][s][t][k] - base[t][k]) / base[t][k]
                               for t in tasks for k in ('mse', 'mae')]) for s in ('0', '1')]
    assert summary[m]['delta_m'][0] == pytest.approx(np.mean(per_seed), rel=1e-9)
    assert summary[m]['delta_m'][1] == pytest.approx(np.std(per_seed), rel=1e-9)
  means = {m: [np.mean([record['units'][m]['seeds'][s][t][k] for s in ('0', '1')])
               for t in tasks for k in ('mse', 'mae')] for m in ('ew', 'mgda')}
  wins = np.mean([a < b for a, b in zip(means['ew'], means['mgda'])])
  assert summary['ew']['mean_rank'] == pytest.approx(1 + (1 - wins))
  assert summary['ew']['mean_rank'] + summary['mgda']['mean_rank'] == pytest.approx(3.0)
  np.testing.assert_array_equal(sweep._rank(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
  table = open(os.path.join(swept[1], 'sweep.md')).read()
  assert '| ew |' in table and 'Δm%' in table and '| baseline |' in table


def test_a_finished_sweep_resumes_without_training_and_refuses_another_setup(swept, capsys):
  config, workdir, record = swept
  stamp = os.path.getmtime(os.path.join(workdir, 'ew', 'seed_0', 'results.json'))
  again = sweep.run_sweep(config, ['ew', 'mgda'], 2, workdir)
  assert again['units'] == record['units']
  assert os.path.getmtime(os.path.join(workdir, 'ew', 'seed_0', 'results.json')) == stamp
  assert 'sweep: ' not in capsys.readouterr().out          # no unit ran again
  with pytest.raises(ConfigError, match='holds a sweep with another seeds'):
    sweep.run_sweep(config, ['ew', 'mgda'], 3, workdir)


def test_an_interrupted_vmapped_unit_resumes_to_the_same_result(tmp_path):
  """A unit trained 5 steps, then resumed to 10 (its stacked state and every seed's data
  position from the checkpoint), equals one trained 10 steps straight."""
  config = tiny_config(**{'train.steps': STEPS, 'train.checkpoint_every': 5})
  straight = seeds_lib.train_seeds(config, [3, 4], str(tmp_path / 'straight'))
  half = tiny_config(**{'train.steps': 5, 'train.checkpoint_every': 5})
  seeds_lib.train_seeds(half, [3, 4], str(tmp_path / 'resumed'))
  resumed = seeds_lib.train_seeds(config, [3, 4], str(tmp_path / 'resumed'))
  assert [r['resumed_from_step'] for r in resumed] == [5, 5]
  for a, b in zip(straight, resumed):
    for task in a['metrics']:
      for name in a['metrics'][task]:
        assert b['metrics'][task][name] == pytest.approx(a['metrics'][task][name], rel=1e-5)


def test_bad_requests_name_the_flag(tmp_path):
  config = tiny_config()
  with pytest.raises(ConfigError, match=r"--methods: unknown weighting method\(s\) \['nope'\]"):
    sweep.run_sweep(config, ['ew', 'nope'], 2, str(tmp_path))
  with pytest.raises(ConfigError, match='--seeds: must be an integer >= 1'):
    sweep.run_sweep(config, ['ew'], 0, str(tmp_path))
  with pytest.raises(ConfigError, match='--sequential_check'):
    sweep.run_sweep(config, ['ew'], 1, str(tmp_path), sequential_check='mgda')
  r = run_python(['-m', 'mtl_jax.sweep', '--config=mtl_jax/configs/tiny.py', '--methods=ew',
                  '--seeds=two', f'--workdir={tmp_path}'])
  assert r.returncode == 2 and "--seeds: must be an integer >= 1" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 2


def test_variants_with_fresh_data_per_seed_equal_separate_runs(tmp_path):
  """A sweep over model variants with config.data.reseed: each row is its variant's model;
  seed 1 of the vmapped gated unit trains exactly as train_once with config.seed = 1 (its own
  data set, data seed 0 + 1: the same losses and val curve at every written step and the same
  test metrics), and the two seeds' data sets differ."""
  config = tiny_config(**{'train.steps': STEPS, 'train.checkpoint_every': 5,
                          'train.log_every': 5, 'train.metrics_every': 2, 'eval.every': 5,
                          'data.reseed': True})
  variants = {'sb': {'model.name': 'shared_bottom'}, 'gated': {'model.name': 'gated_fusion'}}
  record = sweep.run_sweep(config, [], 2, str(tmp_path / 'sweep'), baselines=False,
                           variants=variants)
  assert record['methods'] == ['sb', 'gated'] and list(record['summary']) == ['sb', 'gated']
  unit_dir = tmp_path / 'sweep' / 'gated' / 'seed_1'
  assert json.load(open(unit_dir / 'results.json'))['model'] == 'gated_fusion'
  alone_config = seeds_lib.seed_config(sweep.units(config, ['gated'], [], False, variants)
                                       ['gated'], 1)
  alone = train.train_once(alone_config, str(tmp_path / 'alone'))
  lines = [json.loads(l) for l in open(unit_dir / 'metrics.jsonl')]
  alone_lines = [json.loads(l) for l in open(tmp_path / 'alone' / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == [2, 4, 5, 6, 8, 10] == [l['step'] for l in alone_lines]
  for a, b in zip(lines, alone_lines):
    for key in ('loss/y1', 'loss/y2', 'val/y1/mse', 'val/y2/mse'):
      if key in b:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a['step'], key)
  for task, metrics in alone['metrics'].items():
    for name, value in metrics.items():
      assert record['units']['gated']['seeds']['1'][task][name] == pytest.approx(
          value, rel=1e-5, abs=1e-6)
  labels = [train.build_dataset(seeds_lib.seed_config(config, s)).split('train')['labels']['y1']
            for s in (0, 1)]
  assert not np.allclose(labels[0], labels[1])


def test_bad_variants_name_the_variant_and_key(tmp_path):
  config = tiny_config()
  with pytest.raises(ConfigError, match=r"variants\['a'\]: config.model.nope is not a config key"):
    sweep.run_sweep(config, [], 1, str(tmp_path), variants={'a': {'model.nope': 1}})
  with pytest.raises(ConfigError, match='cannot name a unit'):
    sweep.run_sweep(config, [], 1, str(tmp_path), variants={'baseline-y1': {}})
  loose = ml_collections.ConfigDict(tiny_config().to_dict())   # as one read from JSON
  loose.data.reseed = None
  with pytest.raises(ConfigError, match='config.data.reseed: must be True or False'):
    config_validation.validate(loose)
