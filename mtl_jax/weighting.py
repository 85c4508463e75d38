"""Task weighting and gradient aggregation: how per-task losses and gradients combine.

A method is a ``Weighting``: pure ``init(num_tasks)`` and ``update(inputs, state, key)``.

* ``get(name, **hparams)``, ``names()``, ``hyperparameters(name)``: the registry;
  ``register(name)``: the decorator that adds a builder to it.
* ``combine(method, jacobian, losses, state=..., key=...) -> Combined``: a method on any
  task-stacked gradient the caller computed (no trainer needed); ``as_optax``: the same as an
  optax transformation in front of any optimizer.  Both keep the train step's guarantees
  (non-finite inputs leave the state unchanged, state checks).  ``after_step`` and
  ``optax_after_step``: the post-update hook of methods that have one (FAMO).
* ``jacobian``, ``rows``, ``gram``, ``weighted_sum``: the engine's per-task Jacobian (one
  vmapped pullback), its Gram matrix J J^T and the combination alpha^T J;
  ``gradient_diagnostics(G)``: per-task gradient norms, cosines and conflicting pairs.
* ``normalize``, ``log_losses``, ``ema``, ``grouped``: transforms ``Weighting -> Weighting``
  (normalised gradients, log-losses, averaged weights, per-parameter-group aggregation).
* ``solvers``: the jittable convex solvers (min-norm, non-negative QP, CAGrad, Nash-MTL).
* ``task_gradients`` (with ``LossFns``, ``Options``, ``EngineOutput``): the train step's
  engine, usable on any loss functions.
* Every registered method's builder under its registry key (``names()`` lists them): ``ew``,
  ``static``, ``uw``, ``dwa``, ``rlw``, ``gls``, ``si``, ``famo``, ``mgda``, ``pcgrad``,
  ``cagrad``, ``nash_mtl``, ``imtl_g``, ``upgrad``, ``dualproj``, ``aligned_mtl``,
  ``gradnorm``.
"""

from mtl_jax._src import registry as _registry
from mtl_jax._src.weighting import methods as _methods  # registers every method
from mtl_jax._src.weighting import solvers
from mtl_jax._src.weighting.apply import after_step
from mtl_jax._src.weighting.base import Needs
from mtl_jax._src.weighting.base import Weighting
from mtl_jax._src.weighting.base import WeightingInputs
from mtl_jax._src.weighting.base import WeightingResult
from mtl_jax._src.weighting.combine import Combined
from mtl_jax._src.weighting.combine import combine
from mtl_jax._src.weighting.diagnostics import gradient_diagnostics
from mtl_jax._src.weighting.engine import EngineOutput
from mtl_jax._src.weighting.engine import LossFns
from mtl_jax._src.weighting.engine import Options
from mtl_jax._src.weighting.engine import OptionError
from mtl_jax._src.weighting.engine import task_gradients
from mtl_jax._src.weighting.jacobian import gram
from mtl_jax._src.weighting.jacobian import jacobian
from mtl_jax._src.weighting.jacobian import rows
from mtl_jax._src.weighting.jacobian import weighted_sum
from mtl_jax._src.weighting.optax_adapter import WeightingState
from mtl_jax._src.weighting.optax_adapter import as_optax
from mtl_jax._src.weighting.optax_adapter import optax_after_step
from mtl_jax._src.weighting.registry import get
from mtl_jax._src.weighting.registry import hyperparameters
from mtl_jax._src.weighting.registry import names
from mtl_jax._src.weighting.transforms import EMAState
from mtl_jax._src.weighting.transforms import ema
from mtl_jax._src.weighting.transforms import grouped
from mtl_jax._src.weighting.transforms import log_losses
from mtl_jax._src.weighting.transforms import normalize

register = _registry.WEIGHTINGS.register

# Every registered method's builder under its name (``weighting.mgda(...)``): a new method
# module appears here without an edit to this file.
_BUILDERS = {name: _registry.WEIGHTINGS.builder(name) for name in names()}
globals().update(_BUILDERS)

__all__ = [
    'Combined', 'EMAState', 'EngineOutput', 'LossFns', 'Needs', 'OptionError', 'Options',
    'Weighting', 'WeightingInputs', 'WeightingResult', 'WeightingState', 'after_step',
    'as_optax', 'combine', 'ema', 'get', 'gradient_diagnostics', 'gram', 'grouped',
    'hyperparameters', 'jacobian', 'log_losses', 'names', 'normalize', 'optax_after_step',
    'register', 'rows', 'solvers', 'task_gradients', 'weighted_sum',
] + sorted(_BUILDERS)
