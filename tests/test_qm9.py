"""QM9 molecules: hand-checked graphs, the targets' units and atomisation energies, the split.

Reads the first few hundred rows of ``qm9pack``'s CSV files (the optional extra ``qm9``).
"""

import json
import importlib.util

import numpy as np
import pytest

from mtl_jax._src.data import qm9_molecules as qm9

pytest.importorskip('rdkit')
if importlib.util.find_spec('qm9pack') is None:
  pytest.skip('qm9pack is not installed', allow_module_level=True)

HARTREE_EV = 27.211386246          # CODATA 2018


@pytest.fixture(scope='module')
def rows():
  """The first 214 molecules of the release, by their QM9 index."""
  return {int(r['Index']): r for r in qm9.read_rows(214)}


def _graph(row, features):
  return qm9.molecule(*qm9.elements_and_positions(row), features=features)


def _bond_counts(mol, symbols):
  """{(symbol_i, symbol_j, type): count} with the two symbols sorted."""
  counts = {}
  for i, j, t in mol.bonds:
    key = tuple(sorted((symbols[i], symbols[j]))) + (qm9.BOND_TYPES[t],)
    counts[key] = counts.get(key, 0) + 1
  return counts


@pytest.mark.parametrize('features', qm9.FEATURES)
def test_methane_and_water(rows, features):
  """Methane (QM9 1) and water (QM9 3): one-hot, atomic number, sp3 (sanitised only), bonded
  hydrogens; four C-H and two O-H single bonds."""
  for index, centre, z, hydrogens in ((1, 'C', 6, 4), (3, 'O', 8, 2)):
    symbols, _ = qm9.elements_and_positions(rows[index])
    mol = _graph(rows[index], features)
    assert mol.bond_orders_found
    assert _bond_counts(mol, symbols) == {tuple(sorted(('H', centre))) + ('SINGLE',): hydrogens}
    heavy = symbols.index(centre)
    expected = np.zeros(11, np.float32)
    expected[qm9.ELEMENTS.index(centre)] = 1
    expected[5] = z
    expected[9] = 1.0 if features == 'sanitized' else 0.0      # sp3
    expected[10] = hydrogens
    np.testing.assert_array_equal(mol.nodes[heavy], expected)
    h = [i for i, s in enumerate(symbols) if s == 'H']
    np.testing.assert_array_equal(mol.nodes[h, :6], [[1, 0, 0, 0, 0, 1]] * hydrogens)
    np.testing.assert_array_equal(mol.nodes[h, 6:], 0)


def test_benzene_bonds(rows):
  """Benzene (QM9 214): six aromatic C-C bonds, aromatic sp2 carbons when sanitised; as
  PyTorch Geometric reads the SDF (unsanitised, Kekule): three single and three double C-C
  bonds that alternate around the ring, and no aromatic or hybridisation flags."""
  row = rows[214]
  assert row['SMILES'] == 'C1=CC=CC=C1'
  symbols, _ = qm9.elements_and_positions(row)
  carbons = [i for i, s in enumerate(symbols) if s == 'C']
  sanitized = _graph(row, 'sanitized')
  assert _bond_counts(sanitized, symbols) == {('C', 'C', 'AROMATIC'): 6, ('C', 'H', 'SINGLE'): 6}
  np.testing.assert_array_equal(sanitized.nodes[carbons][:, 6:],
                                [[1, 0, 1, 0, 1]] * 6)      # aromatic, sp2, one hydrogen
  pyg = _graph(row, 'pyg')
  assert _bond_counts(pyg, symbols) == {('C', 'C', 'SINGLE'): 3, ('C', 'C', 'DOUBLE'): 3,
                                        ('C', 'H', 'SINGLE'): 6}
  np.testing.assert_array_equal(pyg.nodes[carbons][:, 6:], [[0, 0, 0, 0, 1]] * 6)
  ring = {}
  for i, j, t in pyg.bonds:
    if symbols[i] == symbols[j] == 'C':
      ring.setdefault(i, []).append(t)
      ring.setdefault(j, []).append(t)
  assert all(sorted(ts) == [0, 1] for ts in ring.values())   # each carbon: one single, one double


