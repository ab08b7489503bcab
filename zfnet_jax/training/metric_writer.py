"""Where metrics go: `WORKDIR/metrics.jsonl`, TensorBoard event files, and a console line with ETA."""
from __future__ import annotations

import json
import os
import time

import jax
import tensorflow as tf


def log(msg: str) -> None:
  """Prints `msg` on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


class MetricWriter:
  """Appends `{'step', 'split', metric...}` records to `metrics.jsonl` and TensorBoard (`WORKDIR/tensorboard`).

  Only one process of a multi-host run should write: make the others with `enabled=False`.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = {}
    self._tb_dir = os.path.join(workdir, 'tensorboard')

  def drop_after(self, step: int) -> None:
    """Forgets records past `step`: those of a run that died after its last checkpoint, now redone."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if split not in self._tb:
      self._tb[split] = tf.summary.create_file_writer(os.path.join(self._tb_dir, split))
    with self._tb[split].as_default():
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v), step=int(step))
    self._tb[split].flush()


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Progress:
  """Throughput and ETA over the steps since the last report."""

  def __init__(self, total_steps: int, start_step: int, images_per_step: int):
    self.total_steps = total_steps
    self.images_per_step = images_per_step
    self.restart(start_step)

  def restart(self, step: int) -> None:
    """Measures from `step` and now on (e.g. after an evaluation, to keep it out of the figures)."""
    self._step, self._time = step, time.perf_counter()

  def report(self, step: int) -> tuple[float, str]:
    """`(images_per_second, 'ETA ...')` since the last call."""
    steps_per_s = (step - self._step) / max(time.perf_counter() - self._time, 1e-9)
    self.restart(step)
    eta = format_duration((self.total_steps - step) / steps_per_s) if steps_per_s > 0 else '?'
    return steps_per_s * self.images_per_step, f'ETA {eta}'
