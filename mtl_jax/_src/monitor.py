"""Watching a run from the host: the rejected-update policy and the progress report.

Both read the per-step scalars the ``MetricWriter`` has already fetched at each flush, so
neither adds a device sync or a per-step host scan.

The policy (``RejectionPolicy``): the train step rejects an update whose loss or gradient
is not finite (``rejected = 1``; params and every state stay as they were).  A run
whose updates are mostly rejected learns nothing, so over the last ``window`` steps of this
session (or all of them, at the end of a shorter session):

* more than ``warn_fraction`` rejected: one warning line (at most one per window);
* more than ``max_fraction`` rejected: the run stops with ``TrainingStopped``, whose message
  says how many, since which step, and the likely causes.  ``max_fraction=1`` never stops.

``Progress``: on a terminal, a tqdm bar; otherwise (a scheduler, ``> log``) one line every
flush: step, per-task losses, steps/s, ETA and the rejected updates so far.
"""

import collections
import sys
import time
from typing import Mapping, Optional, Sequence, TextIO

import tqdm


class TrainingStopped(RuntimeError):
  """The run stopped because too many recent updates were rejected.

  Attributes: ``step`` (the last step taken), ``rejected`` (updates rejected in this session).
  """

  def __init__(self, message: str, step: int, rejected: int):
    super().__init__(message)
    self.step, self.rejected = step, rejected


class RejectionPolicy:
  """Counts rejected updates and stops (or warns) when too many of the recent ones are.

  Args:
    window: how many recent steps the fractions are taken over (>= 1).
    max_fraction: stop when more than this fraction of them were rejected (in (0, 1]).
    warn_fraction: warn when more than this fraction were (in [0, max_fraction]).
    causes: the likely causes, appended to the stop message.
    out: where warnings go (default ``sys.stderr``).
  """

  def __init__(self, window: int, max_fraction: float, warn_fraction: float,
               causes: str = '', out: Optional[TextIO] = None):
    self.window, self.max_fraction, self.warn_fraction = window, max_fraction, warn_fraction
    self.causes, self.out = causes, out
    self.recent = collections.deque(maxlen=window)    # (step, rejected) of the last steps
    self.total = 0                                    # rejected in this session
    self.first = None                                 # the first rejected step this session
    self._warned_at = None

  def observe(self, step: int, rejected: bool) -> None:
    self.recent.append((step, bool(rejected)))
    if rejected:
      self.total += 1
      self.first = step if self.first is None else self.first

  def check(self, step: int, final: bool = False) -> None:
    """Raises ``TrainingStopped`` or warns, judging the window (a partial one when
    ``final``: the session ends before the window fills)."""
    seen = len(self.recent)
    bad = [s for s, r in self.recent if r]
    if not seen or not bad:
      return
    fraction = len(bad) / seen
    if (seen == self.window or final) and fraction > self.max_fraction:
      raise TrainingStopped(
          f'step {step}: {len(bad)} of the last {seen} updates were rejected (non-finite '
          f'loss or gradient), the first of them at step {bad[0]} ({self.total} rejected '
          f'since step {self.first}); the run stops above '
          f'{self.max_fraction:.0%} (config.train.max_rejected_fraction). '
          f'Likely causes: {self.causes}', step, self.total)
    if fraction > self.warn_fraction and (self._warned_at is None or
                                          step - self._warned_at >= self.window):
      self._warned_at = step
      print(f'warning: step {step}: {len(bad)} of the last {seen} updates were rejected '
            f'(non-finite loss or gradient), the first at step {bad[0]}; the run stops above '
            f'{self.max_fraction:.0%} (config.train.max_rejected_fraction)',
            file=self.out or sys.stderr, flush=True)


def likely_causes(config, resumed_from: int) -> str:
  """The usual reasons a run's updates are all rejected, with this run's values."""
  causes = [f'a learning rate too high (config.optim.lr={config.optim.lr:g}, '
            f'optimizer {config.optim.name})',
            'NaN or inf in the data (see nonfinite_inputs and invalid_labels/<task> in '
            'metrics.jsonl)']
  if resumed_from:
    causes.append(f'a damaged checkpoint (this run resumed from step {resumed_from})')
  return '; '.join(causes) + '.'


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s')


class Progress:
  """A tqdm bar on a terminal, else one line on ``out`` (stdout) per ``update`` (each flush).

  Args:
    total: the run's last step; ``start``: the step it starts from.
    task_names: the tasks whose losses each line shows (the first six, then the total).
    out: where lines go (default ``sys.stdout``).
    terminal: force the bar (True) or lines (False); default: whether stdout and stderr are
      both terminals.
  """

  def __init__(self, total: int, start: int, task_names: Sequence[str],
               out: Optional[TextIO] = None, terminal: Optional[bool] = None):
    self.total, self.start, self.task_names = total, start, tuple(task_names)
    self.out = out or sys.stdout
    # The bar (on stderr) only when both streams are a terminal: with ``> log`` the lines go
    # into the log.
    self.terminal = (terminal if terminal is not None
                     else all(getattr(f, 'isatty', lambda: False)()
                              for f in (sys.stdout, sys.stderr)))
    self.bar = (tqdm.tqdm(total=total, initial=start, desc='train', dynamic_ncols=True)
                if self.terminal else None)
    self._last = (start, time.time())
    self.rejected = 0

  def update(self, written: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    """Reports the steps ``written`` by one flush: ``[(step, scalars)]``."""
    if not written:
      return
    self.rejected += sum(int(s['rejected']) for _, s in written)
    step, scalars = written[-1]
    shown = self.task_names[:6]
    losses = ' '.join(f'{n}={scalars[f"loss/{n}"]:.4g}' for n in shown)
    if len(self.task_names) > len(shown):
      losses += f' (+{len(self.task_names) - len(shown)} tasks; total {scalars["loss"]:.4g})'
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix_str(f'loss {losses} rejected={self.rejected}')
      return
    last_step, last_time = self._last
    now = time.time()
    rate = (step - last_step) / max(now - last_time, 1e-9)
    self._last = (step, now)
    print(f'step {step}/{self.total}  loss {losses}  {rate:.3g} steps/s  '
          f'ETA {_duration((self.total - step) / max(rate, 1e-9))}  '
          f'rejected {self.rejected}', file=self.out, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