def test_targets_units_and_atomisation_energy(rows):
  """Methane: the atomisation energy U0 - (U0(C) + 4 U0(H)) of the release's reference table,
  in eV; HOMO in eV; the other targets as stored."""
  y = qm9.targets(rows[1])
  assert qm9.TARGETS == ('mu', 'alpha', 'homo', 'lumo', 'r2', 'zpve', 'u0', 'u', 'h', 'g', 'cv')
  u0_ev = (-40.47893 - (-37.846772 + 4 * -0.500273)) * HARTREE_EV
  g_ev = (-40.498597 - (-37.861317 + 4 * -0.510927)) * HARTREE_EV
  np.testing.assert_allclose(y[6], u0_ev, rtol=1e-12)
  np.testing.assert_allclose(y[9], g_ev, rtol=1e-12)
  assert -18.0 < y[6] < -17.0                                 # methane: about -17.2 eV
  np.testing.assert_allclose(y[[0, 1, 4, 10]], [0.0, 13.21, 35.3641, 6.469])
  np.testing.assert_allclose(y[2], -0.3877 * HARTREE_EV)
  np.testing.assert_allclose(y[5], 0.044749 * HARTREE_EV)
  assert qm9.REPORT_SCALE['u0'] == 1000.0 and qm9.REPORT_SCALE['mu'] == 1.0


def test_split_sizes_and_disjointness():
  split = qm9.split_indices(500, seed=3, test=100, validation=50)
  assert {k: len(v) for k, v in split.items()} == {'test': 100, 'validation': 50, 'train': 350}
  together = np.concatenate(list(split.values()))
  np.testing.assert_array_equal(np.sort(together), np.arange(500))       # disjoint, complete
  again = qm9.split_indices(500, seed=3, test=100, validation=50)
  assert all(np.array_equal(split[k], again[k]) for k in split)           # seeded
  other = qm9.split_indices(500, seed=4, test=100, validation=50)
  assert not np.array_equal(split['test'], other['test'])
  with pytest.raises(ValueError, match='must leave training molecules'):
    qm9.split_indices(100, test=60, validation=40)


def test_missing_package_names_the_extra(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ImportError, match=r"qm9pack.*pip install -e '\.\[qm9\]'"):
    next(qm9.read_rows(1))


def test_bad_feature_mode(rows):
  with pytest.raises(ValueError, match="features must be one of"):
    _graph(rows[1], 'rdkit')


def test_perceived_bonds_match_the_release_smiles():
  """The bonds perceived from the coordinates give the release's own SMILES (canonical, without
  stereo) for the first 300 molecules: an independent check of the graphs."""
  from rdkit import Chem
  for row in qm9.read_rows(300):
    mol, found = qm9._rdkit_molecule(*qm9.elements_and_positions(row))
    assert found, row['Index']
    got = Chem.MolToSmiles(Chem.RemoveAllHs(mol), isomericSmiles=False)
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(row['SMILES']), isomericSmiles=False)
    assert got == expected, (row['Index'], row['SMILES'], got)


def test_cache_round_trips(tmp_path):
  """The tfds array_record cache of the first 40 molecules reads back (random access) exactly
  what the featurisation gives, in the release's order; a second call reuses it."""
  from mtl_jax._src.data import qm9_builder
  builder = qm9_builder.build(str(tmp_path), features='sanitized', limit=40)
  source = builder.as_data_source(split='molecules')
  assert len(source) == 40
  expected = list(qm9.read_rows(40))
  for k in (0, 2, 13, 39):
    record, row = source[k], expected[k]
    mol = _graph(row, 'sanitized')
    assert int(record['index']) == int(row['Index'])
    np.testing.assert_array_equal(record['nodes'], mol.nodes)
    np.testing.assert_array_equal(record['positions'], mol.positions)
    np.testing.assert_array_equal(record['bonds'], mol.bonds)
    np.testing.assert_array_equal(record['targets'], qm9.targets(row).astype(np.float32))
    assert record['smiles'].decode() == row['SMILES']
  again = qm9_builder.build(str(tmp_path), features='sanitized', limit=40)
  assert again.data_path == builder.data_path and len(again.as_data_source(split='all')) == 40
  with pytest.raises(ValueError, match='features must be one of'):
    qm9_builder.Qm9Config(name='x', features='none')


