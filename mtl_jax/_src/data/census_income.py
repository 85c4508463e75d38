"""UCI Census-Income (KDD) for the MMoE real-data tasks (Ma et al., KDD 2018, Sec. 6.3).

``CensusIncomeKdd`` is a tfds builder ('census_income_kdd') over the manually downloaded UCI
files, written as array_record without TensorFlow; ``load`` builds it if needed and reads it
through ``tfds.data_source`` as a ``MultiTaskDataset``.

Files: 42 comma-separated columns a line (``COLUMNS``), values with a leading space; column 25
the instance weight, the last the income label (' - 50000.' or ' 50000+.').  Values are
compared after stripping the surrounding whitespace.

Splits: 'train' = census-income.data (199 523 rows); census-income.test (99 762 rows) split
1:1 at random into 'validation' (floor(n / 2) rows) and 'test' (the rest) by the permutation
``np.random.default_rng(SPLIT_SEED).permutation(n)`` of its non-blank lines (first half ->
validation), as in the MMoE paper.

Features (float32 [D], D = 7 + sum of the vocabulary sizes, about 490 for the full data), in
``COLUMNS`` order, without instance_weight and the task sources income, marital_stat and
education:

    numeric column c:      (x - mean_c) / std_c   (train mean and population std; std 0 -> 1)
    categorical column c:  one-hot over vocab_c, the sorted distinct train values;
                           a value unseen in train -> an all-zero block

Targets (stored with the raw income, marital_stat and education strings):

    income_50k         income == '50000+.'
    never_married      marital_stat == 'Never married'
    education_college  education in COLLEGE ('Bachelors degree(BA AB BS)', 'Masters
                       degree(MA MS MEng MEd MSW MBA)', 'Prof school degree (MD DDS DVM LLB
                       JD)', 'Doctorate degree(PhD EdD)': the UCI spellings); ``load(...,
                       college_includes_associates=True)`` adds the two Associates degrees.

The vocabularies, means, stds and feature names are in ``builder.info.metadata``.

Registered as the data set 'census_income' (``mtl_jax.data.load('census_income', ...)``).
"""

import gzip
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax._src import registry
from mtl_jax._src import tasks as tasks_lib
from mtl_jax._src.data.dataset import MultiTaskDataset
from mtl_jax._src.data.sources import RecordSource

COLUMNS = (
    'age', 'class_of_worker', 'detailed_industry_recode', 'detailed_occupation_recode',
    'education', 'wage_per_hour', 'enroll_in_edu_inst_last_wk', 'marital_stat',
    'major_industry_code', 'major_occupation_code', 'race', 'hispanic_origin', 'sex',
    'member_of_a_labor_union', 'reason_for_unemployment', 'full_or_part_time_employment_stat',
    'capital_gains', 'capital_losses', 'dividends_from_stocks', 'tax_filer_stat',
    'region_of_previous_residence', 'state_of_previous_residence',
    'detailed_household_and_family_stat', 'detailed_household_summary_in_household',
    'instance_weight', 'migration_code_change_in_msa', 'migration_code_change_in_reg',
    'migration_code_move_within_reg', 'live_in_this_house_1_year_ago',
    'migration_prev_res_in_sunbelt', 'num_persons_worked_for_employer',
    'family_members_under_18', 'country_of_birth_father', 'country_of_birth_mother',
    'country_of_birth_self', 'citizenship', 'own_business_or_self_employed',
    'fill_inc_questionnaire_for_veterans_admin', 'veterans_benefits', 'weeks_worked_in_year',
    'year', 'income')
NUMERIC = ('age', 'wage_per_hour', 'capital_gains', 'capital_losses', 'dividends_from_stocks',
           'num_persons_worked_for_employer', 'weeks_worked_in_year')
TARGET_SOURCES = ('income', 'marital_stat', 'education')
DROPPED = ('instance_weight',) + TARGET_SOURCES
CATEGORICAL = tuple(c for c in COLUMNS if c not in NUMERIC and c not in DROPPED)

INCOME = {'- 50000.': False, '50000+.': True}  # also accepted without the final '.'
NEVER_MARRIED = 'Never married'
COLLEGE = frozenset({
    'Bachelors degree(BA AB BS)', 'Masters degree(MA MS MEng MEd MSW MBA)',
    'Prof school degree (MD DDS DVM LLB JD)', 'Doctorate degree(PhD EdD)'})
ASSOCIATES = frozenset({'Associates degree-occup /vocational',
                        'Associates degree-academic program'})
LABELS = ('income_50k', 'never_married', 'education_college')
GROUPS = {1: ('income_50k', 'never_married'), 2: ('education_college', 'never_married')}

