"""The census-income (KDD) tfds builder and loader on tiny UCI-format files built in tmp_path."""

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from mtl_jax import data  # pylint: disable=g-import-not-at-top
# The UCI layout, the tfds builder and its constants.
from mtl_jax._src.data import census_income as ci  # pylint: disable=g-import-not-at-top

# A row of constants; the rows below override a few columns.
BASE = {c: 'Not in universe' for c in ci.COLUMNS}
BASE.update(age=40, detailed_industry_recode=0, detailed_occupation_recode=0,
            wage_per_hour=0, capital_gains=0, capital_losses=0, dividends_from_stocks=0,
            instance_weight=1000.5, num_persons_worked_for_employer=0,
            own_business_or_self_employed=0, veterans_benefits=2, weeks_worked_in_year=52,
            year=94, race='White', sex='Female', country_of_birth_self='United-States',
            marital_stat='Divorced', education='High school graduate', income='- 50000.')
WORKERS = ('Private', 'Not in universe', 'Self-employed-incorporated')
INDUSTRY = (0, 4, 33)  # sorted as strings: '0', '33', '4'
EDUCATION = ('Bachelors degree(BA AB BS)', 'High school graduate', 'Doctorate degree(PhD EdD)',
             'Associates degree-academic program', 'Children')
MARITAL = ('Never married', 'Married-civilian spouse present', 'Divorced')


def _line(**values) -> str:
  """One UCI line: 42 values, each after ', ' (the first after nothing), then a newline."""
  row = dict(BASE, **values)
  assert set(row) == set(ci.COLUMNS)
  return ', '.join(str(row[c]) for c in ci.COLUMNS) + '\n'


def _train_rows():
  return [dict(age=20 + 2 * i, sex=('Female', 'Male')[i % 2], class_of_worker=WORKERS[i % 3],
               detailed_industry_recode=INDUSTRY[i % 3], year=(94, 95)[i % 2],
               capital_gains=100 * (i % 4), education=EDUCATION[i % 5],
               marital_stat=MARITAL[i % 3], income=('50000+.' if i % 4 == 0 else '- 50000.'))
          for i in range(30)]


def _test_rows():
  rows = [dict(age=33 + i, sex=('Male', 'Female')[i % 2], class_of_worker=WORKERS[i % 3],
               detailed_industry_recode=INDUSTRY[(i + 1) % 3], capital_gains=50 * i,
               education=EDUCATION[(i + 2) % 5], marital_stat=MARITAL[(i + 1) % 3],
               income=('50000+.' if i % 5 == 0 else '- 50000.'))
          for i in range(20)]
  rows[3].update(class_of_worker='Federal government', country_of_birth_self='Atlantis',
                 year=96)  # unseen in train
  return rows


def _write(directory, name, rows, blank_lines=False):
  directory.mkdir(parents=True, exist_ok=True)
  text = ''.join(_line(**r) for r in rows)
  (directory / name).write_text(text + ('\n' if blank_lines else ''))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """The tiny data set built once: (data_dir, manual_dir)."""
  root = tmp_path_factory.mktemp('census')
  manual = root / 'manual'
  _write(manual, 'census-income.data', _train_rows(), blank_lines=True)
  _write(manual, 'census-income.test', _test_rows())
  return str(root / 'tfds'), str(manual)


def _load(data_dir, manual_dir, **options):
  """The registered data set 'census_income', as the trainer loads it."""
  return data.load('census_income', data_dir=str(data_dir),
                   manual_dir=manual_dir and str(manual_dir), **options)


def _all(split):
  return data.take(split, np.arange(len(split)))


def _raw(data_dir, split):
  source = tfds.data_source('census_income_kdd', split=split, data_dir=data_dir, download=False)
  return [source[i] for i in range(len(source))]


def test_columns_follow_the_uci_layout():
  assert len(ci.COLUMNS) == 42 and ci.COLUMNS[24] == 'instance_weight'
  assert ci.COLUMNS[-1] == 'income' and ci.COLUMNS[0] == 'age'
  assert len(ci.CATEGORICAL) == 42 - 7 - 4


