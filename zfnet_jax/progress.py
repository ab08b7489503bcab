"""Progress of long work for people: done out of total, rate and ETA, printed at most every few seconds; and
warnings for people.

The one progress line of the package: training steps, preparing squares, building the report. `warn` is the
one warning line: something was skipped or taken over and the work goes on (a checkpoint that does not
restore, a torn log line, a stale lock).
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

import jax


def warn(message: str) -> None:
  """Prints `warning: MESSAGE` to stderr, on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
  """`3725` -> `'1h02m05s'`, `65` -> `'1m05s'`, `5` -> `'5s'`."""
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Progress:
  """`total` units of work, `done` of them already; rate and ETA are measured from the last `restart`.

  `advance` / `update` print `WHAT: NOTE | done/total UNIT (P%), R UNIT/s, ETA T` to `stream` when
  `every_s` seconds passed since the last line, and always for the last unit; `every_s=None` never prints
  (the caller words its own line from `rate` and `eta`).
  """

  def __init__(self, total: float, done: float = 0.0, *, what: str = '', unit: str = '',
               every_s: float | None = 0.0, stream: TextIO | None = None):
    self.total, self.done, self.what, self.unit, self.every_s = total, done, what, unit, every_s
    self.stream = stream or sys.stderr
    self._printed = -float('inf')
    self.restart()

  def restart(self, done: float | None = None) -> None:
    """Measures rate and ETA from `done` (default: the current count) and now, e.g. after an evaluation."""
    if done is not None:
      self.done = done
    self._from = (self.done, time.perf_counter())

  def add(self, total: float) -> None:
    """More work found on the way."""
    self.total += total

  def rate(self) -> float:
    """Units per second since the last `restart`."""
    start, since = self._from
    return (self.done - start) / max(time.perf_counter() - since, 1e-9)

  def eta(self) -> str:
    rate = self.rate()
    return f'ETA {format_duration(max(self.total - self.done, 0) / rate)}' if rate > 0 else 'ETA ?'

  def update(self, done: float, note: str = '') -> None:
    """Sets the count to `done` and prints the line if it is due."""
    self.done = done
    now = time.perf_counter()
    if self.every_s is None or now - self._printed < self.every_s and done < self.total:
      return
    self._printed = now
    head = f'{self.what}: {note}' if note else self.what
    print(f'{head} | {self.done:,.0f}/{self.total:,.0f} {self.unit} ({100 * self.done / max(self.total, 1e-9):.0f}%), '
          f'{self.rate():,.1f} {self.unit}/s, {self.eta()}', file=self.stream, flush=True)

  def advance(self, amount: float = 1.0, note: str = '') -> None:
    self.update(self.done + amount, note)
