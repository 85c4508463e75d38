"""SI (sum_t log L_t) against autodiff of its objective, its scale invariance, and a run."""

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import weighting
from tests.conftest import train_tiny


def test_weights_are_the_gradient_of_the_sum_of_log_losses():
  losses = jnp.array([0.5, 2.0, 7.0])
  _, weights, _, _ = weighting.combine(weighting.get('si'), jnp.eye(3), losses)
  np.testing.assert_allclose(weights, jax.grad(lambda l: jnp.sum(jnp.log(l)))(losses),
                             rtol=1e-6)


def test_rescaling_a_task_loss_leaves_the_direction_unchanged():
  """L_t -> c_t L_t scales g_t by c_t and alpha_t by 1 / c_t: d = sum_t g_t / L_t stays."""
  rng = np.random.default_rng(0)
  jac, losses = rng.normal(size=(3, 5)).astype(np.float32), np.array([0.3, 1.5, 4.0], np.float32)
  scale = np.array([10.0, 0.01, 3.0], np.float32)
  method = weighting.get('si')
  d = weighting.combine(method, jac, losses).direction
  d_scaled = weighting.combine(method, scale[:, None] * jac, scale * losses).direction
  np.testing.assert_allclose(d_scaled, d, rtol=1e-5)
  np.testing.assert_allclose(d, (jac / losses[:, None]).sum(0), rtol=1e-5)


def test_a_zero_loss_gives_a_finite_weight_and_the_config_trains_it(tmp_path):
  _, weights, _, _ = weighting.combine(weighting.get('si', eps=1e-4), jnp.eye(2),
                                    jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(weights, [1e4, 1.0], rtol=1e-6)
  results = train_tiny(tmp_path, **{'weighting.name': 'si', 'weighting.si.eps': 1e-6})
  assert results['weighting'] == 'si'
