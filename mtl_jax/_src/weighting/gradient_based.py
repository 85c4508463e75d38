"""Gradient-based methods: coefficients alpha from the Gram matrix G = J J^T (or from J).

Every method here is linear in the gradients, d = J^T alpha.  Conventions
(``shared/reference/weighting.md`` §0): task-specific parameters get unweighted gradients
(``head_grads='unweighted'``) except for Nash-MTL; methods whose coefficients lie on the
simplex are multiplied by T under ``match_sum=True`` so that they compare with the sum of
losses (``match_sum=False`` reproduces LibMTL and torchjd).
"""

import re

import jax
import jax.numpy as jnp
import optax

from mtl_jax._src.weighting import solvers
from mtl_jax._src.weighting.base import Needs, Weighting, WeightingResult

_EPS = 1e-8


def _scale(alpha, match_sum):
  return alpha * alpha.shape[0] if match_sum else alpha


def _choice(method, name, value, allowed):
  if value not in allowed:
    raise ValueError(f'{method}: {name} must be one of {allowed}, got {value!r}')


def _gradient_method(name, update, *, needs=Needs.GRAM, init=lambda num_tasks: (),
                     head_grads='unweighted'):
  return Weighting(name, needs, init=init, update=update, head_grads=head_grads, min_tasks=2)


def mgda(normalization: str = 'none', match_sum: bool = True, max_iters: int = 250) -> Weighting:
  """MGDA (Sener & Koltun, 2018): the min-norm point of the convex hull of the gradients.

  g^_t = g_t / n_t with n_t = 1 ('none'), ||g_t|| ('l2'), L_t ('loss') or L_t ||g_t|| ('loss+');
  w* = argmin_{w in simplex} w^T G^ w;  alpha_t = w*_t / n_t  (x T under match_sum).
  Exact for two tasks, an iterative simplex solver beyond.  In mode 'rep' this is MGDA-UB.
  """
  _choice('mgda', 'normalization', normalization, ('none', 'l2', 'loss', 'loss+'))

  def update(inputs, state, key):
    del key
    g, losses = inputs.gram, inputs.losses
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    n = {'none': jnp.ones_like(losses), 'l2': norms, 'loss': losses,
         'loss+': losses * norms}[normalization]
    n = jnp.where(n > _EPS, n, 1.0)
    w = solvers.min_norm_simplex(g / jnp.outer(n, n), max_iters=max_iters)
    return WeightingResult(_scale(w / n, match_sum), state)

  return _gradient_method('mgda', update)


def pcgrad_orders(key, num_tasks):
  """For each task i, a random order of the tasks it is projected against ([T, T])."""
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
      jax.random.split(key, num_tasks))


def pcgrad(reduction: str = 'sum') -> Weighting:
  """PCGrad (Yu et al., 2020), in Gram form.

  For each i, c_i = e_i; for j != i in a random order: if (G c_i)_j < 0 (g_i^PC conflicts with
  g_j), c_i -= (G c_i)_j / G_jj e_j (projection onto the normal plane of the original g_j).
  alpha = sum_i c_i ('sum') or its mean ('mean').
  """
  _choice('pcgrad', 'reduction', reduction, ('sum', 'mean'))

  def update(inputs, state, key):
    g = inputs.gram
    num = g.shape[0]
    orders = pcgrad_orders(key, num)

    def project(i, order):
      def body(k, c):
        j = order[k]
        dot = g[j] @ c
        step = jnp.where((j != i) & (dot < 0), dot / (g[j, j] + _EPS), 0.0)
        return c.at[j].add(-step)
      return jax.lax.fori_loop(0, num, body, jax.nn.one_hot(i, num, dtype=g.dtype))

    alpha = jax.vmap(project)(jnp.arange(num), orders).sum(0)
    return WeightingResult(alpha / num if reduction == 'mean' else alpha, state)

  return _gradient_method('pcgrad', update)