def test_split_sizes_and_the_seeded_half_split(built):
  data_dir, manual = built
  ds = _load(data_dir, manual)
  assert ds.name == 'census_income' and sorted(ds.splits) == ['test', 'train', 'val']
  assert [len(ds.split(s)) for s in ('train', 'val', 'test')] == [30, 10, 10]
  train_lines = sorted(int(r['line']) for r in _raw(data_dir, 'train'))
  assert train_lines == list(range(1, 31))  # the blank last line is skipped
  val = {int(r['line']) for r in _raw(data_dir, 'validation')}
  test = {int(r['line']) for r in _raw(data_dir, 'test')}
  assert not val & test and val | test == set(range(1, 21))
  permutation = np.random.default_rng(ci.SPLIT_SEED).permutation(20)
  assert val == {int(i) + 1 for i in permutation[:10]}


def _expected_features(row, train):
  """The feature vector written out from the rows: standardised numbers, one-hot categories."""
  out = []
  for c in ci.COLUMNS:
    if c in ('instance_weight', 'income', 'marital_stat', 'education'):
      continue
    values = [str(dict(BASE, **r)[c]) for r in train]
    value = str(dict(BASE, **row)[c])
    if c in ci.NUMERIC:
      x = np.array(values, float)
      std = x.std() if x.std() > 0 else 1.0
      out.append((float(value) - x.mean()) / std)
    else:
      out.extend(float(value == v) for v in sorted(set(values)))
  return np.array(out, np.float32)


def test_features_of_known_rows(built):
  data_dir, _ = built
  train, test = _train_rows(), _test_rows()
  by_line = {int(r['line']): r for r in _raw(data_dir, 'train')}
  # 7 numbers; vocabularies: 3 workers, 3 industries, 2 sexes, 2 years, 27 constant columns.
  assert by_line[1]['features'].shape == (7 + 3 + 3 + 2 + 2 + 27,)
  for line in (1, 2, 17):
    np.testing.assert_allclose(by_line[line]['features'], _expected_features(train[line - 1],
                                                                             train), atol=1e-5)
  # Row 2 (i = 1) by hand: age 22 over ages 20, 22, .., 78 (mean 49, std sqrt(299.67)).
  ages = 20 + 2 * np.arange(30)
  names = ci.CensusIncomeKdd(data_dir=data_dir).info.metadata['feature_names']
  x = dict(zip(names, by_line[2]['features']))
  np.testing.assert_allclose(x['age'], (22 - 49) / np.sqrt(np.mean((ages - 49.) ** 2)),
                             rtol=1e-5)
  assert x['sex=Male'] == 1 and x['sex=Female'] == 0 and x['year=95'] == 1
  assert x['class_of_worker=Not in universe'] == 1 and x['detailed_industry_recode=4'] == 1
  assert x['wage_per_hour'] == 0  # constant column: std 0 -> 1
  assert names.index('detailed_industry_recode=33') < names.index('detailed_industry_recode=4')
  tests = {int(r['line']): r for r in _raw(data_dir, 'validation') + _raw(data_dir, 'test')}
  np.testing.assert_allclose(tests[8]['features'], _expected_features(test[7], train),
                             atol=1e-5)


def test_unseen_category_is_an_all_zero_block(built):
  data_dir, _ = built
  names = ci.CensusIncomeKdd(data_dir=data_dir).info.metadata['feature_names']
  rows = {int(r['line']): r for r in _raw(data_dir, 'validation') + _raw(data_dir, 'test')}
  x = rows[4]['features']  # test row 3: Federal government, Atlantis, year 96
  for column in ('class_of_worker', 'country_of_birth_self', 'year'):
    block = [i for i, n in enumerate(names) if n.startswith(column + '=')]
    assert len(block) >= 1 and not x[block].any(), column
  sex = [i for i, n in enumerate(names) if n.startswith('sex=')]
  assert x[sex].sum() == 1


@pytest.mark.parametrize('group,tasks', [(1, ('income_50k', 'never_married')),
                                         (2, ('education_college', 'never_married'))])
