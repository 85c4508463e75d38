"""IMTL: impartial multi-task learning, hybrid of IMTL-L and IMTL-G."""

import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult
from mtl_jax._src.weighting.methods.imtl_g import imtl_g
from mtl_jax._src.weighting.methods.imtl_l import check_scale_hparams, init_scales, step_scales


@registry.WEIGHTINGS.register('imtl')
def imtl(init: float = 0.0, lr: float = 0.025, match_sum: bool = True) -> Weighting:
  """Hybrid IMTL: IMTL-L loss scaling, then IMTL-G on the gradients of the scaled losses.

  Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang (2021), "Towards Impartial Multi-task
  Learning", ICLR 2021.

  The losses are scaled as in ``imtl_l``: L'_t = e^{s_t} L_t - s_t with learned log-scales s,
  so their gradients are g'_t = e^{s_t} g_t and their Gram matrix G' = D G D, D = diag(e^s).
  IMTL-G (``imtl_g``: alpha' proportional to G'^+ sqrt(diag G'), sum_t alpha'_t = 1, x T under
  ``match_sum``) gives the direction d = sum_t alpha'_t g'_t whose projections on every unit
  gradient g_t / ||g_t|| are equal, so alpha_t = alpha'_t e^{s_t}.  s then takes one Adam step
  on sum_t (e^{s_t} L_t - s_t) (gradient e^{s_t} L_t - 1 at the current losses; alpha uses s
  before the step), as in ``imtl_l``.  This is LibMTL's ``IMTL`` (which solves IMTL-G in
  closed form from the gradients and trains s with the model's optimiser); the Gram form
  also handles zero and linearly dependent gradients.

  Task-specific parameters get unweighted gradients grad L_t.  LibMTL's heads get the
  gradients of the scaled losses, e^{s_t} grad L_t: neither engine option is that (weighted
  heads would get alpha'_t e^{s_t} grad L_t, and alpha'_t, an IMTL-G coefficient, can be
  negative, which would ascend task t's own loss), so the heads keep unweighted gradients,
  which differ from LibMTL's by the positive per-task factor e^{s_t} (1 at the start; a
  slowly varying factor per head, which Adam-type optimisers nearly cancel).

  Args:
    init: initial log-scale s_t of every task (finite).
    lr: Adam learning rate of s (>= 0).
    match_sum: multiply alpha' by T to compare with the sum of losses; False gives
      sum_t alpha'_t = 1, as in the paper and LibMTL.

  Returns:
    The ``Weighting`` (at least 2 tasks); its state is ``IMTLLState`` (float32).
  """
  init, lr, optimizer = check_scale_hparams('imtl', init, lr)
  match_sum = checks.check_bool('imtl', 'match_sum', match_sum)
  gradient_part = imtl_g(match_sum=match_sum)

  def update(inputs, state, key):
    del key
    g = inputs.gram
    scale = jnp.exp(state.log_scale).astype(g.dtype)
    scaled_gram = scale[:, None] * g * scale[None, :]
    alpha_scaled = gradient_part.update(inputs._replace(gram=scaled_gram), (), None).weights
    return WeightingResult(alpha_scaled * scale, step_scales(optimizer, state, inputs.losses))

  return Weighting('imtl', Needs.GRAM, init=lambda num: init_scales(optimizer, init, num),
                   update=update, head_grads='unweighted', min_tasks=2)
