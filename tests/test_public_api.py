"""The public API: modules that only re-export, and docs/api.md that lists them."""

import importlib
import inspect
import os
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'docs'))
import make_api  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize('name', make_api.MODULES)
def test_public_modules_only_re_export_the_implementation(name):
  module = importlib.import_module(name)
  assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
  for export in module.__all__:
    obj = getattr(module, export)
    if inspect.isfunction(obj) or inspect.isclass(obj):
      assert obj.__module__.startswith('mtl_jax._src'), (name, export, obj.__module__)
  own = [n for n, v in vars(module).items()
         if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == name]
  assert not own, f'{name} defines {own}: implementation belongs in mtl_jax._src'


def test_docs_api_lists_the_public_api():
  with open(make_api.PATH) as f:
    assert f.read() == make_api.render(), 'docs/api.md is stale: run docs/make_api.py'


def test_every_registered_component_is_reachable_from_the_public_api():
  from mtl_jax import data, models, weighting
  assert set(weighting.names()) <= set(weighting.__all__)
  for name in weighting.names():
    assert getattr(weighting, name) is weighting.register.__self__.builder(name)
  assert {'synthetic', 'multimnist', 'celeb_a', 'census_income'} <= set(data.names())
  assert {'shared_bottom', 'mmoe', 'ple', 'mtan'} <= set(models.names())
