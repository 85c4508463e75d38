"""Per-step metrics to ``metrics.jsonl`` and TensorBoard event files."""

import json
import os
from typing import Mapping

from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends one JSON line per step and the same scalars to TensorBoard.

  On resume from ``resume_step``, lines of later steps (written after the last checkpoint
  by the interrupted run) are dropped, and TensorBoard purges its events past that step.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
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
    self._file = open(self.path, 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(json.dumps({'step': step, **scalars}) + '\n')
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    self._file.flush()
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    self._tb.close()
