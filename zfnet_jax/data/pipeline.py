"""tfds -> per-host batches: deterministic, resumable training batches and padded evaluation batches.

Training batches are a pure function of (seed, step): each epoch's order is a seeded shuffle and every
random crop/flip is seeded by (seed, epoch, position in epoch), so a run resumed at step s sees exactly
the batches an uninterrupted run would. Evaluation batches are padded to a fixed number of steps with
`mask == 0` examples, so every example of the split counts exactly once.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zfnet_jax.data import preprocess, sources


def data_shards(config: ml_collections.ConfigDict, process_count: int) -> int:
  """How many disjoint parts the training split is read in (`input.data_shards`; 0: one per process)."""
  shards = config.input.data_shards or process_count
  if shards % process_count or config.batch_size % shards:
    raise ValueError(f'config.input.data_shards={shards} must be a multiple of the {process_count} processes '
                     f'and divide config.batch_size={config.batch_size}')
  return shards


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """This host's training batches from `start_step` on, forever, and the steps per epoch.

  The split is read as `K = data_shards` disjoint parts, each its own seeded stream; global batch `t`
  is the concatenation of batch `t` of every part, and a host reads and concatenates its `K / hosts`
  consecutive parts. So the global batches depend on (seed, step, K) only, not on the number of hosts.

  Yields:
    `{'image': float32 [b, S, S, C], 'label': int32 [b]}` with `b = batch_size / process_count`.
  """
  preprocess.check_config(config)
  num_shards = data_shards(config, process_count)
  shard_batch = config.batch_size // num_shards
  per_host = num_shards // process_count
  streams, spe = [], None
  for shard in range(process_index * per_host, (process_index + 1) * per_host):
    split = sources.load_split(config, config.dataset.train_split, shard, num_shards)
    # every part holds at least floor(n / K) examples: the same steps per epoch for all of them
    spe = (split.num_examples // num_shards) // shard_batch
    if spe < 1:
      raise ValueError(f'config.batch_size={config.batch_size} is larger than the training split '
                       f'({split.num_examples} examples, read in {num_shards} parts): lower it')
    streams.append(_shard_stream(config, split.dataset, shard, spe, shard_batch, start_step))
  out = tf.data.Dataset.zip(tuple(streams)).map(
      lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]})
  return iter(tfds.as_numpy(out.prefetch(tf.data.AUTOTUNE))), spe


def _shard_stream(config: ml_collections.ConfigDict, ds: tf.data.Dataset, shard: int, spe: int,
                  batch: int, start_step: int) -> tf.data.Dataset:
  """Batches of one part of the split from `start_step` on: a seeded shuffle per epoch, seeded crops."""
  ds = ds.cache() if config.input.cache else ds
  start_epoch, skip_steps = divmod(start_step, spe)
  base_seed = (config.seed * 1_000_003 + shard) * 1_000_003

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    shuffled = ds.shuffle(config.input.shuffle_buffer, seed=base_seed + e, reshuffle_each_iteration=False)
    examples = shuffled.take(spe * batch).enumerate()
    examples = examples.skip(tf.where(e == start_epoch, tf.constant(skip_steps * batch, tf.int64), 0))
    return examples.map(
        lambda i, ex: {'image': preprocess.train_image(ex['image'], tf.stack([base_seed + e, i]), config),
                       'label': tf.cast(ex['label'], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE)

  return tf.data.Dataset.range(start_epoch, 2 ** 40).flat_map(epoch).batch(batch, drop_remainder=True)


def eval_batches(config: ml_collections.ConfigDict, split_name: str | None = None, process_index: int = 0,
                 process_count: int = 1) -> tuple[Iterator[dict[str, np.ndarray]], int, int]:
  """This host's evaluation batches: a fixed number of steps, padded with `mask == 0` examples.

  Returns:
    `(batches, num_steps, num_examples)`; batches are `{'image': [b, S, S, C], 'label': [b],
    'mask': [b]}` with `b = eval_batch_size / process_count`; over all hosts and steps the `mask == 1`
    examples are exactly the split.
  """
  preprocess.check_config(config)
  split = sources.load_split(config, split_name or config.dataset.eval_split, process_index, process_count)
  host_batch = config.eval_batch_size // process_count
  num_steps = math.ceil(split.num_examples / (host_batch * process_count))
  size, channels = config.model.image_size, config.model.in_channels
  ds = split.dataset.map(
      lambda ex: {'image': preprocess.eval_image(ex['image'], config), 'label': tf.cast(ex['label'], tf.int32),
                  'mask': tf.constant(1, tf.int32)}, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({'image': tf.zeros((size, size, channels), tf.float32),
                                          'label': tf.constant(0, tf.int32), 'mask': tf.constant(0, tf.int32)})
  ds = ds.concatenate(padding.repeat()).batch(host_batch).take(num_steps).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds)), num_steps, split.num_examples


def split_batches(config: ml_collections.ConfigDict, split: str | None = None,
                  max_images: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """The split's evaluation batches on one host, in a fixed order (`eval_batches`), with `mask` 0 from
  image `max_images` on and no batch after the one that holds it."""
  stream, _, _ = eval_batches(config, split)
  seen = 0
  for batch in stream:
    if max_images is not None:
      if seen >= max_images:
        return
      batch['mask'] = np.where(seen + np.arange(len(batch['mask'])) < max_images, batch['mask'], 0)
    seen += len(batch['mask'])
    yield batch


def first_images(config: ml_collections.ConfigDict, split: str | None, keep: Callable[[int, int], bool],
                 count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first `count` images `i` of the split with `keep(i, label)`, preprocessed for evaluation.

  Returns:
    `(images [count, S, S, C] float32, labels [count] int, indices [count] int)`.
  """
  images, labels, indices, seen = [], [], [], 0
  for batch in split_batches(config, split):
    for image, label, mask in zip(batch['image'], batch['label'], batch['mask']):
      if mask and keep(seen, int(label)):
        images.append(image), labels.append(int(label)), indices.append(seen)
      seen += int(mask)
      if len(images) == count:
        return np.stack(images), np.asarray(labels), np.asarray(indices)
  raise ValueError(f'split {split or config.dataset.eval_split!r} has only {len(images)} of the {count} images '
                   f'asked for')
