"""mtl_jax's implementation.  Import the public modules (``mtl_jax``, ``mtl_jax.weighting``,
``mtl_jax.models``, ``mtl_jax.data``, ...) instead: names here may change without notice."""