def test_data_set_records_splits_and_standardisation(tmp_path):
  """'qm9' on the first 40 molecules: split sizes; each record the padded complete graph with
  the molecule's distances and bonds; labels standardised with the training statistics (the
  training labels then have mean 0, std 1); the MPNN and a head run on a batch."""
  import jax
  from mtl_jax import data, models
  from mtl_jax._src.data import qm9 as qm9_data
  ds = data.load('qm9', data_dir=str(tmp_path), limit=40, test=8, validation=7, max_atoms=16)
  assert [len(ds.splits[s]) for s in ('train', 'val', 'test')] == [25, 7, 8]
  assert ds.tasks.names == qm9.TARGETS
  rows = list(qm9.read_rows(40))
  split = qm9.split_indices(40, 0, 8, 7)
  k = int(split['train'][3])
  record, row = ds.splits['train'][3], rows[k]
  symbols, positions = qm9.elements_and_positions(row)
  n, g = len(symbols), record['inputs']
  assert g['node_mask'].sum() == n and g['edge_mask'].sum() == n * (n - 1)
  s, r = g['senders'][:n * (n - 1)], g['receivers'][:n * (n - 1)]
  assert np.all(s != r) and len(set(zip(s, r))) == n * (n - 1)
  np.testing.assert_allclose(g['edges'][:n * (n - 1), 4],
                             np.linalg.norm(positions[s] - positions[r], axis=1), rtol=1e-6)
  mol = _graph(row, 'pyg')
  bonded = {(a, b): t for a, b, t in mol.bonds} | {(b, a): t for a, b, t in mol.bonds}
  for e, (a, b) in enumerate(zip(s, r)):
    hot = np.zeros(4)
    if (a, b) in bonded:
      hot[bonded[(a, b)]] = 1
    np.testing.assert_array_equal(g['edges'][e, :4], hot)
  train_y = np.array([[ds.splits['train'][i]['labels'][t][0] for t in qm9.TARGETS]
                      for i in range(25)])
  np.testing.assert_allclose(train_y.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train_y.std(0), 1, rtol=1e-4)
  raw = qm9.targets(row)
  np.testing.assert_allclose(record['labels']['u0'][0] * ds.stats.std[6] + ds.stats.mean[6],
                             raw[6], rtol=1e-6)
  batch = data.take(ds.splits['val'], np.arange(4))
  model = models.get('shared_bottom', ds.tasks, models.get_backbone('mpnn', dim=8,
                                                                    edge_hidden=8))
  variables = model.init(jax.random.PRNGKey(0), batch['inputs'])
  preds = model.apply(variables, batch['inputs'])
  assert set(preds) == set(qm9.TARGETS) and preds['mu'].shape == (4, 1)
  with pytest.raises(ValueError, match='more than max_atoms=3'):
    qm9_data.complete_graph({'nodes': np.zeros((5, 11)), 'positions': np.zeros((5, 3)),
                             'bonds': np.zeros((0, 3)), 'index': 7}, 3)
  # train_size: a subset of the same training molecules; test and validation unchanged
  small = data.load('qm9', data_dir=str(tmp_path), limit=40, test=8, validation=7,
                    max_atoms=16, train_size=10)
  index = lambda d, s: set(d.splits[s].source.source.indices.tolist())    # molecule rows
  assert len(small.splits['train']) == 10
  assert index(small, 'train') < index(ds, 'train')
  assert index(small, 'test') == index(ds, 'test') and index(small, 'val') == index(ds, 'val')
  with pytest.raises(ValueError, match=r'qm9.train_size: must be in \[0, 25\]'):
    data.load('qm9', data_dir=str(tmp_path), limit=40, test=8, validation=7, train_size=26)
  with pytest.raises(ValueError, match=r'qm9.max_atoms: molecule \d+ has \d+ atoms, more than '
                     r'the node budget max_atoms=4 \(\d+ of the 40 molecules'):
    data.load('qm9', data_dir=str(tmp_path), limit=40, test=8, validation=7, max_atoms=4)