def cagrad(c: float = 0.4, rescale: int = 1, match_sum: bool = True,
           max_iters: int = 500) -> Weighting:
  """CAGrad (Liu et al., 2021).

  g0 = mean gradient, w* = argmin_{w in simplex} g_w^T g0 + c ||g0|| ||g_w||  (g_w = J^T w),
  d = g0 + c ||g0|| / ||g_w*|| g_w*, i.e. alpha = 1/T + c ||g0|| / ||g_w*|| w*; rescale 1 divides
  by (1 + c^2), rescale 2 by (1 + c), 0 keeps d;  x T under match_sum.
  """
  if c < 0:
    raise ValueError(f'cagrad: c must be >= 0, got {c}')
  _choice('cagrad', 'rescale', rescale, (0, 1, 2))

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num = g.shape[0]
    w = solvers.cagrad_weights(g, c, max_iters=max_iters)
    g0_norm = jnp.sqrt(jnp.maximum(jnp.sum(g), 0.0)) / num
    gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    coef = jnp.where(gw_norm > _EPS, c * g0_norm / jnp.maximum(gw_norm, _EPS), 0.0)
    alpha = jnp.full((num,), 1.0 / num, g.dtype) + coef * w
    alpha = alpha / {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]
    return WeightingResult(_scale(alpha, match_sum), state)

  return _gradient_method('cagrad', update)


def nash_mtl(max_norm: float = 1.0, update_every: int = 1, max_iters: int = 20) -> Weighting:
  """Nash-MTL (Navon et al., 2022): the bargaining solution alpha > 0 with G alpha = 1/alpha.

  Solved as the minimiser of 1/2 alpha^T G alpha - sum_t log alpha_t (damped Newton, warm
  started from the previous alpha), recomputed every ``update_every`` steps.  Then alpha is
  scaled so that ||J^T alpha|| = sqrt(alpha^T G alpha) <= max_norm (max_norm <= 0: no clip;
  torchjd's form of the reference's shared-gradient clipping).  Heads get alpha_t grad L_t.
  """
  if update_every < 1:
    raise ValueError(f'nash_mtl: update_every must be >= 1, got {update_every}')

  def init(num_tasks):
    return {'alpha': jnp.ones((num_tasks,), jnp.float32)}

  def update(inputs, state, key):
    del key
    g = inputs.gram
    alpha = jax.lax.cond(
        inputs.step % update_every == 0,
        lambda: solvers.nash_mtl_weights(g, state['alpha'], max_iters=max_iters),
        lambda: state['alpha'])
    scaled = alpha
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
      scaled = alpha * jnp.minimum(1.0, max_norm / jnp.maximum(norm, _EPS))
    return WeightingResult(scaled, {'alpha': alpha})

  return _gradient_method('nash_mtl', update, init=init, head_grads='weighted')


def imtl_g(match_sum: bool = True) -> Weighting:
  """IMTL-G (Liu et al., 2021): d has equal projections on every unit gradient g_t/||g_t||.

  Gram form: alpha proportional to G^+ sqrt(diag G), normalised to sum 1 (0 if that sum
  vanishes);  x T under match_sum.
  """

  def update(inputs, state, key):
    del key
    g = inputs.gram
    raw = jnp.linalg.pinv(g, hermitian=True) @ jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    total = raw.sum()
    alpha = jnp.where(jnp.abs(total) > _EPS, raw / jnp.where(total == 0, 1.0, total), 0.0)
    return WeightingResult(_scale(alpha, match_sum), state)

  return _gradient_method('imtl_g', update)


