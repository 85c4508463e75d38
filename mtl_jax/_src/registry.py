"""One registry mechanism for every swappable component.

A component registers where it is defined::

    @registry.WEIGHTINGS.register('mgda')
    def mgda(normalization: str = 'none', ...) -> Weighting: ...

Its config block (``config.weighting.mgda``) and its defaults come from the builder's
signature, once: ``defaults('mgda')`` lists the keyword parameters that have a default,
minus the registry's ``context`` parameters (values the trainer supplies, such as the task
set or the backbone, never config options).  ``build(name, **options)`` checks the options
against that signature and names the bad one.

Registries: ``WEIGHTINGS`` (``mtl_jax.weighting``), ``MODELS`` and ``BACKBONES``
(``mtl_jax.models``), ``DATASETS`` (``mtl_jax.data``).  Optimizers are looked up in optax by
name (``optimizer``), as big_vision does.
"""

import importlib
import inspect
from typing import Any, Callable, Optional


class Registry:
  """Builders by name, of one ``kind`` of component (used in error messages).

  Args:
    kind: what the registry holds ('weighting method', 'model', ...).
    context: builder parameters the caller supplies (not config options).
    modules: modules imported on first use, so that their ``register`` calls have run.
  """

  def __init__(self, kind: str, *, context: tuple[str, ...] = (), modules: tuple[str, ...] = ()):
    self.kind = kind
    self.context = tuple(context)
    self._modules = tuple(modules)
    self._builders: dict[str, Callable] = {}

  def register(self, name: str) -> Callable[[Callable], Callable]:
    """A decorator that registers a builder under ``name`` (once)."""
    def decorate(builder: Callable) -> Callable:
      if name in self._builders and self._builders[name] is not builder:
        raise ValueError(f'{self.kind} {name!r} is registered twice')
      self._builders[name] = builder
      return builder
    return decorate

  def _load(self) -> None:
    for module in self._modules:
      importlib.import_module(module)

  def names(self) -> list[str]:
    self._load()
    return sorted(self._builders)

  def builder(self, name: str) -> Callable:
    self._load()
    if name not in self._builders:
      raise ValueError(f'unknown {self.kind} {name!r}; available: {self.names()}')
    return self._builders[name]

  def defaults(self, name: str) -> dict[str, Any]:
    """The builder's options and their defaults: its config block."""
    params = inspect.signature(self.builder(name)).parameters.items()
    return {k: p.default for k, p in params
            if p.default is not inspect.Parameter.empty and k not in self.context
            and p.kind is not inspect.Parameter.VAR_KEYWORD}

  def parameters(self, name: str) -> dict[str, Any]:
    """Every parameter of the builder (``inspect.Parameter.empty`` where there is no default)."""
    return {k: p.default for k, p in inspect.signature(self.builder(name)).parameters.items()}

  def build(self, name: str, *args, **options):
    """``builder(*args, **options)``; an option the builder does not take raises naming it."""
    builder = self.builder(name)
    known = set(self.parameters(name))
    unknown = sorted(set(options) - known)
    if unknown:
      raise ValueError(f'{name}.{unknown[0]}: unknown option of {self.kind} {name!r} (it takes '
                       f'{sorted(known - set(self.context))})')
    return builder(*args, **options)


def optimizer(name: str, learning_rate, **kwargs):
  """``optax.<name>(learning_rate, **kwargs)``: any optax optimizer by name.

  Keyword arguments the optimizer does not take raise ``ValueError`` naming them; a value of
  None keeps optax's default.
  """
  import optax  # pylint: disable=import-outside-toplevel
  fn = getattr(optax, name, None)
  params = _optimizer_parameters(fn)
  if params is None or 'learning_rate' not in params:
    raise ValueError(f'unknown optimizer {name!r}: not an optax optimizer taking a '
                     'learning_rate (e.g. adam, adamw, sgd, lion, lamb, adafactor)')
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    raise ValueError(f'{unknown[0]}: optax.{name} takes no argument {unknown[0]!r} (it takes '
                     f'{sorted(set(params) - {"learning_rate"})})')
  return fn(learning_rate, **{k: v for k, v in kwargs.items() if v is not None})


def _optimizer_parameters(fn) -> Optional[dict]:
  if not callable(fn):
    return None
  try:
    return dict(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return None


def optimizer_parameters(name: str) -> set[str]:
  """The keyword arguments ``optax.<name>`` takes (empty if it is not an optimizer)."""
  import optax  # pylint: disable=import-outside-toplevel
  return set(_optimizer_parameters(getattr(optax, name, None)) or ()) - {'learning_rate'}


WEIGHTINGS = Registry('weighting method', modules=('mtl_jax._src.weighting.methods',))
BACKBONES = Registry('backbone', context=('dropout',), modules=('mtl_jax._src.models.zoo',))
MODELS = Registry('model', context=('tasks', 'backbone', 'tower_hidden', 'dropout',
                                    'per_task_inputs'),
                  modules=('mtl_jax._src.models.zoo',))
DATASETS = Registry('data set', context=('seed',), modules=('mtl_jax._src.data.catalog',))
