"""QM9 molecules from the ``qm9pack`` package: rows, targets, graphs and the papers' split.

QM9 (Ramakrishnan, Dral, Rupp and von Lilienfeld, "Quantum chemistry structures and properties
of 134 kilo molecules", Scientific Data 2014): DFT (B3LYP/6-31G(2df,p)) properties of small
organic molecules of H, C, N, O and F.  ``qm9pack`` ships the release as three CSV files
(43 610, 43 611 and 43 610 rows: 130 831 molecules, the release's 133 885 without its 3 054
"uncharacterized" ones, as many as PyTorch Geometric's QM9), read here without importing the
package (its ``__init__`` needs ``pkg_resources``).

Targets, as PyTorch Geometric's QM9 and the MTL papers (Navon et al. 2022, Nash-MTL; Liu et
al. 2023, FAMO; Ban and Ji 2024, FairGrad) use them, in this order (``TARGETS``):

    mu (D), alpha (a0^3), homo, lumo (eV), r2 (a0^2), zpve (eV), u0, u, h, g (eV), cv (cal/mol K)

with u0, u, h, g the atomisation energies E - sum_atoms E_ref(element) (``ATOMREF``, the
release's reference energies, Hartree) and Hartree -> eV by 27.211386246.  Energies are
reported in meV (``REPORT_SCALE``).

Graphs follow PyTorch Geometric's QM9 (``molecule``): 11 node features, one-hot H, C, N, O, F,
the atomic number, aromatic (0/1), one-hot sp / sp2 / sp3 and the number of bonded hydrogens;
bond types single / double / triple / aromatic.  The release's bonds come from its SDF file,
which ``qm9pack`` does not ship: here RDKit perceives them from the coordinates
(``rdDetermineBonds.DetermineBonds``, charge 0; where its distance rule finds no valid bond
orders, about 3 % of the molecules, mostly strained bicyclic ones, with extended Hueckel
connectivity).  ``features='pyg'`` then reads them as
PyTorch Geometric does, which loads the SDF with ``sanitize=False``: Kekule bonds, and the
aromatic and hybridisation features 0 on every atom.  ``features='sanitized'`` takes RDKit's
perception instead (aromatic rings and bonds, sp/sp2/sp3).  The difference that remains for
'pyg': where a conjugated system has several Kekule structures, the double bonds RDKit places
can differ from the SDF's; and a molecule whose bond orders RDKit cannot assign at charge 0
keeps its connectivity with single bonds (``Molecule.bond_orders_found`` False).

Checked over all 130 831 molecules (2026-12-02, RDKit 2026.09.1, 54 s): bond orders found for
all but 2 (QM9 133831 and 133850); the perceived molecule gives the release's own SMILES
(canonical, without stereo, hydrogens removed) for 130 606 of the others; of the 223 that
differ, 221 are zwitterions whose charges RDKit places on other atoms of the same resonance
system or tautomer (e.g. QM9 1642, C[NH+]=C(N)C([O-])=O read as CNC(=[NH2+])C(=O)[O-]).
"""

import contextlib
import csv
import importlib.util
import json
import os
import sys
from typing import Iterator, NamedTuple, Optional

import numpy as np

HARTREE_EV = 27.211386246
ELEMENTS = ('H', 'C', 'N', 'O', 'F')
ATOMIC_NUMBER = {'H': 1, 'C': 6, 'N': 7, 'O': 8, 'F': 9}
# The release's per-element reference energies (Hartree): U0 (0 K), U, H, G (298.15 K).
ATOMREF = {'H': (-0.500273, -0.498857, -0.497912, -0.510927),
           'C': (-37.846772, -37.845355, -37.844411, -37.861317),
           'N': (-54.583861, -54.582445, -54.581501, -54.598897),
           'O': (-75.064579, -75.063163, -75.062219, -75.079532),
           'F': (-99.718730, -99.717314, -99.716370, -99.733544)}
