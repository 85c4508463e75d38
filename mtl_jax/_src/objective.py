"""The multi-task objective: a model, its tasks and a batch, as the loss functions the engine
differentiates.

``Objective(model, tasks, frozen)`` is built once, with the train step.  What the engine
needs to know about the model is decided there, not by tracing the model inside the step:

* ``splits``: whether the model exposes ``representation(x, train)`` (the shared trunk, whose
  parameters live under ``'shared'``) and ``heads(z, train, stacked=..., inputs=...)`` (the
  task-specific part).  Such a model gets the engine's representation-level mode and the
  one-head-pass Jacobian (``weighting.engine``).
* auxiliary losses: a model adds them with ``self.sow('aux_loss', name, value)`` in training;
  ``bind`` returns them as a dict ``{name: scalar}`` next to the ``[T]`` task losses, so
  their names are the dict's keys, known when the step is traced.

``bind(params, model_state, batch, rng)`` gives the engine's ``LossFns`` for one batch.

Mixed precision (``compute_dtype``, see ``mtl_jax/_src/precision.py``): the model runs on a
bfloat16 copy of the parameters and inputs, its outputs return in float32, so the losses and
all the engine does with them stay float32; the representation handed to the heads is float32
too (its per-task cotangents in mode 'rep'), or ``grad_dtype`` if that is given.
"""

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax._src import precision
from mtl_jax._src.tasks import TaskSet
from mtl_jax._src.weighting.engine import LossFns

PyTree = Any
AUX_LOSS = 'aux_loss'


def apply_model(model: nn.Module, params, model_state, inputs, train: bool, rng=None,
                method=None, compute_dtype=None):
  """``(output, new model_state, {aux-loss name: scalar})`` of ``model.apply``.

  In training every non-parameter collection is mutable (e.g. ``batch_stats``) and the
  auxiliary losses the model sowed are summed per name (``'a/b'`` for nested scopes).
  With ``compute_dtype`` (e.g. ``jnp.bfloat16``) the floating parameters and inputs are cast
  to it, and the output, the auxiliary losses and the new model state return in float32 (the
  model state in its own dtypes)."""
  if compute_dtype is not None:
    out, new_state, aux = apply_model(model, precision.cast(params, compute_dtype), model_state,
                                      precision.cast(inputs, compute_dtype), train, rng, method)
    return (precision.to_float32(out), precision.like(new_state, model_state),
            precision.to_float32(aux))
  variables = {'params': params, **model_state}
  rngs = {'dropout': rng} if rng is not None else None
  if not train:
    return model.apply(variables, inputs, train=False, rngs=rngs, method=method), model_state, {}
  out, new_state = model.apply(variables, inputs, train=True, rngs=rngs,
                               mutable=list(model_state) + [AUX_LOSS], method=method)
  new_state = flax.core.unfreeze(new_state)
  sown = new_state.pop(AUX_LOSS, {})
  aux_losses = {name: sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(values))
                for name, values in flax.traverse_util.flatten_dict(sown, sep='/').items()}
  return out, new_state, aux_losses


def merge_model_state(from_trunk, from_heads):
  """Model state whose ``'shared'`` entries come from the trunk pass, the rest from the
  heads pass (each pass updates only the statistics of the modules it ran)."""
  return {c: {**from_heads[c], **({'shared': from_trunk[c]['shared']}
                                  if 'shared' in from_trunk.get(c, {}) else {})}
          for c in from_heads}


class Objective:
  """Per-task losses of ``model`` on ``tasks``.

  Args:
    model: a multi-task flax module returning ``{task: prediction}``, params split into
      ``'shared'`` and ``'task'``.
    tasks: the task set; fixes the order of the ``[T]`` losses.
    frozen: optional bool pytree like the params: True leaves get no gradient
      (``stop_gradient``), so Jacobians and Gram matrices cover trainable parameters only.
    compute_dtype: the dtype the model computes in (None: the params' own, float32).
    grad_dtype: the dtype of the representation handed to the heads, hence of its
      per-task cotangents in mode 'rep' (None: float32).
  """

  def __init__(self, model: nn.Module, tasks: TaskSet, frozen: Optional[PyTree] = None,
               compute_dtype=None, grad_dtype=None):
    self.model, self.tasks, self.frozen = model, tasks, frozen
    self.compute_dtype, self.grad_dtype = compute_dtype, grad_dtype
    self.splits = hasattr(model, 'representation') and hasattr(model, 'heads')

  def _freeze(self, params):
    if self.frozen is None:
      return params
    return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.frozen)

  def bind(self, params, model_state, batch, rng) -> LossFns:
    """The loss functions of one training batch (dropout from ``rng``)."""
    model, tasks, inputs, low = self.model, self.tasks, batch['inputs'], self.compute_dtype

    def full(p):
      preds, new_state, aux_losses = apply_model(model, self._freeze(p), model_state, inputs,
                                                 True, rng, compute_dtype=low)
      return tasks.losses(preds, batch), aux_losses, new_state

    if not self.splits:
      return LossFns(full)

    def trunk(shared):
      p = self._freeze({'shared': shared, 'task': params['task']})
      z, new_state, aux_losses = apply_model(model, p, model_state, inputs, True, rng,
                                             method='representation', compute_dtype=low)
      self._no_aux_losses(aux_losses)
      return precision.cast(z, self.grad_dtype), new_state

    def heads(z_stacked, task):
      p = self._freeze({'shared': params['shared'], 'task': task})
      run = lambda module, z, train: module.heads(z, train, stacked=True, inputs=inputs)
      preds, new_state, aux_losses = apply_model(model, p, model_state, z_stacked, True, rng,
                                                 method=run, compute_dtype=low)
      self._no_aux_losses(aux_losses)
      return tasks.losses(preds, batch), new_state

    return LossFns(full, trunk, heads, merge_model_state, len(tasks))

  def _no_aux_losses(self, aux_losses):
    if aux_losses:
      raise ValueError(f'{type(self.model).__name__} sowed auxiliary losses '
                       f'{sorted(aux_losses)} inside representation()/heads(); a model with '
                       'auxiliary losses must not define them')
