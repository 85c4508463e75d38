"""Several seeds of one run as one compiled program: the train step vmapped over a seed axis.

``train_seeds(config, seeds, workdir)`` trains ``config`` once per seed in ``seeds`` (each
seed its own initialisation, dropout and data order, and with ``config.data.reseed`` its
own data set, exactly as ``train_once`` with ``config.seed = s`` would) with one ``jax.jit(jax.vmap(step))``: every leaf of the train
state has a leading seed axis and so has every batch.  It writes

    workdir/config.json, workdir/checkpoints/   (the stacked state; resumed automatically)
    workdir/seed_<s>/metrics.jsonl, tensorboard/, results.json   (each seed's, as train_once)

and returns the seeds' ``results.json`` records.  ``vmappable(config)`` says why a config
must run its seeds one after another instead (the sweep runner then does).
"""

import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl_jax._src import data, monitor
from mtl_jax._src import train as train_lib
from mtl_jax._src.step import TrainState, init_train_state
from mtl_jax._src.writers import MetricWriter


def vmappable(config) -> Optional[str]:
  """None if ``config``'s seeds can run as one vmapped program, else the reason."""
  if (config.train.num_devices or jax.device_count()) > 1:
    return 'the run is data-parallel over several devices (config.train.num_devices)'
  if config.transfer.init_from or config.transfer.pretrain_task:
    return 'the run starts from transferred or pretrained parameters (config.transfer)'
  return None


def seed_config(config, seed: int) -> ml_collections.ConfigDict:
  """``config`` with ``seed`` (the run of that seed alone)."""
  one = ml_collections.ConfigDict(config.to_dict())
  one.seed = seed
  return one


def _stack(trees):
  return jax.tree.map(lambda *x: np.stack(x), *trees)


def _row(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def init_states(run: train_lib.Run, seeds: Sequence[int]) -> TrainState:
  """The fresh train states of ``seeds`` (each ``train_once``'s with that seed), stacked."""
  sample = data.take(run.dataset.split('train'), np.arange(run.config.train.batch_size))
  init = lambda key: init_train_state(run.model, run.tasks, run.optimizer, run.method,
                                      sample['inputs'], key)
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  return jax.jit(jax.vmap(init))(keys)


class _Seeds:
  """The per-seed parts of a vmapped run: data iterators, metric writers, rejection policies."""

  def __init__(self, run: train_lib.Run, seeds: Sequence[int], workdir: str, start: int):
    c = run.config
    self.seeds = list(seeds)
    self.datasets = [run.dataset] + [
        train_lib.build_dataset(seed_config(c, s)) if c.data.reseed else run.dataset
        for s in seeds[1:]]
    self.iterators = [run.iterator] + [
        data.BatchIterator(d.split('train'), c.train.batch_size, seed=s,
                           worker_count=c.data.worker_count)
        for s, d in zip(seeds[1:], self.datasets[1:])]
    self.dirs = [os.path.join(workdir, f'seed_{s}') for s in seeds]
    for d in self.dirs:
      os.makedirs(d, exist_ok=True)
    self.writers = [MetricWriter(d, run.tasks.names, resume_step=start,
                                 on_nonfinite=c.train.on_nonfinite,
                                 every=c.train.metrics_every) for d in self.dirs]
    self.policies = [monitor.RejectionPolicy(
        c.train.rejected_window, c.train.max_rejected_fraction, c.train.warn_rejected_fraction,
        monitor.likely_causes(c, start)) for _ in seeds]
    self._pending = []

  def batch(self) -> dict:
    return _stack([next(it) for it in self.iterators])

  def data_state(self) -> dict:
    return {str(s): it.get_state() for s, it in zip(self.seeds, self.iterators)}

  def set_data_state(self, state: dict) -> None:
    if sorted(state) != sorted(map(str, self.seeds)):
      raise ValueError(f'the checkpoint holds seeds {sorted(state)}, not {self.seeds}')
    for s, it in zip(self.seeds, self.iterators):
      it.set_state(state[str(s)])

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def flush(self, step: int, last_checkpoint, final: bool) -> list:
    """Writes every seed's pending metrics; returns seed 0's written lines."""
    pending, self._pending = jax.device_get(self._pending), []
    first = None
    for i, (writer, policy) in enumerate(zip(self.writers, self.policies)):
      for s, metrics in pending:
        writer.add(s, _row(metrics, i))
      written = writer.flush(last_checkpoint)
      for s, scalars in written:
        policy.observe(s, scalars['rejected'])
      policy.check(step, final)
      first = written if first is None else first
    return first

  def close(self) -> None:
    for w in self.writers:
      w.close()


def _restore(run, states, seeds_io: _Seeds):
  start = run.checkpointer.latest_step() or 0
  if start:
    restored = run.checkpointer.restore_latest_valid(
        states, validate=lambda _, data_state: seeds_io.set_data_state(data_state))
    states, start = restored.state, restored.step
  return states, start


def _loop(run, states, start: int, seeds_io: _Seeds, traces: dict):
  """Steps ``start + 1 .. config.train.steps`` of every seed at once."""
  c = run.config
  step_fn = jax.jit(jax.vmap(train_lib.make_step(run, _row(states, 0), traces, jit=False)),
                    donate_argnums=(0,))
  progress = monitor.Progress(c.train.steps, start, run.tasks.names)
  validate = ([train_lib._validation(run, d) for d in seeds_io.datasets]  # pylint: disable=protected-access
              if c.eval.every else None)
  try:
    for step in range(start + 1, c.train.steps + 1):
      batch = seeds_io.batch()
      if step == start + 1:
        run.tasks.check_batch(_row(batch, 0))
      states, metrics = step_fn(states, batch)
      if validate is not None and step % c.eval.every == 0:
        metrics = dict(metrics, **_stack([v(_row(states, i)) for i, v in enumerate(validate)]))
      seeds_io.add(step, metrics)
      last = step == c.train.steps
      checkpoint = step % c.train.checkpoint_every == 0 or last
      if step % c.train.log_every == 0 or checkpoint:
        progress.update(seeds_io.flush(step, run.checkpointer.latest_step(), last))
      if checkpoint:
        run.checkpointer.save(step, states, seeds_io.data_state())
  finally:
    progress.close()
    run.checkpointer.wait()
  return states


def train_seeds(config, seeds: Sequence[int], workdir: str) -> list[dict]:
  """Trains ``config`` for each seed of ``seeds`` as one vmapped program (module docstring);
  returns the seeds' records (each also in ``workdir/seed_<s>/results.json``)."""
  start_time = time.time()
  seeds = [int(s) for s in seeds]
  run = train_lib.build(seed_config(config, seeds[0]), workdir)
  traces = {'train_step': 0}
  try:
    seeds_io = _Seeds(run, seeds, workdir, run.checkpointer.latest_step() or 0)
    try:
      states, start = _restore(run, init_states(run, seeds), seeds_io)
      train_start = time.time()
      states = _loop(run, states, start, seeds_io, traces)
      train_time = time.time() - train_start
    finally:
      seeds_io.close()
    records = []
    for i, (s, d) in enumerate(zip(seeds, seeds_io.dirs)):
      state = _row(states, i)
      record = train_lib.results(
          run, state, train_lib.evaluate_splits(run, state, seeds_io.datasets[i]), seed=s,
          seeds_vmapped=seeds,
          resumed_from_step=start, train_step_traces=traces['train_step'],
          train_time_s=train_time, wall_time_s=time.time() - start_time)
      train_lib.write_results(d, record)
      records.append(record)
  finally:
    run.checkpointer.close()
  return records
