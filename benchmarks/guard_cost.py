"""What the train step's logged norms and non-finite guard cost, on the hand-written step.

    .venv/bin/python benchmarks/guard_cost.py            # T = 2, 8, 32 (~4 min on 2 cores)
    .venv/bin/python benchmarks/guard_cost.py --quick    # smoke test

The model, batch and Adam of ``step_time.py``.  Variants of the hand-written single-loss step
(``jax.value_and_grad`` of the summed MSEs + the Adam update), each jitted with the state
donated:

* ``plain``: nothing else;
* ``norms``: + the two norms mtl_jax logs (sums of squares of the gradient and new params,
  computed as the train step computes them: ``step._sumsq``);
* ``norms+guard``: + the guard mtl_jax uses (``step.guard``): decided before the update from
  the loss and the gradient's sum of squares, the update applied inside the accepting branch
  of a ``lax.cond`` (so in place, into the donated buffers), the new params' sum of squares
  computed there;
* ``norms+post-guard``: + the guard mtl_jax used until issue 13 (``lax.cond`` between the new
  and the old state after the update, when a loss, a norm or the new params are not finite:
  it also rejects an update that overflows from finite gradients, at the cost of a copy of
  params and optimizer state);
* ``norms+recompute-guard``: + a guard decided before the update from the would-be params
  (reduced without being kept), the update recomputed inside the accepting branch.

Times are interleaved in a fresh random order each repeat; the reported ratio is the median
over repeats of each variant's time over ``plain``'s in the same repeat.  Also reports the
number of ``copy`` instructions in each compiled program.  Writes ``results/guard_cost.json``.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time  # noqa: E402  pylint: disable=wrong-import-position
from mtl_jax._src.step import _sumsq  # noqa: E402  pylint: disable=wrong-import-position

KINDS = ('plain', 'norms', 'norms+guard', 'norms+post-guard', 'norms+recompute-guard')


def make_step(setup, kind):
  """The jitted, donated ``(params, opt_state), batch -> (state, outputs)`` of ``kind``."""
  optimizer = setup.optimizer

  def step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(setup.hand_loss)(params, batch)

    def update():
      updates, new_opt = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_opt

    if kind == 'norms+guard':
      grad_sq = _sumsq(grads)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_sq)
      accept = lambda: (lambda new: (new, _sumsq(new[0])))(update())
      new, param_sq = jax.lax.cond(ok, accept, lambda: ((params, opt_state), _sumsq(params)))
      return new, (loss, grad_sq, param_sq)
    if kind == 'norms+recompute-guard':
      grad_sq, param_sq = _sumsq(grads), _sumsq(update()[0])
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_sq) & jnp.isfinite(param_sq)
      return jax.lax.cond(ok, update, lambda: (params, opt_state)), (loss, grad_sq, param_sq)
    new_params, new_opt = update()
    if kind == 'plain':
      return (new_params, new_opt), loss
    grad_sq, param_sq = _sumsq(grads), _sumsq(new_params)
    if kind == 'norms':
      return (new_params, new_opt), (loss, grad_sq, param_sq)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_sq) & jnp.isfinite(param_sq)
    new = jax.lax.cond(ok, lambda: (new_params, new_opt), lambda: (params, opt_state))
    return new, (loss, grad_sq, param_sq)

  return jax.jit(step, donate_argnums=0)


def measure(num_tasks, cfg, repeats, steps, rng):
  setup = step_time.Setup(num_tasks, cfg)
  params = setup.state(step_time.make_method('ew', num_tasks)).params
  fresh = lambda: jax.tree.map(jnp.copy, (params, setup.optimizer.init(params)))
  runs, copies = {}, {}
  for kind in KINDS:
    step = make_step(setup, kind)
    copies[kind] = step.lower(fresh(), setup.hand_batch).compile().as_text().count(' copy(')
    state = fresh()
    for _ in range(3):
      state, out = step(state, setup.hand_batch)
    jax.block_until_ready(state)
    runs[kind] = [step, state]
  times = {kind: [] for kind in KINDS}
  order = list(KINDS)
  for _ in range(repeats):
    rng.shuffle(order)
    for kind in order:
      step, state = runs[kind]
      start = time.perf_counter()
      for _ in range(steps):
        state, out = step(state, setup.hand_batch)
      jax.block_until_ready((state, out))
      times[kind].append(1e3 * (time.perf_counter() - start) / steps)
      runs[kind][1] = state
  plain = times['plain']
  return {kind: {'median_ms': statistics.median(times[kind]),
                 'paired_ratio': statistics.median(a / b for a, b in zip(times[kind], plain)),
                 'copies': copies[kind]} for kind in KINDS}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default='2,8,32')
  parser.add_argument('--repeats', type=int, default=41)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    'results', 'guard_cost.json'))
  args = parser.parse_args()
  cfg = step_time.QUICK if args.quick else step_time.FULL
  repeats, steps = (3, 2) if args.quick else (args.repeats, args.steps)
  load = os.getloadavg()
  rng = np.random.default_rng(0)
  results = {f'T={t}': measure(int(t), cfg, repeats, steps, rng) for t in args.tasks.split(',')}
  print(f"{'variant':<22}" + ''.join(f'{k:>22}' for k in results))
  for kind in KINDS:
    print(f'{kind:<22}' + ''.join(
        f"{r[kind]['median_ms']:>8.2f}ms x{r[kind]['paired_ratio']:.3f} {r[kind]['copies']:>3}cp"
        for r in results.values()))
  report = {'config': {**cfg, 'repeats': repeats, 'steps': steps, 'quick': args.quick},
            'loadavg_before': load, 'loadavg_after': os.getloadavg(), 'results': results}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
