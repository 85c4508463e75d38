"""The notebooks as committed: the six of the guide, no outputs, Colab's install cell first,
the small-size switch second, only the public API.  (``make test`` also runs each one
headless in its small size, with nbmake.)"""

import ast
import glob
import json
import os

import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, 'notebooks', '*.ipynb')))
EXPECTED = ['01_quickstart', '02_bring_your_own_model', '03_toy_pareto', '04_architectures',
            '05_multimnist', '06_many_devices']


def _cells(path):
  with open(path) as f:
    notebook = json.load(f)
  return notebook, notebook['cells']


def test_the_six_notebooks_exist():
  assert [os.path.basename(p)[:-len('.ipynb')] for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_clean_and_ready_for_colab(path):
  notebook, cells = _cells(path)
  code = [c for c in cells if c['cell_type'] == 'code']
  for cell in code:
    assert cell['outputs'] == [] and cell['execution_count'] is None, 'strip the outputs'
  assert 'widgets' not in notebook.get('metadata', {})
  install, switch = (''.join(c['source']) for c in code[:2])
  assert "find_spec('mtl_jax') is None" in install and "'pip', 'install'" in install
  assert "SMALL = os.environ.get('MTL_JAX_SMALL', '0') == '1'" in switch
  assert cells[0]['cell_type'] == 'markdown' and cells[0]['source'], 'a title and a story'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_uses_only_the_public_api(path):
  _, cells = _cells(path)
  for cell in cells:
    if cell['cell_type'] != 'code':
      continue
    source = '\n'.join(line for line in ''.join(cell['source']).splitlines()
                       if not line.lstrip().startswith(('%', '!')))
    for node in ast.walk(ast.parse(source)):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      for name in names:
        assert '._src' not in name and not name.startswith(('tests', 'benchmarks')), name
