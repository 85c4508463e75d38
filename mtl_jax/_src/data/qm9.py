"""QM9 as a ``MultiTaskDataset`` 'qm9': 11 regression tasks on molecular graphs.

The protocol of Nash-MTL (Navon et al. 2022), FAMO (Liu et al. 2023) and FairGrad (Ban and Ji
2024): the 11 targets of ``qm9_molecules.TARGETS``, each standardised with the training split's
mean and standard deviation (``load(...).stats``); each task's metric ``mae_unscaled`` is its
mean absolute error in the original units (energies in meV), as the papers report it; the
split a seeded permutation of the molecules, the first ``test`` the test set, the next
``validation`` the validation set, the rest training.

Each record's input is one molecule as a complete graph with distances (PyTorch Geometric's
``Complete()`` and ``Distance(norm=False)`` transforms, as the papers apply them), padded to
static budgets so that every batch has the same shapes:

    nodes [max_atoms, 11], node_mask [max_atoms],
    edges [max_atoms (max_atoms - 1), 5]  (bond one-hot single/double/triple/aromatic, 0 for
                                           a non-bonded pair; the distance in Angstrom),
    senders, receivers [max_atoms (max_atoms - 1)] (local node indices), edge_mask

every ordered pair of distinct atoms being an edge, in row-major order of (sender, receiver).
The ``mpnn`` backbone reads this dict.  The cache is ``qm9_builder``'s (built on first use).
"""

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from mtl_jax._src import losses as losses_lib
from mtl_jax._src import metrics as metrics_lib
from mtl_jax._src import registry
from mtl_jax._src import tasks as tasks_lib
from mtl_jax._src.data import qm9_builder
from mtl_jax._src.data import qm9_molecules as qm9
from mtl_jax._src.data.dataset import MultiTaskDataset
from mtl_jax._src.data.sources import RecordSource

MAX_ATOMS = 29               # the largest QM9 molecule (with hydrogens)
SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}


class Stats(NamedTuple):
  """Training mean and standard deviation of each target [11] (training units)."""
  mean: np.ndarray
  std: np.ndarray