FILES = {'train': 'census-income.data', 'test': 'census-income.test'}
SPLIT_SEED = 0
URL = 'https://archive.ics.uci.edu/dataset/117/census+income+kdd'
# tfds split name -> split name in the data set (the trainer evaluates 'val' and 'test').
SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}

_INSTRUCTIONS = f"""\
Download the Census-Income (KDD) data from {URL} and place the files
`census-income.data` and `census-income.test` (or their `.gz` versions, as found in the
archive's census.tar.gz) in the manual dir (`load(manual_dir=...)`, or `--manual_dir` of
`tfds build`; default <data_dir>/downloads/manual/)."""


def _strip_label(value: str) -> str:
  return value[:-1] if value.endswith('.') else value


def _find(manual_dir: str, name: str) -> str:
  for path in (os.path.join(manual_dir, name), os.path.join(manual_dir, name + '.gz')):
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f'census_income_kdd: missing file {os.path.join(manual_dir, name)} (or .gz) in the '
      f'manual dir {manual_dir}.\n{_INSTRUCTIONS}')


def read_rows(path: str) -> Iterator[tuple[int, list[str]]]:
  """(line number from 1, the 42 stripped values) for every non-blank line of a UCI file."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', encoding='latin-1') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      values = [v.strip() for v in line.rstrip('\r\n').split(',')]
      if len(values) != len(COLUMNS):
        raise ValueError(f'{path}, line {number}: corrupt record: expected {len(COLUMNS)} '
                         f'comma-separated columns, got {len(values)}')
      yield number, values


_INDEX = {c: i for i, c in enumerate(COLUMNS)}


def _number(path, number, values, column) -> float:
  value = values[_INDEX[column]]
  try:
    x = float(value)
  except ValueError:
    x = float('nan')
  if not np.isfinite(x):
    raise ValueError(f'{path}, line {number}, column {_INDEX[column] + 1} ({column}): corrupt '
                     f'record: non-numeric value {value!r}')
  return x


_INCOME = {_strip_label(k): v for k, v in INCOME.items()}


def _income(path, number, values) -> bool:
  value = _strip_label(values[_INDEX['income']])
  if value not in _INCOME:
    raise ValueError(f'{path}, line {number}, column {len(COLUMNS)} (income): corrupt record: '
                     f'income {value!r} is none of {list(INCOME)}')
  return _INCOME[value]


def fit_encoding(path: str) -> dict:
  """The vocabularies (sorted distinct values) and numeric means / stds of a train file."""
  vocab = {c: set() for c in CATEGORICAL}
  total = np.zeros(len(NUMERIC))
  squares = np.zeros(len(NUMERIC))
  count = 0
  for number, values in read_rows(path):
    x = np.array([_number(path, number, values, c) for c in NUMERIC])
    total += x
    squares += x * x
    count += 1
    _income(path, number, values)
    for c in CATEGORICAL:
      vocab[c].add(values[_INDEX[c]])
  if not count:
    raise ValueError(f'{path}: no records')
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
  std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
  names = []
  for c in COLUMNS:
    if c in NUMERIC:
      names.append(c)
    elif c in vocab:
      names.extend(f'{c}={v}' for v in sorted(vocab[c]))
  return {'vocab': {c: sorted(v) for c, v in vocab.items()},
          'mean': dict(zip(NUMERIC, mean.tolist())), 'std': dict(zip(NUMERIC, std.tolist())),
          'feature_names': names, 'num_features': len(names), 'split_seed': SPLIT_SEED}


class Encoder:
  """A row's 42 values -> the float32 feature vector (see the module docstring)."""

  def __init__(self, encoding: dict):
    self.size = int(encoding['num_features'])
    self.slots = []  # (column, offset, {value: index} or None for numeric)
    offset = 0
    for c in COLUMNS:
      if c in NUMERIC:
        self.slots.append((c, offset, None))
        offset += 1
      elif c in CATEGORICAL:
        vocab = encoding['vocab'][c]
        self.slots.append((c, offset, {v: i for i, v in enumerate(vocab)}))
        offset += len(vocab)
    if offset != self.size:
      raise ValueError(f'census_income_kdd: the encoding has {offset} features, its '
                       f'metadata says {self.size}')
    self.mean, self.std = encoding['mean'], encoding['std']

  def __call__(self, path, number, values) -> np.ndarray:
    x = np.zeros(self.size, np.float32)
    for column, offset, index in self.slots:
      if index is None:
        x[offset] = (_number(path, number, values, column) - self.mean[column]) / self.std[column]
      else:
        hot = index.get(values[_INDEX[column]])
        if hot is not None:
          x[offset + hot] = 1.0
    return x