def test_unscaled_mae_is_the_error_in_the_original_units(tmp_path):
  """``mae_unscaled`` of predictions made in standardised units equals the MAE computed by
  hand after undoing the standardisation, energies in meV."""
  from mtl_jax import data
  ds = data.load('qm9', data_dir=str(tmp_path), limit=30, test=5, validation=5, max_atoms=16)
  batch = data.take(ds.splits['test'], np.arange(5))
  rng = np.random.default_rng(0)
  preds = {t: rng.normal(size=(5, 1)).astype(np.float32) for t in qm9.TARGETS}
  metrics = ds.tasks.finalize_metrics(ds.tasks.metric_sums(preds, batch))
  for k, t in enumerate(qm9.TARGETS):
    original = lambda v: v * ds.stats.std[k] + ds.stats.mean[k]
    by_hand = np.mean(np.abs(original(preds[t][:, 0]) - original(batch['labels'][t][:, 0])))
    scale = 1000.0 if t in ('homo', 'lumo', 'zpve', 'u0', 'u', 'h', 'g') else 1.0
    np.testing.assert_allclose(metrics[t]['mae_unscaled'], by_hand * scale, rtol=1e-5)
  # a damaged cache (a record file cut short) is an error naming the cache and the fix
  import glob
  for path in glob.glob(str(tmp_path / 'qm9' / '*' / '*' / '*.array_record*')):
    with open(path, 'r+b') as f:
      f.truncate(100)
  with pytest.raises(ValueError, match=r'qm9.data_dir: the cache in .* cannot be read .*delete '
                                       r'that directory and it is built again'):
    data.load('qm9', data_dir=str(tmp_path), limit=30, test=5, validation=5, max_atoms=16)


def test_config_presets():
  from mtl_jax.configs import qm9 as qm9_config
  paper, cpu = qm9_config.get_config(), qm9_config.get_config('cpu')
  assert (paper.train.batch_size, paper.optim.lr, paper.optim.plateau.factor,
          paper.optim.plateau.patience, paper.optim.plateau.min_lr) == (120, 1e-3, 0.7, 5, 1e-5)
  assert paper.train.steps == 300 * (110831 // 120) and paper.data.qm9.train_size == 0
  assert cpu.train.steps == 10 * (10000 // 120) and cpu.model.mpnn.dim == 64
  assert paper.eval.delta_m_metrics == ('mae_unscaled',)
  with pytest.raises(ValueError, match="unknown preset 'gpu'; presets: paper, cpu, sweep"):
    qm9_config.get_config('gpu')


def test_cli_run_with_baselines_reports_unscaled_maes_and_delta_m(tmp_path):
  """The QM9 config through the command line on a 40-molecule cache, two targets and their
  single-task baselines: results.json has each target's MAE in its units and Delta-m% over
  those MAEs, as the papers compute it."""
  from tests.conftest import run_python
  args = ['-m', 'mtl_jax.main', '--config=mtl_jax/configs/qm9.py:cpu',
          f'--workdir={tmp_path / "run"}', f'--config.data.qm9.data_dir={tmp_path}',
          '--config.data.qm9.limit=40', '--config.data.qm9.test=8',
          '--config.data.qm9.validation=7', '--config.data.qm9.train_size=0',
          "--config.data.tasks=('mu','u0')", '--config.model.mpnn.dim=8',
          '--config.model.mpnn.edge_hidden=8', '--config.train.batch_size=5',
          '--config.train.steps=3', '--config.eval.baselines=True', '--config.eval.batch_size=8']
  r = run_python(args)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(out['metrics']) == {'mu', 'u0'}
  base = out['baselines']
  by_hand = 100 * np.mean([(out['metrics'][t]['mae_unscaled'] - base[t]['mae_unscaled'])
                           / base[t]['mae_unscaled'] for t in ('mu', 'u0')])
  assert out['delta_m'] == pytest.approx(by_hand, rel=1e-6)