class _Subset:
  """``source[indices[k]]`` as item k (random access into the one cached split)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, k):
    return self.source[int(self.indices[k])]

  def __getitems__(self, ks):
    return self.source.__getitems__([int(self.indices[k]) for k in ks])


def complete_graph(example, max_atoms: int) -> dict:
  """The padded complete graph with distances of one cached molecule (module docstring)."""
  nodes, positions = np.asarray(example['nodes']), np.asarray(example['positions'])
  n = nodes.shape[0]
  if n > max_atoms:
    raise ValueError(f'molecule {int(example["index"])} has {n} atoms, more than '
                     f'max_atoms={max_atoms}')
  budget = max_atoms * (max_atoms - 1)
  i, j = np.nonzero(~np.eye(n, dtype=bool))                    # ordered pairs, row-major
  bond = np.zeros((n, n, len(qm9.BOND_TYPES)), np.float32)
  for a, b, t in np.asarray(example['bonds']).reshape(-1, 3):
    bond[a, b, t] = bond[b, a, t] = 1.0
  distance = np.linalg.norm(positions[i] - positions[j], axis=1)
  edges = np.zeros((budget, len(qm9.BOND_TYPES) + 1), np.float32)
  edges[:len(i)] = np.concatenate([bond[i, j], distance[:, None]], axis=1)
  pad = lambda x, size, dtype: np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:],
                                                           dtype)]).astype(dtype)
  return {'nodes': pad(nodes, max_atoms, np.float32),
          'node_mask': np.arange(max_atoms) < n,
          'edges': edges, 'senders': pad(i, budget, np.int32),
          'receivers': pad(j, budget, np.int32), 'edge_mask': np.arange(budget) < len(i)}


def check_budget(source, indices, max_atoms: int) -> None:
  """Raises ``ValueError`` naming the first molecule of ``source[indices]`` with more atoms
  than ``max_atoms`` (and how many do), before any training."""
  sizes = ((int(r['index']), len(r['nodes'])) for r in (source[int(k)] for k in indices))
  over = [(index, n) for index, n in sizes if n > max_atoms]
  if over:
    index, n = over[0]
    raise ValueError(f'qm9.max_atoms: molecule {index} has {n} atoms, more than the node '
                     f'budget max_atoms={max_atoms} ({len(over)} of the {len(indices)} '
                     f'molecules do; QM9\'s largest has {MAX_ATOMS})')


def target_stats(source, indices) -> Stats:
  """Mean and (population) standard deviation of the targets of ``source[indices]``."""
  targets = np.stack([np.asarray(r['targets'], np.float64)
                      for r in source.__getitems__([int(k) for k in indices])])
  return Stats(targets.mean(0), np.maximum(targets.std(0), 1e-12))


def make_transform(stats: Stats, max_atoms: int):
  """The cached example -> record transform: the graph, standardised labels, all present."""
  def transform(example) -> dict:
    y = (np.asarray(example['targets'], np.float64) - stats.mean) / stats.std
    return {'inputs': complete_graph(example, max_atoms),
            'labels': {t: np.float32(y[k]).reshape(1) for k, t in enumerate(qm9.TARGETS)},
            'masks': {t: np.bool_(True) for t in qm9.TARGETS}}
  return transform


class _ScaledError:
  """|p - y| times ``scale``: on standardised targets, the error in the original units."""

  def __init__(self, scale: float):
    self.scale = float(scale)

  def __call__(self, pred, label):
    return losses_lib.absolute_error(pred, label) * self.scale

  def __eq__(self, other):
    return isinstance(other, _ScaledError) and other.scale == self.scale

  def __hash__(self):
    return hash(self.scale)


def make_tasks(stats: Stats) -> tasks_lib.TaskSet:
  """The 11 regression tasks on standardised targets, each with metrics mse and mae (in
  standard deviations) and ``mae_unscaled``: the mean absolute error in the target's own
  units (``qm9_molecules.UNITS``: energies in meV), the figure the papers report."""
  tasks = []
  for k, name in enumerate(qm9.TARGETS):
    scale = stats.std[k] * qm9.REPORT_SCALE[name]
    unscaled = metrics_lib.Metric('mae_unscaled', _ScaledError(scale), higher_is_better=False)
    task = tasks_lib.regression(name)
    tasks.append(dataclasses.replace(task, metrics=task.metrics + (unscaled,)))
  return tasks_lib.TaskSet(tasks)


@registry.DATASETS.register('qm9')
def load(data_dir: Optional[str] = None, *, features: str = 'pyg', limit: Optional[int] = None,
         split_seed: int = 0, test: int = 10000, validation: int = 10000,
         train_size: int = 0, max_atoms: int = MAX_ATOMS) -> MultiTaskDataset:
  """QM9 as 11 regression tasks ('mu', ..., 'cv'), splits 'train', 'val', 'test'.

  Args:
    data_dir: the tfds data dir of the cache (None: tfds's default); built there if needed.
    features: 'pyg' (PyTorch Geometric's node features) or 'sanitized' (``qm9_molecules``).
    limit: use the first ``limit`` molecules only (a small cache of its own).
    split_seed: the seed of the split's permutation.
    test, validation: the sizes of those splits (the papers': 10 000 each).
    train_size: train on a random subset of this many of the training molecules (drawn with
      ``split_seed``; the test and validation sets do not change); 0: all of them.
    max_atoms: the node budget of every graph (29: the largest QM9 molecule).

  Returns:
    the data set, with ``stats`` (training mean and std of the targets) as an attribute.
  """
  builder = qm9_builder.build(data_dir, features=features, limit=limit)
  try:
    return _load_from(builder, split_seed, test, validation, train_size, max_atoms)
  except (RuntimeError, OSError) as e:       # array_record's errors on a damaged file
    raise ValueError(f'qm9.data_dir: the cache in {builder.data_dir} cannot be read '
                     f'({type(e).__name__}: {str(e).splitlines()[0]}); delete that directory '
                     'and it is built again') from e


def _load_from(builder, split_seed, test, validation, train_size, max_atoms):
  """``load`` once the cache is built."""
  source = builder.as_data_source(split='molecules')
  split = qm9.split_indices(len(source), split_seed, test, validation)
  if train_size:
    if not 0 < train_size <= len(split['train']):
      raise ValueError(f'qm9.train_size: must be in [0, {len(split["train"])}] (the training '
                       f'molecules), got {train_size}')
    rng = np.random.default_rng([split_seed, 1])
    split['train'] = np.sort(rng.choice(split['train'], train_size, replace=False))
  if max_atoms < MAX_ATOMS:
    check_budget(source, np.concatenate(list(split.values())), max_atoms)
  stats = target_stats(source, split['train'])
  transform = make_transform(stats, max_atoms)
  splits = {SPLITS[s]: RecordSource(_Subset(source, split[s]), transform, f'qm9/{SPLITS[s]}')
            for s in SPLITS}
  dataset = MultiTaskDataset('qm9', make_tasks(stats), splits)
  dataset.stats = stats
  return dataset
