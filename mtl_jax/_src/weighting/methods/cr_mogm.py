"""CR-MOGM: a base method's weights, exponentially averaged across steps."""

import dataclasses
from collections.abc import Mapping
from typing import Optional

from mtl_jax._src import registry
from mtl_jax._src.weighting import checks, transforms
from mtl_jax._src.weighting.base import Weighting


@registry.WEIGHTINGS.register('cr_mogm')
def cr_mogm(base: str = 'mgda', alpha: float = 0.9,
            base_hparams: Optional[dict] = None) -> Weighting:
  """CR-MOGM: the exponential moving average of a gradient method's weights.

  Zhou, Zhang, Jiang, Zhong, Gu and Zhu (2022), "On the Convergence of Stochastic
  Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022.  Stochastic gradient
  manipulation (MGDA, PCGrad, CAGrad, ...) picks its weights from the current mini-batch
  gradients alone, which can keep it from converging to a Pareto-optimal point; averaging
  the weights over steps fixes that.  With lambda^_k the base method's weights at step k:

      lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda^_k,   lambda_0 = lambda^_1,

  and d_k = sum_t lambda_{k,t} g_t with the current gradients (``transforms.ema`` of the
  base method, TorchJD's ``CRMOGMWeighting`` conventions; alpha is fixed here, where the
  paper's analysis lets it grow towards 1 as the learning rate decays).  The default base is
  MGDA, the method the paper's analysis and non-convergence example centre on (TorchJD's
  examples wrap UPGrad: ``base='upgrad'``).  Everything else (head gradients, randomness,
  state) is the base method's; the state is ``EMAState(base state, lambda_{k-1}, started)``.

  Args:
    base: the registry key of the method whose weights are averaged (not a direct method,
      whose weights are no coefficients, nor cr_mogm).
    alpha: the coefficient of the previous weights, in [0, 1] (0: the base method itself).
    base_hparams: the base method's hyperparameters ({name: value}); None: its defaults.

  Returns:
    The ``Weighting`` (stateful; the base method's other properties).
  """
  names = registry.WEIGHTINGS.names()
  if base == 'cr_mogm':
    raise ValueError("cr_mogm: base 'cr_mogm' is this wrapper itself; it wraps another method "
                     "(for an average of averaged weights use the 'ema' transform on top)")
  if not isinstance(base, str) or base not in names:
    allowed = [n for n in names if n != 'cr_mogm']
    raise ValueError(f'cr_mogm: base must be the registry key of another weighting method, '
                     f'one of {allowed}, got {base!r}')
  alpha = checks.check_finite('cr_mogm', 'alpha', alpha, minimum=0.0)
  if alpha > 1:
    raise ValueError(f'cr_mogm: alpha must be <= 1.0, got {alpha}')
  hparams = base_hparams.to_dict() if hasattr(base_hparams, 'to_dict') else base_hparams
  if hparams is None:
    hparams = {}
  if not isinstance(hparams, Mapping) or not all(isinstance(k, str) for k in hparams):
    raise ValueError(f'cr_mogm: base_hparams must be None or a dict of the hyperparameters '
                     f'of base {base!r}, got {base_hparams!r}')
  unknown = sorted(set(hparams) - set(registry.WEIGHTINGS.parameters(base)))
  if unknown:
    raise ValueError(f'cr_mogm: base_hparams has unknown hyperparameter(s) {unknown} of base '
                     f'{base!r}; allowed: {sorted(registry.WEIGHTINGS.parameters(base))}')
  try:
    method = registry.WEIGHTINGS.builder(base)(**hparams)
  except (TypeError, ValueError) as e:
    raise ValueError(f'cr_mogm: base_hparams {dict(hparams)!r} of base {base!r}: {e}') from None
  if method.direct:
    raise ValueError(f'cr_mogm: base {base!r} returns the direction itself (a direct '
                     'method), not weights to average')
  return dataclasses.replace(transforms.ema(method, alpha), name='cr_mogm')
