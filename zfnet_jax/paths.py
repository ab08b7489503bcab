"""Workdir files for local and `scheme://` paths alike (`gs://`, TensorFlow's `ram://`), through `tf.io.gfile`.

Every file a run, an evaluation or a report reads or writes in a workdir goes through here, so a `gs://`
workdir works everywhere a local one does. Orbax checkpoints take the same paths directly. `Lock` is the
one lock file: one writer per workdir, one preparer per set of squares.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable

import tensorflow as tf


def join(directory: str, *names: str) -> str:
  """`directory/name/...` for local and `scheme://` paths alike (`os.path.join` is local only)."""
  return '/'.join([directory.rstrip('/'), *names])


def absolute(path: str) -> str:
  """A local path made absolute (what Orbax wants); a `scheme://` path as it is."""
  return path if '://' in path else os.path.abspath(path)


def exists(path: str) -> bool:
  return tf.io.gfile.exists(path)


def makedirs(path: str) -> None:
  tf.io.gfile.makedirs(path)


def listdir(path: str) -> list[str]:
  """The names in folder `path`; [] if it does not exist."""
  return tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else []


def glob(pattern: str) -> list[str]:
  return tf.io.gfile.glob(pattern)


def remove(path: str) -> None:
  tf.io.gfile.remove(path)


def read_text(path: str) -> str:
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def append_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, 'a') as f:
    f.write(text)


def replace(source: str, target: str) -> None:
  """Renames `source` over `target` (atomic on local file systems)."""
  tf.io.gfile.rename(source, target, overwrite=True)


def move(source: str, target: str) -> None:
  """Moves the file or folder `source` to `target` (which must not exist): a rename on local paths; on
  `scheme://` paths (object stores have no folder rename) a copy of every file, then the source removed."""
  if '://' not in source:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(source, target)
    return
  if not tf.io.gfile.isdir(source):
    tf.io.gfile.copy(source, target)
  else:
    for folder, _, files in tf.io.gfile.walk(source):
      inside = join(target, folder[len(source):].lstrip('/')) if folder != source else target
      tf.io.gfile.makedirs(inside)
      for name in files:
        tf.io.gfile.copy(join(folder, name), join(inside, name))
  (tf.io.gfile.rmtree if tf.io.gfile.isdir(source) else tf.io.gfile.remove)(source)


def write_text(path: str, text: str | bytes) -> None:
  """Writes `text` (or bytes) to a temporary file and renames it over `path`: a crash leaves the old file or
  the new."""
  with tf.io.gfile.GFile(path + '.tmp', 'wb' if isinstance(text, bytes) else 'w') as f:
    f.write(text)
  replace(path + '.tmp', path)


def write_json(path: str, value: Any, **dump_options: Any) -> None:
  write_text(path, json.dumps(value, **dump_options))


LOCK_HEARTBEAT_S = 60.0  # `scheme://` locks: how often the holder rewrites its heartbeat
LOCK_STALE_S = 600.0  # `scheme://` locks: a heartbeat older than this is a dead holder's
LOCK_SETTLE_S = 1.0  # `scheme://` locks: wait before reading back who won a simultaneous start


class LockHeldError(OSError):
  """Another process holds the lock; `holder` says who (host, pid, start time, command)."""

  def __init__(self, path: str, holder: str):
    super().__init__(errno.EBUSY, f'{path} is held by {holder}')
    self.path, self.holder = path, holder


def _pid_runs(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it runs, as another user
    return True
  return True


def describe_holder(text: str) -> str:
  """A lock file's contents (`Lock`'s JSON) for people: `python -m ... (host H, pid P, since T)`."""
  try:
    h = json.loads(text)
    return f'{h["command"]} (host {h["host"]}, pid {h["pid"]}, since {h["since"]})'
  except (ValueError, KeyError, TypeError):
    return 'a process that is starting or was killed while starting (the lock file is empty)'


class Lock:
  """An exclusive lock, the file at `path`, held by one process at a time; its holder is named in the file.

  Local paths: `fcntl.flock`, which the kernel releases when the holder dies, even by SIGKILL: a lock left
  by a killed process is taken over at once (`taken_over` names the holder it had), and a second process
  meets a live one at once. On NFS flock is an NFS lock. `scheme://` paths (gs://: object stores have no
  locks), and local file systems without flock (gcsfuse): the file holds the holder and a heartbeat that
  a thread rewrites every `LOCK_HEARTBEAT_S`; a heartbeat older than `LOCK_STALE_S`, or a holder on this
  host whose process is gone, is stale and taken over. Without a compare-and-swap through `tf.io.gfile`,
  two processes starting within `LOCK_SETTLE_S` of each other there may both take it: the documented limit.

    with paths.Lock(paths.join(workdir, 'lock')).acquire():
      ...
  """

  def __init__(self, path: str):
    self.path = path
    self.taken_over: str | None = None
    self._remote = '://' in path
    self._fd: int | None = None
    self._token = uuid.uuid4().hex
    self._since = datetime.datetime.now().isoformat(sep=' ', timespec='seconds')
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None

  def _record(self) -> str:
    return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                       'since': self._since,
                       'command': ' '.join(['python', *sys.argv]) if sys.argv and sys.argv[0] else 'python',
                       'token': self._token, 'heartbeat': time.time()})

  def acquire(self, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None) -> 'Lock':
    """Takes the lock, waiting up to `wait_s` seconds for its holder (`on_wait(holder)` once when it starts
    waiting); raises `LockHeldError` naming the holder after that."""
    deadline = time.time() + wait_s
    while True:
      holder = self._try_remote() if self._remote else self._try_local()
      if holder is None:
        return self
      if time.time() >= deadline:
        raise LockHeldError(self.path, holder)
      if on_wait is not None:
        on_wait(holder)
        on_wait = None
      time.sleep(min(2.0, max(0.05, deadline - time.time())))

  def _try_local(self) -> str | None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = describe_holder(os.pread(fd, 1 << 16, 0).decode(errors='replace'))
      os.close(fd)
      return holder
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      self._remote = True  # a file system without flock: the heartbeat file
      return self._try_remote()
    previous = os.pread(fd, 1 << 16, 0).decode(errors='replace')
    if previous.strip():  # its holder died without releasing it (the kernel released the flock)
      self.taken_over = describe_holder(previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, self._record().encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return None

  def _try_remote(self) -> str | None:
    if exists(self.path):
      text = read_text(self.path)
      try:
        held = json.loads(text)
        stale = (time.time() - held['heartbeat'] > LOCK_STALE_S
                 or held['host'] == socket.gethostname() and not _pid_runs(held['pid']))
      except (ValueError, KeyError, TypeError):
        stale = True  # torn or foreign: nobody refreshes it
      if not stale:
        return describe_holder(text)
      self.taken_over = describe_holder(text)
    write_text(self.path, self._record())
    time.sleep(LOCK_SETTLE_S)
    text = read_text(self.path)
    if json.loads(text).get('token') != self._token:  # another process wrote after us: it holds the lock
      self.taken_over = None
      return describe_holder(text)
    self._heartbeat = threading.Thread(target=self._beat, daemon=True, name=f'heartbeat {self.path}')
    self._heartbeat.start()
    return None

  def _beat(self) -> None:
    while not self._stop.wait(LOCK_HEARTBEAT_S):
      with contextlib.suppress(OSError, tf.errors.OpError):  # a missed beat; the next one may pass
        write_text(self.path, self._record())

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # empty: released, not left by a killed holder
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._heartbeat is not None:
      self._stop.set()
      self._heartbeat.join()
      self._heartbeat = None
      with contextlib.suppress(OSError, tf.errors.OpError, ValueError):
        if json.loads(read_text(self.path)).get('token') == self._token:
          remove(self.path)

  def __enter__(self) -> 'Lock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()