TARGETS = ('mu', 'alpha', 'homo', 'lumo', 'r2', 'zpve', 'u0', 'u', 'h', 'g', 'cv')
UNITS = {'mu': 'D', 'alpha': 'a0^3', 'homo': 'meV', 'lumo': 'meV', 'r2': 'a0^2',
         'zpve': 'meV', 'u0': 'meV', 'u': 'meV', 'h': 'meV', 'g': 'meV', 'cv': 'cal/mol K'}
REPORT_SCALE = {t: 1000.0 if UNITS[t] == 'meV' else 1.0 for t in TARGETS}  # eV -> meV
BOND_TYPES = ('SINGLE', 'DOUBLE', 'TRIPLE', 'AROMATIC')
NUM_NODE_FEATURES = 11
FEATURES = ('pyg', 'sanitized')
_ENERGY_COLUMNS = ('InternalEnergy_0K_au', 'InternalEnergy_298K_au', 'Enthalphy_298K_au',
                   'GibbsFreeEnergy_298K_au')
INSTALL = "pip install -e '.[qm9]'"


class Molecule(NamedTuple):
  """One molecule's graph: ``nodes`` [n, 11] float32, ``positions`` [n, 3] float32 (Angstrom),
  ``bonds`` [m, 3] int32 rows (i, j, type index into ``BOND_TYPES``), i < j, each bond once."""
  nodes: np.ndarray
  positions: np.ndarray
  bonds: np.ndarray
  bond_orders_found: bool


def data_dir() -> str:
  """The folder of ``qm9pack``'s CSV files; ImportError naming the extra if it is missing."""
  spec = importlib.util.find_spec('qm9pack')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"QM9 needs the package 'qm9pack' (the data) and 'rdkit': {INSTALL}")
  return os.path.join(list(spec.submodule_search_locations)[0], 'data')


def read_rows(limit: Optional[int] = None) -> Iterator[dict]:
  """The CSV rows in the release's order (part 1, 2, 3), at most ``limit`` of them."""
  count = 0
  for part in (1, 2, 3):
    with open(os.path.join(data_dir(), f'qm9_part{part}.csv'), newline='') as f:
      for row in csv.DictReader(f):
        if limit is not None and count >= limit:
          return
        count += 1
        yield row


def elements_and_positions(row: dict) -> tuple[list, np.ndarray]:
  """The row's element symbols and coordinates [n, 3] (Angstrom, float64)."""
  elements = json.loads(row['Elements'].replace("'", '"'))
  positions = np.array(_numbers(row['XYZ_Ang']), np.float64).reshape(-1, 3)
  if len(elements) != len(positions) or len(elements) != int(row['N_atoms']):
    raise ValueError(f"QM9 row {row['Index']}: {len(elements)} elements, {len(positions)} "
                     f"positions, N_atoms {row['N_atoms']}")
  return elements, positions


def _numbers(text: str) -> list:
  """The numbers of a nested list as the release writes it ('0.', '1.5*^-6' included)."""
  return [float(x.replace('*^', 'e')) for x in text.replace('[', ' ').replace(']', ' ')
          .replace(',', ' ').split()]


def targets(row: dict) -> np.ndarray:
  """The 11 targets [11] float64 in ``TARGETS`` order and training units (energies in eV)."""
  elements, _ = elements_and_positions(row)
  ref = np.sum([ATOMREF[e] for e in elements], axis=0)              # [4] Hartree
  atomisation = (np.array([_numbers(row[c])[0] for c in _ENERGY_COLUMNS]) - ref) * HARTREE_EV
  value = lambda column: _numbers(row[column])[0]
  return np.array([value('Dipole_debye'), value('Polarizability_bohr3'),
                   value('HOMO_au') * HARTREE_EV, value('LUMO_au') * HARTREE_EV,
                   value('R2_bohr2'), value('ZPVE_au') * HARTREE_EV,
                   *atomisation, value('Heatcapacity_Cv_cal_mol_K')])


