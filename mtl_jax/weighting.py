"""Task weighting and gradient aggregation: how per-task losses and gradients combine.

A method is a ``Weighting``: pure ``init(num_tasks)`` and ``update(inputs, state, key)``.

* ``get(name, **hparams)``, ``names()``, ``hyperparameters(name)``: the registry.
* ``combine(method, jacobian, losses, state=..., key=...)``: a method on any task-stacked
  gradient the caller computed (no trainer needed); ``as_optax``: the same as an optax
  transformation in front of any optimizer.
* ``jacobian``, ``gram``, ``weighted_sum``: the engine's per-task Jacobian (one vmapped
  pullback), its Gram matrix J J^T and the combination alpha^T J.
* ``solvers``: the jittable convex solvers (min-norm, non-negative QP, CAGrad, Nash-MTL).
"""

from mtl_jax._src.weighting import (Needs, Weighting, WeightingInputs, WeightingResult,
                                    aligned_mtl, as_optax, cagrad, combine, dualproj, dwa, ew,
                                    famo, get, gls, gradnorm, gram, hyperparameters, imtl_g,
                                    jacobian, mgda, names, nash_mtl, pcgrad, rlw, solvers, static,
                                    upgrad, uw, weighted_sum)

__all__ = [
    'Needs', 'Weighting', 'WeightingInputs', 'WeightingResult', 'aligned_mtl', 'as_optax',
    'cagrad', 'combine', 'dualproj', 'dwa', 'ew', 'famo', 'get', 'gls', 'gradnorm', 'gram',
    'hyperparameters', 'imtl_g', 'jacobian', 'mgda', 'names', 'nash_mtl', 'pcgrad', 'rlw',
    'solvers', 'static', 'upgrad', 'uw', 'weighted_sum',
]
