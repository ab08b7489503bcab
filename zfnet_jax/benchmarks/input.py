"""`input`: the training input's host side (Grain over the prepared squares) beside a plain tf.data pipeline.

Ours: `pipeline.train_batches` from `--start_step`: each record read by index, the square decoded, uint8
batches (the crop, flip and mean come later, on the device). The reference, `tfdata_batches`: tfds's records
-> decode -> short side R -> centre R square -> random S crop -> flip -> minus the channel mean -> float32
batches, all `tf.data.AUTOTUNE`d, i.e. the same work done the usual way on the original images. Each side runs
in a fresh process (`measure`), so its peak RSS is its own; `--steps` batches are timed after the first. The
squares are prepared before timing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zfnet_jax.benchmarks import harness
from zfnet_jax.data import augment, pipeline, sources, squares

KINDS = ('grain', 'tfdata')  # ours, the reference


def tfdata_batches(config: ml_collections.ConfigDict, host_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """The reference pipeline over `config.dataset`'s train split: `image` float32 `[B, S, S, C]` random crops of
  the centre R square minus `augment.channel_stats`' mean, flipped at random; `label` int32 `[B]`."""
  sources.hide_accelerators_from_tf()
  r, s, c = config.input.resize_size, config.model.image_size, config.model.in_channels
  ds = sources.get_builder(config.dataset).as_dataset(
      split=config.dataset.train_split, shuffle_files=True, decoders={'image': tfds.decode.SkipDecoding()})
  mean = tf.constant(augment.channel_stats(c)[0], tf.float32)

  def prepare(example):
    image = tf.io.decode_image(example['image'], channels=c, expand_animations=False)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * r / tf.reduce_min(hw)), tf.int32), r)
    image = tf.image.resize(image, new_hw, antialias=True)
    top, left = (new_hw[0] - r) // 2, (new_hw[1] - r) // 2
    image = tf.image.random_crop(image[top:top + r, left:left + r], (s, s, c))
    return {'image': tf.image.random_flip_left_right(image) - mean, 'label': tf.cast(example['label'], tf.int32)}
  ds = ds.repeat().map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(host_batch).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds))


def measure(config: ml_collections.ConfigDict, kind: str, start_step: int, num_steps: int) -> dict[str, float]:
  """One side (`kind` in `KINDS`) in this process: images/s and CPU ms per image over `num_steps` host batches
  after the first, `first_batch_s` (building the iterator included), bytes per image and the peak RSS."""
  if kind not in KINDS:
    raise ValueError(f'input kind must be one of {KINDS}, got {kind!r}')
  host_batch = config.batch_size // jax.process_count()
  if kind == 'grain':
    squares.prepare(config)  # once, before timing
  start = time.perf_counter()
  batches = pipeline.train_batches(config, start_step)[0] if kind == 'grain' else tfdata_batches(config, host_batch)
  batch = next(batches)
  first_batch_s = time.perf_counter() - start
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_steps):
    batch = next(batches)
  wall, images = time.perf_counter() - start, num_steps * host_batch
  return {'images_per_s': images / wall, 'cpu_ms_per_image': 1e3 * (time.process_time() - start_cpu) / images,
          'first_batch_s': first_batch_s, 'host_bytes_per_image': sum(v.nbytes for v in batch.values()) / host_batch,
          'peak_rss_bytes': harness.process_max_rss()}


def _measure_in_fresh_process(config: ml_collections.ConfigDict, kind: str, options: harness.Options) -> dict:
  """`measure(...)` in a new Python process (this interpreter), its result read back from its last stdout line."""
  code = ('import json, sys; import ml_collections; from zfnet_jax.benchmarks import input; '
          'c = ml_collections.ConfigDict(json.loads(sys.argv[1])); '
          'print(json.dumps(input.measure(c, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))')
  done = subprocess.run([sys.executable, '-c', code, config.to_json(), kind, str(options.start_step),
                         str(options.steps)], capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f'the {kind} input benchmark failed:\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """One record, `what` `input`: our side's fields, then the reference's prefixed `tfdata_`, and
  `ratio_images_per_s` (ours over tf.data's)."""
  ours, ref = (_measure_in_fresh_process(config, kind, options) for kind in KINDS)
  return [{'config': options.config_path, 'what': 'input', 'batch': config.batch_size, 'dataset': config.dataset.name,
           'start_step': options.start_step, 'timed_steps': options.steps, **ours,
           'workers': config.input.workers or os.cpu_count(), 'cpu_cores': os.cpu_count(),
           'square_format': config.input.square_format, 'jpeg_quality': config.input.jpeg_quality,
           **{f'tfdata_{k}': v for k, v in ref.items()},
           'ratio_images_per_s': ours['images_per_s'] / ref['images_per_s'],
           'date': harness.utc_now()}]