def _rdkit_molecule(elements, positions):
  """An RDKit molecule with bonds perceived from the coordinates (sanitised), and whether the
  bond orders were found (else connectivity only, single bonds)."""
  from rdkit import Chem, RDLogger                     # pylint: disable=import-outside-toplevel
  from rdkit.Chem import rdDetermineBonds               # pylint: disable=import-outside-toplevel
  RDLogger.DisableLog('rdApp.*')
  block = f'{len(elements)}\n\n' + ''.join(
      f'{e} {x:.10f} {y:.10f} {z:.10f}\n' for e, (x, y, z) in zip(elements, positions))
  for hueckel in (False, True):      # the distance rule, then extended Hueckel connectivity
    mol = Chem.MolFromXYZBlock(block)
    try:
      with _quiet():            # YAeHMOP (Hueckel) prints warnings from C
        rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=hueckel)
      return mol, True
    except ValueError:
      pass
  mol = Chem.MolFromXYZBlock(block)
  rdDetermineBonds.DetermineConnectivity(mol)
  return mol, False


@contextlib.contextmanager
def _quiet():
  """File descriptors 1 and 2 sent to /dev/null for the duration (C libraries' prints)."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 1)
      os.dup2(null.fileno(), 2)
      yield
  finally:
    for fd, copy in zip((1, 2), saved):
      os.dup2(copy, fd)
      os.close(copy)


def _as_pyg(mol):
  """The molecule as PyTorch Geometric reads the release's SDF: Kekule bonds, unsanitised."""
  from rdkit import Chem                               # pylint: disable=import-outside-toplevel
  return Chem.MolFromMolBlock(Chem.MolToMolBlock(mol, kekulize=True), sanitize=False,
                              removeHs=False)


def molecule(elements, positions, features: str = 'pyg') -> Molecule:
  """The graph of one molecule (see the module docstring for ``features``)."""
  if features not in FEATURES:
    raise ValueError(f'features must be one of {FEATURES}, got {features!r}')
  try:
    mol, found = _rdkit_molecule(elements, positions)
  except ImportError:
    raise ImportError(f"QM9 needs the package 'rdkit': {INSTALL}") from None
  if features == 'pyg' and found:
    mol = _as_pyg(mol)
  bonds = np.array([(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                     max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                     BOND_TYPES.index(str(b.GetBondType()))) for b in mol.GetBonds()],
                   np.int32).reshape(-1, 3)
  return Molecule(_node_features(mol, bonds), positions.astype(np.float32), bonds, found)


def _node_features(mol, bonds) -> np.ndarray:
  """[n, 11]: one-hot H/C/N/O/F, atomic number, aromatic, sp, sp2, sp3, bonded hydrogens."""
  n = mol.GetNumAtoms()
  out = np.zeros((n, NUM_NODE_FEATURES), np.float32)
  hybrid = {'SP': 7, 'SP2': 8, 'SP3': 9}
  for atom in mol.GetAtoms():
    i = atom.GetIdx()
    out[i, ELEMENTS.index(atom.GetSymbol())] = 1
    out[i, 5] = atom.GetAtomicNum()
    out[i, 6] = float(atom.GetIsAromatic())
    if str(atom.GetHybridization()) in hybrid:
      out[i, hybrid[str(atom.GetHybridization())]] = 1
  hydrogen = out[:, 5] == 1
  for i, j, _ in bonds:
    out[i, 10] += hydrogen[j]
    out[j, 10] += hydrogen[i]
  return out


def split_indices(num: int, seed: int = 0, test: int = 10000,
                  validation: int = 10000) -> dict:
  """The papers' split: a seeded permutation of range(num), its first ``test`` indices the
  test set, the next ``validation`` the validation set, the rest training (each sorted)."""
  if test < 0 or validation < 0 or test + validation >= num:
    raise ValueError(f'QM9 split: test ({test}) + validation ({validation}) must leave '
                     f'training molecules out of {num}')
  order = np.random.default_rng(seed).permutation(num)
  return {'test': np.sort(order[:test]), 'validation': np.sort(order[test:test + validation]),
          'train': np.sort(order[test + validation:])}