def test_labels_of_both_groups(built, group, tasks):
  data_dir, manual = built
  ds = _load(data_dir, manual, group=group)
  assert ds.tasks.names == tasks and all(t.kind == 'binary' for t in ds.tasks)
  college = {'Bachelors degree(BA AB BS)', 'Doctorate degree(PhD EdD)'}
  for split, rows in (('train', _train_rows()), ('val', _test_rows()), ('test', _test_rows())):
    lines = [int(r['line']) for r in _raw(data_dir, 'validation' if split == 'val' else split)]
    batch = _all(ds.split(split))
    expected = {
        'income_50k': [rows[n - 1]['income'] == '50000+.' for n in lines],
        'never_married': [rows[n - 1]['marital_stat'] == 'Never married' for n in lines],
        'education_college': [rows[n - 1]['education'] in college for n in lines]}
    for t in tasks:
      np.testing.assert_array_equal(batch['labels'][t], np.array(expected[t], np.float32))
      assert batch['labels'][t].dtype == np.float32 and batch['masks'][t].all()
    assert batch['inputs'].dtype == np.float32 and batch['inputs'].shape == (len(lines), 44)
  positives = _all(ds.split('train'))['labels']
  assert 0 < positives[tasks[0]].mean() < 1 and 0 < positives['never_married'].mean() < 1


def test_associates_option_and_batches(built):
  data_dir, manual = built
  ds = _load(data_dir, manual, group=2, college_includes_associates=True)
  lines = [int(r['line']) for r in _raw(data_dir, 'train')]
  college = {'Bachelors degree(BA AB BS)', 'Doctorate degree(PhD EdD)',
             'Associates degree-academic program'}
  expected = [_train_rows()[n - 1]['education'] in college for n in lines]
  np.testing.assert_array_equal(_all(ds.split('train'))['labels']['education_college'],
                                np.array(expected, np.float32))
  batch = next(data.BatchIterator(ds.split('train'), batch_size=8, seed=0))
  assert batch['inputs'].shape == (8, 44) and batch['labels']['never_married'].shape == (8,)


def test_prepared_data_needs_no_manual_files(built, tmp_path):
  data_dir, _ = built
  ds = _load(data_dir, tmp_path / 'gone')
  assert len(ds.split('train')) == 30


def test_gzipped_files_are_read(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name, rows in (('census-income.data', _train_rows()), ('census-income.test',
                                                             _test_rows())):
    with gzip.open(manual / (name + '.gz'), 'wt') as f:
      f.write(''.join(_line(**r) for r in rows))
  ds = _load(tmp_path / 'tfds', manual)
  assert [len(ds.split(s)) for s in ('train', 'val', 'test')] == [30, 10, 10]


def test_missing_file_names_the_file_and_the_manual_dir(tmp_path):
  manual = tmp_path / 'manual'
  _write(manual, 'census-income.data', _train_rows())
  with pytest.raises(FileNotFoundError) as error:
    _load(tmp_path / 'tfds', manual)
  message = str(error.value)
  assert str(manual / 'census-income.test') in message and f'manual dir {manual}' in message
  assert ci.URL in message
  with pytest.raises(FileNotFoundError, match='census-income.data'):
    _load(tmp_path / 'tfds', tmp_path / 'empty')


@pytest.mark.parametrize('name,line,bad,pattern', [
    ('census-income.data', 7, dict(age='abc'), r'line 7, column 1 \(age\): corrupt record'),
    ('census-income.test', 5, dict(weeks_worked_in_year='nan'),
     r'line 5, column 40 \(weeks_worked_in_year\): corrupt record'),
    ('census-income.test', 9, dict(income='maybe'), r'line 9, column 42 \(income\)'),
    ('census-income.data', 3, None, r'line 3: corrupt record: expected 42 .* got 41'),
])
def test_corrupt_line_names_file_line_and_column(tmp_path, name, line, bad, pattern):
  manual = tmp_path / 'manual'
  rows = {'census-income.data': _train_rows(), 'census-income.test': _test_rows()}
  for file, file_rows in rows.items():
    _write(manual, file, file_rows)
  lines = (manual / name).read_text().splitlines(keepends=True)
  lines[line - 1] = (_line(**dict(rows[name][line - 1], **bad)) if bad
                     else lines[line - 1].split(',', 1)[1])
  (manual / name).write_text(''.join(lines))
  with pytest.raises(ValueError, match=name + '.*' + pattern):
    _load(tmp_path / 'tfds', manual)


def test_bad_group_is_named():
  with pytest.raises(ValueError, match='unknown group 3'):
    _load('/nonexistent', None, group=3)
