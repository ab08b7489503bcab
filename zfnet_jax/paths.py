"""Workdir files for local and `scheme://` paths alike (`gs://`, TensorFlow's `ram://`), through `tf.io.gfile`.

Every file a run, an evaluation or a report reads or writes in a workdir goes through here, so a `gs://`
workdir works everywhere a local one does. Orbax checkpoints take the same paths directly.
"""
from __future__ import annotations

import json
import os
from typing import Any

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


def write_text(path: str, text: str | bytes) -> None:
  """Writes `text` (or bytes) to a temporary file and renames it over `path`: a crash leaves the old file or
  the new."""
  with tf.io.gfile.GFile(path + '.tmp', 'wb' if isinstance(text, bytes) else 'w') as f:
    f.write(text)
  replace(path + '.tmp', path)


def write_json(path: str, value: Any, **dump_options: Any) -> None:
  write_text(path, json.dumps(value, **dump_options))