def upgrad(match_sum: bool = True, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Weighting:
  """UPGrad (Quinton & Rey, 2024): the sum of the projections of g_i / T onto the dual cone
  {x : J x >= 0}.  alpha = sum_i argmin_{v >= e_i / T} v^T G~ v, G~ = G / tr G + reg_eps I;
  x T under match_sum."""

  def update(inputs, state, key):
    del key
    alpha = solvers.upgrad_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(_scale(alpha, match_sum), state)

  return _gradient_method('upgrad', update)


def dualproj(match_sum: bool = True, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Weighting:
  """DualProj (torchjd): the projection of the mean gradient onto the dual cone {x : J x >= 0}:
  alpha = argmin_{v >= 1/T} v^T G~ v;  x T under match_sum."""

  def update(inputs, state, key):
    del key
    alpha = solvers.dualproj_weights(inputs.gram, norm_eps=norm_eps, reg_eps=reg_eps)
    return WeightingResult(_scale(alpha, match_sum), state)

  return _gradient_method('dualproj', update)


def aligned_mtl(scale_mode: str = 'min') -> Weighting:
  """Aligned-MTL (Senushkin et al., 2023): align the gradients to an orthogonal, equal-norm set.

  G = V diag(lambda) V^T; keep lambda > lambda_max * T * eps_machine (rank r);
  B = sqrt(lambda_ref) V_r diag(lambda_r)^(-1/2) V_r^T, alpha = B 1, with lambda_ref the
  smallest kept eigenvalue ('min'), their median ('median') or mean ('rmse').  alpha = 1 if
  every gradient is zero.
  """
  _choice('aligned_mtl', 'scale_mode', scale_mode, ('min', 'median', 'rmse'))

  def update(inputs, state, key):
    del key
    g = inputs.gram
    num = g.shape[0]
    lam, vecs = jnp.linalg.eigh(g)
    keep = lam > jnp.max(lam) * num * jnp.finfo(g.dtype).eps
    safe = jnp.where(keep, lam, 1.0)
    if scale_mode == 'min':
      ref = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == 'median':
      ref = jnp.nanmedian(jnp.where(keep, lam, jnp.nan))
    else:
      ref = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(keep.sum(), 1)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    balance = jnp.sqrt(jnp.where(keep.any(), ref, 1.0)) * (vecs * inv_sqrt) @ vecs.T
    alpha = jnp.where(keep.any(), balance.sum(1), jnp.ones((num,), g.dtype))
    return WeightingResult(alpha, state)

  return _gradient_method('aligned_mtl', update)


def _natural_key(path):
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', jax.tree_util.keystr(path))]


def last_layer(jacobian):
  """The leaves of the last layer of a task-stacked pytree (its last parent by natural order)."""
  flat = sorted(jax.tree_util.tree_leaves_with_path(jacobian), key=lambda kv: _natural_key(kv[0]))
  parent = lambda path: path[:-1] if len(path) > 1 else path
  last = parent(flat[-1][0])
  return [leaf for path, leaf in flat if parent(path) == last]


def gradnorm(alpha: float = 1.5, lr: float = 0.025, layer: str = 'all') -> Weighting:
  """GradNorm (Chen et al., 2018): learn weights that balance the gradient norms.

  w = T softmax(s);  G_t = w_t ||g_t||,  r_t = (L_t / L_t(0)) / mean_t(L_t / L_t(0)),
  L_grad = sum_t |G_t - sg(mean(G) r_t^alpha)|;  s takes one Adam step (lr) on dL_grad/ds;
  d = sum_t sg(w_t) g_t.  L(0) are the first step's losses.  ``layer='last'`` measures ||g_t||
  on the last shared layer only (the paper), 'all' on every shared parameter (LibMTL).
  """
  _choice('gradnorm', 'layer', layer, ('all', 'last'))
  if lr <= 0:
    raise ValueError(f'gradnorm: lr must be > 0, got {lr}')
  adam = optax.adam(lr)

  def init(num_tasks):
    s = jnp.zeros((num_tasks,), jnp.float32)
    return {'s': s, 'adam': adam.init(s), 'initial_losses': jnp.ones((num_tasks,), jnp.float32),
            'started': jnp.zeros((), bool)}

  def update(inputs, state, key):
    del key
    if layer == 'last':
      blocks = [leaf.reshape(leaf.shape[0], -1) for leaf in last_layer(inputs.jacobian)]
      norms = jnp.sqrt(sum(jnp.sum(b.astype(jnp.float32) ** 2, 1) for b in blocks))
    else:
      norms = jnp.sqrt(jnp.maximum(jnp.diag(inputs.gram), 0.0))
    losses = inputs.losses.astype(jnp.float32)
    initial = jnp.where(state['started'], state['initial_losses'], losses)
    ratio = losses / jnp.maximum(initial, _EPS)
    relative = ratio / jnp.maximum(jnp.mean(ratio), _EPS)

    def grad_loss(s):
      w = s.shape[0] * jax.nn.softmax(s)
      gw = w * norms
      target = jax.lax.stop_gradient(jnp.mean(gw) * relative ** alpha)
      return jnp.sum(jnp.abs(gw - target))

    num = losses.shape[0]
    weights = num * jax.nn.softmax(state['s'])
    updates, adam_state = adam.update(jax.grad(grad_loss)(state['s']), state['adam'])
    new = {'s': optax.apply_updates(state['s'], updates), 'adam': adam_state,
           'initial_losses': initial, 'started': jnp.ones((), bool)}
    return WeightingResult(weights, new, aux={'grad_loss': grad_loss(state['s'])})

  return _gradient_method('gradnorm', update, init=init,
                          needs=Needs.JACOBIAN if layer == 'last' else Needs.GRAM)
