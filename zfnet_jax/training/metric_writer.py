"""Where metrics go: `WORKDIR/metrics.jsonl`, TensorBoard event files, a console line with ETA, profiler traces.

Every file goes through `tf.io.gfile`, so the workdir may be any path TensorFlow's file systems take:
local, `gs://`, ...
"""
from __future__ import annotations

import json
import time

import jax
import tensorflow as tf


def log(msg: str) -> None:
  """Prints `msg` on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def join(directory: str, *names: str) -> str:
  """`directory/name/...` for local and `scheme://` paths alike (`os.path` would mangle neither, but is local)."""
  return '/'.join([directory.rstrip('/'), *names])


class MetricWriter:
  """Appends `{'step', 'split', metric...}` records to `metrics.jsonl` and TensorBoard (`WORKDIR/tensorboard`).

  Only one process of a multi-host run should write: make the others with `enabled=False`.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = join(workdir, 'metrics.jsonl')
    self._tb = {}
    self._tb_dir = join(workdir, 'tensorboard')

  def drop_after(self, step: int) -> None:
    """Forgets records past `step`, those of a run that died after its last checkpoint and are now redone:
    in `metrics.jsonl` and in every TensorBoard event file, so that a resumed run draws one curve."""
    if not self.enabled:
      return
    # each file is rewritten to a temporary one and renamed over it: a crash leaves the old or the new
    if tf.io.gfile.exists(self.path):
      with tf.io.gfile.GFile(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
      with tf.io.gfile.GFile(self.path + '.tmp', 'w') as f:
        f.write(''.join(kept))
      tf.io.gfile.rename(self.path + '.tmp', self.path, overwrite=True)
    for events_file in tf.io.gfile.glob(join(self._tb_dir, '*', '*tfevents*')):
      records = tf.data.TFRecordDataset(events_file).as_numpy_iterator()
      with tf.io.TFRecordWriter(events_file + '.tmp') as f:
        for r in records:
          if tf.compat.v1.Event.FromString(r).step <= step:
            f.write(r)
      tf.io.gfile.rename(events_file + '.tmp', events_file, overwrite=True)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    with tf.io.gfile.GFile(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if split not in self._tb:
      self._tb[split] = tf.summary.create_file_writer(join(self._tb_dir, split))
    with self._tb[split].as_default():
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v), step=int(step))
    self._tb[split].flush()


class ProfileWindow:
  """Traces train steps `first..last` (1-based) with `jax.profiler` into `WORKDIR/profile`; `(0, 0)`: off."""

  def __init__(self, workdir: str, first: int, last: int):
    if (first, last) != (0, 0) and not 1 <= first <= last:
      raise ValueError(f'config.profile_steps=({first}, {last}) must be (0, 0) (off) or (first, last) with '
                       f'1 <= first <= last, e.g. --config.profile_steps=10,15')
    self._dir, self._first, self._last, self._active = join(workdir, 'profile'), first, last, False

  def before_step(self, step: int) -> None:
    """Called with the number of steps done before dispatching the next one."""
    if self._first and step + 1 == self._first:
      jax.profiler.start_trace(self._dir)
      self._active = True

  def after_step(self, step: int, state) -> None:
    """Called with the number of steps done; waits for `state` before stopping, so the trace holds the steps."""
    if self._active and step == self._last:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False


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