class CensusIncomeKdd(tfds.core.GeneratorBasedBuilder):
  """UCI Census-Income (KDD): one-hot / standardised features and the MMoE task labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'features': tfds.features.Tensor(shape=(None,), dtype=np.float32),
            'income_50k': tfds.features.Scalar(dtype=np.bool_),
            'never_married': tfds.features.Scalar(dtype=np.bool_),
            'education_college': tfds.features.Scalar(dtype=np.bool_),
            'income': tfds.features.Text(),
            'marital_stat': tfds.features.Text(),
            'education': tfds.features.Text(),
            'instance_weight': tfds.features.Scalar(dtype=np.float32),
            'line': tfds.features.Scalar(dtype=np.int64),  # line number in the source file
        }),
        homepage=URL,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # tfds refuses a missing or empty manual dir: name the file
      manual_dir = os.fspath(getattr(dl_manager, '_manual_dir', None) or '<unset>')
    train, test = (_find(manual_dir, FILES[s]) for s in ('train', 'test'))
    encoding = fit_encoding(train)
    self.info.metadata.update(encoding)
    n = sum(1 for _ in read_rows(test))
    in_validation = np.zeros(n, bool)
    in_validation[np.random.default_rng(SPLIT_SEED).permutation(n)[:n // 2]] = True
    encoder = Encoder(encoding)
    return {
        'train': self._generate_examples(train, encoder, None),
        'validation': self._generate_examples(test, encoder, in_validation),
        'test': self._generate_examples(test, encoder, ~in_validation),
    }

  def _generate_examples(self, path, encoder, keep):
    for row, (number, values) in enumerate(read_rows(path)):
      if keep is not None and not keep[row]:
        continue
      income, marital, education = (values[_INDEX[c]] for c in TARGET_SOURCES)
      yield number, {
          'features': encoder(path, number, values),
          'income_50k': _income(path, number, values),
          'never_married': marital == NEVER_MARRIED,
          'education_college': education in COLLEGE,
          'income': income, 'marital_stat': marital, 'education': education,
          'instance_weight': np.float32(_number(path, number, values, 'instance_weight')),
          'line': number,
      }


def make_transform(names, num_features: int, college_includes_associates: bool = False):
  """The stored example -> record transform for the tasks ``names``."""
  college = COLLEGE | ASSOCIATES if college_includes_associates else COLLEGE

  def transform(example) -> dict:
    x = np.asarray(example['features'], np.float32)
    if x.shape != (num_features,):
      raise ValueError(f"field 'features' has shape {x.shape}, expected ({num_features},)")
    education = example['education']
    education = education.decode() if isinstance(education, bytes) else str(education)
    values = {'income_50k': bool(example['income_50k']),
              'never_married': bool(example['never_married']),
              'education_college': education in college}
    return {'inputs': x, 'labels': {n: np.float32(values[n]) for n in names},
            'masks': {n: np.bool_(True) for n in names}}

  return transform


@registry.DATASETS.register('census_income')
def load(data_dir: Optional[str] = None, *, manual_dir: Optional[str] = None, group: int = 1,
         college_includes_associates: bool = False) -> MultiTaskDataset:
  """Census-income as a ``MultiTaskDataset`` 'census_income' with the MMoE task group.

  Args:
    data_dir: the tfds data dir (None: tfds's default); the data is built there if needed.
    manual_dir: the dir with the UCI files (None: <data_dir>/downloads/manual).
    group: 1 = (income_50k, never_married), 2 = (education_college, never_married).
    college_includes_associates: count the two Associates degrees as college (group 2).
  Returns:
    splits 'train', 'val', 'test' of records {'inputs': float32 [D], 'labels': {task: 0./1.},
    'masks': {task: True}}.
  """
  if group not in GROUPS:
    raise ValueError(f'census_income: unknown group {group!r}; groups are {sorted(GROUPS)} '
                     f'({GROUPS})')
  names = GROUPS[group]
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  builder = CensusIncomeKdd(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=config)
  num_features = int(builder.info.metadata['num_features'])
  sources = tfds.data_source('census_income_kdd', split=list(SPLITS), data_dir=data_dir,
                             download=False, builder_kwargs={'file_format': 'array_record'})
  transform = make_transform(names, num_features, college_includes_associates)
  splits = {SPLITS[s]: RecordSource(source, transform, f'census_income/{SPLITS[s]}')
            for s, source in zip(SPLITS, sources)}
  tasks = tasks_lib.TaskSet([tasks_lib.binary(n) for n in names])
  return MultiTaskDataset('census_income', tasks, splits)
