"""The MMoE synthetic regression data with controllable task correlation (Ma et al., 2018).

For T tasks with target cosine p between every pair of task vectors:

    w_t = c * sum_j C_tj u_j,   C = chol((1 - p) I + p 1 1^T),   u_j orthonormal in R^d
    y_t = w_t^T x + sum_{i=1}^m sin(a_i w_t^T x + b_i) + eps_t,   x ~ N(0, I_d)

For T = 2 this is exactly the paper's w_1 = c u_1, w_2 = c (p u_1 + sqrt(1 - p^2) u_2).
The equicorrelated Gram matrix is positive semi-definite iff p >= -1/(T-1).

The paper fixes neither a_i, b_i nor the noise.  Presets: 'google' (the parameters of
google-research's synthetic multi-task generator: c=1, m=10, a_i=i, b_i=(i-1)^2, noise std
0.01) and 'keras_mmoe' (those of drawbridge/keras-mmoe's demo: c=0.3, m=5, a_i, b_i ~ N(0,1)
drawn once, noise std 0.1).

Registered as the data set 'synthetic' (``mtl_jax.data.load('synthetic', seed=..., ...)``).
"""

from typing import Optional

import numpy as np

from mtl_jax._src import registry
from mtl_jax._src import tasks as tasks_lib
from mtl_jax._src.data.dataset import MultiTaskDataset

PRESETS = {
    'google': dict(scale=1.0, num_sines=10, noise_std=0.01, random_sines=False),
    'keras_mmoe': dict(scale=0.3, num_sines=5, noise_std=0.1, random_sines=True),
}


def _psd_cholesky(gram: np.ndarray) -> np.ndarray:
  """Lower-triangular L with L L^T = gram, also for singular PSD matrices (zero pivots)."""
  n = gram.shape[0]
  lower = np.zeros_like(gram)
  for i in range(n):
    for j in range(i + 1):
      rest = gram[i, j] - lower[i, :j] @ lower[j, :j]
      if i == j:
        lower[i, i] = np.sqrt(max(rest, 0.0))
      elif lower[j, j] > 1e-12:
        lower[i, j] = rest / lower[j, j]
  return lower


def task_vectors(num_tasks: int, correlation: float, input_dim: int, scale: float,
                 rng: np.random.Generator) -> np.ndarray:
  """[T, d] task vectors with pairwise cosine ``correlation`` and norm ``scale``."""
  if num_tasks > input_dim:
    raise ValueError(f'input_dim ({input_dim}) must be >= num_tasks ({num_tasks})')
  gaussian = rng.standard_normal((input_dim, input_dim))
  q, r = np.linalg.qr(gaussian)
  q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
  units = q.T[:num_tasks]
  gram = (1 - correlation) * np.eye(num_tasks) + correlation * np.ones((num_tasks, num_tasks))
  return scale * _psd_cholesky(gram) @ units


@registry.DATASETS.register('synthetic')
def make_synthetic(num_tasks: int = 2, correlation: float = 0.5, *, input_dim: int = 100,
                   preset: str = 'google', num_sines: Optional[int] = None,
                   noise_std: Optional[float] = None, scale: Optional[float] = None,
                   sizes: tuple[int, ...] = (10000, 1000, 1000), per_task_inputs: bool = False,
                   domain_shift: float = 0.0, seed: int = 0) -> MultiTaskDataset:
  """The synthetic data set with ``train``/``val``/``test`` splits of ``sizes`` examples.

  Tasks are regressions named ``y1 .. yT``.  Everything is drawn from ``seed``.
  ``num_sines``, ``noise_std`` and ``scale`` override the ``preset``'s values (None: keep).

  ``per_task_inputs``: one input per task (one data set per task, as in Office-31), inputs
  [N, T, D]: task t's example n is x_nt = e_nt + domain_shift * mu_t with e_nt ~ N(0, I) drawn
  independently per task and mu_t a random unit vector (task t's domain); its label is the
  usual function of e_nt, so the shift changes the input distribution only.
  """
  if preset not in PRESETS:
    raise ValueError(f'synthetic: unknown preset {preset!r}; available: {sorted(PRESETS)}')
  if num_tasks < 1:
    raise ValueError(f'synthetic: num_tasks must be >= 1, got {num_tasks}')
  lower = -1.0 / (num_tasks - 1) if num_tasks > 1 else -1.0
  if not lower <= correlation <= 1.0:
    raise ValueError(f'synthetic: correlation must be in [{lower:g}, 1] for {num_tasks} tasks, '
                     f'got {correlation}')
  if len(sizes) != 3 or min(sizes) < 1:
    raise ValueError(f'synthetic: sizes must be 3 positive split sizes, got {tuple(sizes)}')
  p = dict(PRESETS[preset])
  p.update({k: v for k, v in dict(num_sines=num_sines, noise_std=noise_std, scale=scale).items()
            if v is not None})
  if p['num_sines'] < 0 or p['noise_std'] < 0 or p['scale'] <= 0:
    raise ValueError(f'synthetic: need num_sines >= 0, noise_std >= 0, scale > 0; got {p}')

  rng = np.random.default_rng(seed)
  w = task_vectors(num_tasks, correlation, input_dim, p['scale'], rng)
  m = int(p['num_sines'])
  if p['random_sines']:
    alpha, beta = rng.standard_normal(m), rng.standard_normal(m)
  else:
    alpha, beta = np.arange(1, m + 1, dtype=float), np.arange(m, dtype=float) ** 2

  total = int(sum(sizes))
  if domain_shift and not per_task_inputs:
    raise ValueError('synthetic: domain_shift needs per_task_inputs=True')
  if per_task_inputs:
    e = rng.standard_normal((total, num_tasks, input_dim))
    mu = rng.standard_normal((num_tasks, input_dim))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x = e + domain_shift * mu
    proj = np.einsum('ntd,td->nt', e, w)                            # [N, T]
  else:
    x = rng.standard_normal((total, input_dim))
    proj = x @ w.T                                                  # [N, T]
  y = proj + np.sin(proj[..., None] * alpha + beta).sum(-1)
  y = y + p['noise_std'] * rng.standard_normal(y.shape)

  tasks = tasks_lib.TaskSet([tasks_lib.regression(f'y{t + 1}') for t in range(num_tasks)])
  bounds = np.cumsum([0, *sizes])
  splits = {}
  for name, lo, hi in zip(('train', 'val', 'test'), bounds[:-1], bounds[1:]):
    splits[name] = {
        'inputs': x[lo:hi].astype(np.float32),
        'labels': {n: y[lo:hi, t:t + 1].astype(np.float32) for t, n in enumerate(tasks.names)},
    }
  return MultiTaskDataset(f'synthetic_T{num_tasks}_p{correlation:g}', tasks, splits,
                          per_task_inputs=per_task_inputs)
