"""Task weighting and gradient aggregation methods.

* ``base``: the interface (``Weighting``: pure ``init``/``update``, ``WeightingResult``, ...).
* ``methods``: one module per method, each registered in ``registry.WEIGHTINGS``.
* ``registry``: ``get(name, **hparams)``, ``names()``, ``hyperparameters(name)``.
* ``apply``: the one weighting step (``run_method``) and post-update hook (``after_step``)
  shared by the engine, ``combine`` and ``optax_adapter``.
* ``combine`` and ``optax_adapter``: a method on any task-stacked gradient, or as an optax
  transformation.
* ``jacobian``: per-task Jacobians, Gram matrices, combinations; ``solvers``: the jittable
  convex solvers; ``engine``: the train step's gradient computation; ``checks``: argument
  checks shared by the methods.

The public API is ``mtl_jax.weighting``.
"""
