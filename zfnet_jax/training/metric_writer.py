"""Where metrics go: `WORKDIR/metrics.jsonl`, TensorBoard event files, the console (process 0), profiler traces.

Every file goes through `paths` (`tf.io.gfile`), so the workdir may be any path TensorFlow's file systems
take: local, `gs://`, ...
"""
from __future__ import annotations

import json

import jax
import tensorflow as tf

from zfnet_jax import paths, progress


def log(msg: str) -> None:
  """Prints `msg` on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def read_records(path: str) -> list[dict]:
  """The records of a `metrics.jsonl` (local or `gs://`), in file order; [] if there is none yet.

  A line that is not a JSON record (a torn last line: a run killed while appending it) is left out with a
  warning naming the file; a resumed run rewrites the file without it (`MetricWriter.drop_after`).
  """
  if not paths.exists(path):
    return []
  records, bad = [], []
  lines = paths.read_text(path).splitlines()
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line) if line.strip() else None
    except ValueError:
      record = False
    if isinstance(record, dict) and 'step' in record:
      records.append(record)
    elif record is not None:
      bad.append(number)
  if bad:
    what = (f'its last line (line {bad[0]}) is cut off (a run killed while writing it)' if bad == [len(lines)]
            else f'line(s) {bad} are not JSON records')
    progress.warn(f'{path}: {what}; left out (a resumed run rewrites the file without it)')
  return records


def read_curves(workdir: str) -> dict[str, list[dict]]:
  """`WORKDIR/metrics.jsonl` split by `split` (`train`, `eval`): each split's records in step order."""
  curves: dict[str, list[dict]] = {}
  for record in read_records(paths.join(workdir, 'metrics.jsonl')):
    curves.setdefault(record.get('split', 'train'), []).append(record)
  return curves


class MetricWriter:
  """Appends `{'step', 'split', metric...}` records to `metrics.jsonl` and TensorBoard (`WORKDIR/tensorboard`).

  Only one process of a multi-host run should write: make the others with `enabled=False`.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = paths.join(workdir, 'metrics.jsonl')
    self._tb = {}
    self._tb_dir = paths.join(workdir, 'tensorboard')

  def drop_after(self, step: int) -> None:
    """Forgets records past `step`, those of a run that died after its last checkpoint (or before its first:
    `step` 0) and are now redone, and any torn line: in `metrics.jsonl` and in every TensorBoard event file,
    so that a resumed run draws one curve."""
    if not self.enabled:
      return
    # each file is rewritten to a temporary one and renamed over it: a crash leaves the old or the new
    if paths.exists(self.path):
      paths.write_text(self.path, ''.join(json.dumps(r) + '\n' for r in read_records(self.path) if r['step'] <= step))
    for events_file in paths.glob(paths.join(self._tb_dir, '*', '*tfevents*')):
      kept = []
      try:
        for r in tf.data.TFRecordDataset(events_file).as_numpy_iterator():
          if tf.compat.v1.Event.FromString(r).step <= step:
            kept.append(r)
      except tf.errors.DataLossError:  # a run killed while appending: the records before it stay
        progress.warn(f'{events_file}: its last record is cut off (a run killed while writing it); left out')
      with tf.io.TFRecordWriter(events_file + '.tmp') as f:
        for r in kept:
          f.write(r)
      paths.replace(events_file + '.tmp', events_file)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    paths.append_text(self.path, json.dumps(record) + '\n')
    if split not in self._tb:
      self._tb[split] = tf.summary.create_file_writer(paths.join(self._tb_dir, split))
    with self._tb[split].as_default():
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v), step=int(step))
    self._tb[split].flush()


class ProfileWindow:
  """Traces train steps `first..last` (1-based) with `jax.profiler` into `WORKDIR/profile`; `(0, 0)`: off
  (`config_lib.check` holds the rule for `config.profile_steps`)."""

  def __init__(self, workdir: str, first: int, last: int):
    self._dir, self._first, self._last, self._active = paths.join(workdir, 'profile'), first, last, False

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
