"""The QM9 cache: a tfds builder ('qm9') writing every molecule's graph as array_record.

Built once from the installed ``qm9pack`` (nothing is downloaded), without TensorFlow, and read
back lazily through ``builder.as_data_source`` (random access, as grain reads it).  One split,
'molecules', in the release's order; the papers' train / validation / test split is taken at load
time from a seeded permutation (``qm9_molecules.split_indices``), so changing the seed needs no
rebuild.  Each example (see ``qm9_molecules``):

    nodes [n, 11] float32, positions [n, 3] float32 (Angstrom), bonds [m, 3] int32 (i, j, type),
    targets [11] float32 (``TARGETS``, training units; tf.Example stores no float64, and 7
    digits are 1e-6 eV on an atomisation energy of -17 eV), index (the QM9 number), smiles,
    bond_orders_found

Configs: 'pyg' (PyTorch Geometric's features, the default) and 'sanitized' (RDKit's aromaticity
and hybridisation); ``Qm9Config(name=..., limit=N)`` builds the first N molecules only (tests,
quick looks).  A full build reads the 130 831 molecules in a few minutes on one core, with
tfds's progress bar.
"""

from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax._src.data import qm9_molecules as qm9


class Qm9Config(tfds.core.BuilderConfig):
  """``features``: 'pyg' or 'sanitized' (``qm9_molecules.molecule``); ``limit``: build the
  first ``limit`` molecules only (None: all)."""

  def __init__(self, *, features: str = 'pyg', limit: Optional[int] = None, **kwargs):
    if features not in qm9.FEATURES:
      raise ValueError(f'qm9: features must be one of {qm9.FEATURES}, got {features!r}')
    if limit is not None and (type(limit) is not int or limit < 1):  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f'qm9: limit must be a positive integer or None, got {limit!r}')
    super().__init__(**kwargs)
    self.features = features
    self.limit = limit


class Qm9(tfds.core.GeneratorBasedBuilder):
  """QM9 molecules as graphs with the 11 regression targets of the MTL papers."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: qm9pack 1.0.3 CSV, bonds perceived by RDKit.'}
  BUILDER_CONFIGS = [Qm9Config(name='pyg', features='pyg'),
                     Qm9Config(name='sanitized', features='sanitized')]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=qm9.__doc__,
        features=tfds.features.FeaturesDict({
            'nodes': tfds.features.Tensor(shape=(None, qm9.NUM_NODE_FEATURES),
                                          dtype=np.float32),
            'positions': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
            'bonds': tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
            'targets': tfds.features.Tensor(shape=(len(qm9.TARGETS),), dtype=np.float32),
            'index': tfds.features.Scalar(dtype=np.int64),
            'smiles': tfds.features.Text(),
            'bond_orders_found': tfds.features.Scalar(dtype=np.bool_),
        }),
        metadata=tfds.core.MetadataDict(targets=list(qm9.TARGETS), units=qm9.UNITS),
        disable_shuffling=True)            # record k is the release's k-th molecule

  def _split_generators(self, dl_manager):
    del dl_manager
    qm9.data_dir()                         # a clear ImportError before tfds starts writing
    return {'molecules': self._generate_examples()}

  def _generate_examples(self):
    unassigned = []         # molecules whose bond orders RDKit could not assign: kept, counted
    for row in qm9.read_rows(self.builder_config.limit):
      elements, positions = qm9.elements_and_positions(row)
      mol = qm9.molecule(elements, positions, self.builder_config.features)
      if not mol.bond_orders_found:
        unassigned.append(int(row['Index']))
      yield int(row['Index']), {
          'nodes': mol.nodes, 'positions': mol.positions, 'bonds': mol.bonds,
          'targets': qm9.targets(row).astype(np.float32), 'index': int(row['Index']), 'smiles': row['SMILES'],
          'bond_orders_found': mol.bond_orders_found}
    if unassigned:
      print(f'qm9: bond orders not found for {len(unassigned)} molecule(s) (QM9 '
            f'{", ".join(map(str, unassigned[:10]))}{" ..." if len(unassigned) > 10 else ""}): '
            'kept with their connectivity as single bonds (bond_orders_found False)')


def build(data_dir: Optional[str] = None, features: str = 'pyg',
          limit: Optional[int] = None) -> Qm9:
  """The prepared builder (built into ``data_dir`` if not there yet; tfds's default dir for
  None).  ``limit`` builds the first ``limit`` molecules only, as config 'first<limit>_<features>'."""
  config = (features if limit is None
            else Qm9Config(name=f'first{limit}_{features}', features=features, limit=limit))
  builder = Qm9(data_dir=data_dir, config=config, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
