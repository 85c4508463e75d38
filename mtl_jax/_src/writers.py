"""Per-step metrics to ``metrics.jsonl`` and TensorBoard, the non-finite stop, the result table."""

import json
import os
import sys
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from tensorboardX import SummaryWriter


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient and ``on_nonfinite='raise'``."""


class MetricWriter:
  """Appends one JSON line per step and the same scalars to TensorBoard.

  ``add(step, metrics)`` keeps the step's device metrics without waiting for them; ``flush``
  fetches them, expands the ``[T]`` losses, weights and invalid-label counts into
  ``loss/<task>``, ``weight/<task>`` and ``invalid_labels/<task>``, writes, and
  (``on_nonfinite='raise'``) raises ``NonFiniteLossError`` at the first rejected update.
  On resume from ``resume_step``, lines of later steps (written after the last checkpoint by
  the interrupted run) are dropped, and TensorBoard purges its events past that step.
  """

  def __init__(self, workdir: str, task_names: Sequence[str], resume_step: int = 0,
               on_nonfinite: str = 'skip'):
    self.task_names, self.on_nonfinite = tuple(task_names), on_nonfinite
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if resume_step and os.path.exists(self.path):
      kept = []
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line)['step'] <= resume_step:
              kept.append(line)
          except (json.JSONDecodeError, KeyError):
            pass  # a line cut short when the previous run was killed
      with open(self.path, 'w') as f:
        f.writelines(kept)
    elif os.path.exists(self.path):
      os.remove(self.path)
    self._pending = []
    self._file = open(self.path, 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                             purge_step=resume_step + 1 if resume_step else None)

  def add(self, step: int, metrics: Mapping) -> None:
    self._pending.append((step, metrics))

  def flush(self, last_checkpoint: Optional[int] = None) -> list:
    """Writes the pending steps and returns them as ``[(step, scalars)]``; raises on a
    rejected one under ``on_nonfinite='raise'``."""
    pending, self._pending = jax.device_get(self._pending), []
    written = []
    for step, metrics in pending:
      scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
      for key, prefix in (('losses', 'loss'), ('weights', 'weight'),
                          ('invalid_labels', 'invalid_labels')):
        for name, value in zip(self.task_names, metrics.get(key, ())):
          scalars[f'{prefix}/{name}'] = float(value)
      if metrics['rejected'] and self.on_nonfinite == 'raise':
        self._flush_files()
        bad = [n for n, l in zip(self.task_names, metrics['losses']) if not np.isfinite(l)]
        grad_norm = scalars['grad_norm']
        what = (f'non-finite loss for task(s) {bad}' if bad
                else f'non-finite gradient (norm {grad_norm})' if not np.isfinite(grad_norm)
                else f'the update overflowed (losses and gradient norm {grad_norm:.4g} finite, '
                     'the new params not): is the learning rate too high?')
        where = ('no checkpoint was written yet' if last_checkpoint is None
                 else f'the last checkpoint (step {last_checkpoint}) is intact')
        raise NonFiniteLossError(
            f'step {step}: {what}. The update was rejected and the run stopped '
            f"(config.train.on_nonfinite='raise'); {where}.")
      self.write(step, scalars)
      written.append((step, scalars))
    self._flush_files()
    return written

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(json.dumps({'step': step, **scalars}) + '\n')
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)

  def _flush_files(self) -> None:
    self._file.flush()
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    self._tb.close()


def print_table(directions: Mapping[str, Mapping[str, bool]], results: Mapping,
                file=None) -> None:
  """Prints ``{task: {metric: value}}`` as a table, one row per task of ``directions``
  (``{task: {metric: higher_is_better}}``), each metric with its arrow."""
  file = file or sys.stdout
  metric_names = sorted({m for t in results.values() for m in t if m != 'count'})
  arrows = {m: ('↑' if any(directions[t].get(m) for t in results) else '↓')
            for m in metric_names}
  header = ['task'] + [f'{m} {arrows[m]}' for m in metric_names]
  rows = [[t] + [f'{results[t][m]:.4f}' if m in results[t] else '-' for m in metric_names]
          for t in directions]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) for c, w in zip(r, widths))
  print(line(header), file=file)
  print('  '.join('-' * w for w in widths), file=file)
  for r in rows:
    print(line(r), file=file)
