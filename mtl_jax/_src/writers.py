"""Per-step metrics to ``metrics.jsonl`` and TensorBoard, the non-finite stop, the result table."""

import json
import logging
import os
import sys
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from tensorboardX import SummaryWriter

# A NaN loss is logged as it is (and rejected by the step): tensorboardX's per-value warning
# about it would flood stderr.
logging.getLogger('tensorboardX.x2num').setLevel(logging.ERROR)


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient and ``on_nonfinite='raise'``."""


class MetricWriter:
  """Appends one JSON line per step and the same scalars to TensorBoard.

  ``add(step, metrics)`` keeps the step's device metrics without waiting for them; ``flush``
  fetches them, expands the ``[T]`` losses, weights and invalid-label counts into
  ``loss/<task>``, ``weight/<task>`` and ``invalid_labels/<task>``, writes, and
  (``on_nonfinite='raise'``) raises ``NonFiniteLossError`` at the first rejected update.

  Gradient diagnostics (``grad_norms`` [T], ``grad_cos`` [T, T], ``conflicts``; NaN where not
  measured) become ``grad_norm/<task>`` and ``conflicts`` on the steps that measured them,
  and ``grad_cos/<a>/<b>`` (a before b in task order), the mean cosine over the measured
  steps since the previous flush, on the flush's last step: T(T-1)/2 values per flush rather
  than per step.  With ``every`` > 1 only every ``every``-th step (and each flush's last) is
  written; every step is still checked and returned.
  On resume from ``resume_step``, lines of later steps (written after the last checkpoint by
  the interrupted run) are dropped, and TensorBoard purges its events past that step.

  With several processes, only the ``primary`` one (process 0; the default) touches the files;
  the others fetch, check and return the same steps (the metrics are replicated), so that
  every process stops at the same step.
  """

  def __init__(self, workdir: str, task_names: Sequence[str], resume_step: int = 0,
               on_nonfinite: str = 'skip', every: int = 1, primary: Optional[bool] = None):
    self.task_names, self.on_nonfinite, self.every = tuple(task_names), on_nonfinite, every
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._pending = []
    self.primary = jax.process_index() == 0 if primary is None else primary
    self._file = self._tb = None
    if self.primary:
      self._open(workdir, resume_step)

  def _open(self, workdir: str, resume_step: int) -> None:
    """Opens ``metrics.jsonl`` (dropping the lines past ``resume_step``) and TensorBoard."""
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
    cosines = _CosineMean(self.task_names)
    for step, metrics in pending:
      scalars = {k: float(v) for k, v in metrics.items()
                 if np.ndim(v) == 0 and not (k == 'conflicts' and np.isnan(v))}
      for key, prefix in (('losses', 'loss'), ('weights', 'weight'),
                          ('invalid_labels', 'invalid_labels'), ('grad_norms', 'grad_norm')):
        for name, value in zip(self.task_names, metrics.get(key, ())):
          if not (key == 'grad_norms' and np.isnan(value)):
            scalars[f'{prefix}/{name}'] = float(value)
      cosines.add(metrics.get('grad_cos'))
      if metrics['rejected'] and self.on_nonfinite == 'raise':
        self._flush_files()
        bad = [n for n, l in zip(self.task_names, metrics['losses']) if not np.isfinite(l)]
        grad_norm = scalars['grad_norm']
        what = (f'non-finite loss for task(s) {bad} (after an update that overflowed, if the '
                'inputs are finite: is the learning rate too high?)' if bad
                else f'non-finite gradient (norm {grad_norm})')
        where = ('no checkpoint was written yet' if last_checkpoint is None
                 else f'the last checkpoint (step {last_checkpoint}) is intact')
        raise NonFiniteLossError(
            f'step {step}: {what}. The update was rejected and the run stopped '
            f"(config.train.on_nonfinite='raise'); {where}.")
      if step == pending[-1][0]:
        scalars.update(cosines.means())
      if step % self.every == 0 or step == pending[-1][0]:
        self.write(step, scalars)
      written.append((step, scalars))
    self._flush_files()
    return written

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None:          # not the primary process
      return
    self._file.write(json.dumps({'step': step, **scalars}) + '\n')
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)

  def _flush_files(self) -> None:
    if self._file is not None:
      self._file.flush()
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._tb.close()


class _CosineMean:
  """The mean of each task pair's measured (non-NaN) cosines over the steps ``add``ed."""

  def __init__(self, task_names: Sequence[str]):
    self.names = tuple(task_names)
    self.total = self.count = None

  def add(self, cos) -> None:
    if cos is None:
      return
    cos = np.asarray(cos, np.float64)
    measured = ~np.isnan(cos)
    if self.total is None:
      self.total, self.count = np.zeros_like(cos), np.zeros(cos.shape, np.int64)
    self.total += np.where(measured, cos, 0.0)
    self.count += measured

  def means(self) -> dict:
    """``{'grad_cos/<a>/<b>': mean}`` for the pairs a < b measured at least once."""
    if self.total is None:
      return {}
    t = len(self.names)
    return {f'grad_cos/{self.names[i]}/{self.names[j]}':
            float(self.total[i, j] / self.count[i, j])
            for i in range(t) for j in range(i + 1, t) if self.count[i, j]}


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
