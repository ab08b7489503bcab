"""tfds -> per-host batches: dataset lookup, the paper's preprocessing, deterministic train order.

Every host reads its own disjoint part of a split (`tfds.even_splits`; folder datasets are sharded
after listing). Training batches are a pure function of (seed, step): each epoch's order is a seeded
shuffle and every random crop/flip is seeded by (seed, epoch, position in epoch), so a run resumed at
step s sees exactly the batches an uninterrupted run would. Evaluation batches are padded to a fixed
number of steps with `mask == 0` examples, so every example of the split counts exactly once.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zfnet_jax import datasets  # noqa: F401  (registers the bundled builders)

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixels in [0, 255]
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGENET_ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
FOLDER_PREFIX = 'folder:'


class DatasetNotFoundError(RuntimeError):
  """The dataset is not prepared and cannot be prepared here; the message says how to prepare it."""


@dataclasses.dataclass
class Split:
  """One host's view of a split: the dataset of decoded examples and the split's sizes."""
  dataset: tf.data.Dataset  # {'image': uint8 [H, W, C], 'label': int64}
  num_examples: int  # in the whole split, over all hosts
  num_classes: int


def hide_accelerators_from_tf() -> None:
  """TensorFlow only feeds data here: keep it off the GPUs/TPUs that JAX uses."""
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


def get_builder(d: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for `config.dataset`, prepared; clear errors when it cannot be."""
  if d.name.startswith(FOLDER_PREFIX):
    root = d.name[len(FOLDER_PREFIX):]
    if not os.path.isdir(root):
      raise DatasetNotFoundError(f'folder dataset {root!r} does not exist: expected {root}/SPLIT/CLASS/IMAGE files')
    return tfds.folder_dataset.ImageFolder(root)
  try:
    builder = tfds.builder(d.name, data_dir=d.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'config.dataset.name={d.name!r} is not a tfds dataset, the bundled '
                               f"'sklearn_digits', or 'folder:/path/to/images'. ({e})") from None
  if builder.is_prepared():
    return builder
  try:  # the bundled digits prepare here in seconds; ImageNet only from the manual archives (hours)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=d.manual_dir))
  except Exception as e:  # noqa: BLE001  (tfds raises many kinds; all mean the same to the user)
    if d.name == 'imagenet2012':
      raise DatasetNotFoundError(_imagenet_missing_message(builder, d.manual_dir, e)) from None
    raise DatasetNotFoundError(
        f'tfds dataset {d.name!r} is not prepared in {builder.data_dir_root} and preparing it failed ({e}). '
        f'Prepare it where it can be downloaded with `tfds build {d.name} --data_dir DIR` and set '
        f'--config.dataset.data_dir=DIR.') from None
  return builder


def _imagenet_missing_message(builder: tfds.core.DatasetBuilder, manual_dir: str | None, error: Exception) -> str:
  manual_dir = manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
  missing = [f for f in IMAGENET_ARCHIVES if not os.path.exists(os.path.join(manual_dir, f))]
  prepare = f'python scripts/prepare_imagenet.py --manual_dir {manual_dir} --data_dir {builder.data_dir_root}'
  why = f'{" and ".join(missing)} missing from {manual_dir}' if missing else f'preparing it failed: {error}'
  return (f'ImageNet 2012 is not prepared in {builder.data_dir_root}, {why}. Download '
          f'{" and ".join(IMAGENET_ARCHIVES)} from https://image-net.org (registration needed), put them in '
          f'{manual_dir} (or set --config.dataset.manual_dir), then prepare the dataset once (hours):\n  {prepare}')


def load_split(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
               process_count: int = 1) -> Split:
  """This host's part of `split`, decoded, in a fixed order."""
  builder = get_builder(config.dataset)
  known_splits = builder.info.splits  # empty under tfds.testing.mock_data
  if known_splits and split not in known_splits:
    raise ValueError(f'dataset {config.dataset.name!r} has no split {split!r}; it has '
                     f'{", ".join(builder.info.splits.keys())} (set config.dataset.train_split / eval_split)')
  num_classes = builder.info.features['label'].num_classes
  if num_classes != config.model.num_classes:
    raise ValueError(f'dataset {config.dataset.name!r} has {num_classes} classes but config.model.num_classes is '
                     f'{config.model.num_classes}: set --config.model.num_classes={num_classes}')
  read = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
  if isinstance(builder, tfds.folder_dataset.ImageFolder):
    ds = builder.as_dataset(split=split, shuffle_files=False).shard(process_count, process_index)
  else:
    host_split = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    ds = builder.as_dataset(split=host_split, shuffle_files=False, read_config=read)
  if split in known_splits:
    num_examples = known_splits[split].num_examples
  else:
    num_examples = int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
  return Split(ds, num_examples, num_classes)


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Grey <-> RGB as the network needs; tfds image features have a static channel count."""
  have = image.shape[-1]
  if have == channels:
    return image
  if channels == 3:
    return tf.image.grayscale_to_rgb(image[..., :1])
  return tf.image.rgb_to_grayscale(image[..., :3])


def _resize_short_side_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Short side to `size`, then the central `size x size` square (the paper's 256x256 image)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  scale = size / tf.cast(tf.minimum(h, w), tf.float32)
  new_hw = tf.cast(tf.math.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
  new_hw = tf.maximum(new_hw, size)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return image[top:top + size, left:left + size]


def _normalize(image: tf.Tensor, mode: str) -> tf.Tensor:
  """`[H, W, C]` float pixels in [0, 255] -> network input."""
  channels = image.shape[-1]
  mean = tf.constant(IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,), tf.float32)
  if mode == 'mean':
    return image - mean
  std = tf.constant(IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,), tf.float32)
  return (image - mean) / std


def check_input_config(config: ml_collections.ConfigDict) -> None:
  i, size = config.input, config.model.image_size
  if i.crop not in ('paper', 'inception'):
    raise ValueError(f"config.input.crop must be 'paper' or 'inception', got {i.crop!r}")
  if i.normalization not in ('mean', 'mean_std'):
    raise ValueError(f"config.input.normalization must be 'mean' or 'mean_std', got {i.normalization!r}")
  if i.resize_size < size:
    raise ValueError(f'config.model.image_size={size} crops are larger than the {i.resize_size}px resized '
                     f'images: set config.input.resize_size >= image_size')


def preprocess_eval(image: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 `[H, W, C]` -> float32 `[S, S, in_channels]`: short side to resize_size, centre S crop."""
  image = _to_channels(image, config.model.in_channels)
  image = _resize_short_side_and_center_crop(image, config.input.resize_size)
  size, off = config.model.image_size, (config.input.resize_size - config.model.image_size) // 2
  image = image[off:off + size, off:off + size]
  return _normalize(image, config.input.normalization)


def preprocess_train(image: tf.Tensor, seed: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 `[H, W, C]` -> float32 `[S, S, in_channels]`, random crop (and flip) seeded by `seed` `[2]`."""
  size, channels = config.model.image_size, config.model.in_channels
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _to_channels(image, channels)
  if config.input.crop == 'inception':
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
  else:
    image = _resize_short_side_and_center_crop(image, config.input.resize_size)
    image = tf.image.stateless_random_crop(image, (size, size, channels), seed=crop_seed)
  if config.input.flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  image = tf.ensure_shape(image, (size, size, channels))
  return _normalize(image, config.input.normalization)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int, process_count: int) -> int:
  """Steps in one epoch; the same on every host (each host has at least floor(n / hosts) examples)."""
  host_batch = config.batch_size // process_count
  steps = (num_train_examples // process_count) // host_batch
  if steps < 1:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the training split '
                     f'({num_train_examples} examples): lower it')
  return steps


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """This host's training batches from `start_step` on, forever, and the steps per epoch.

  Yields:
    `{'image': float32 [b, S, S, C], 'label': int32 [b]}` with `b = batch_size / process_count`.
  """
  check_input_config(config)
  split = load_split(config, config.dataset.train_split, process_index, process_count)
  spe = steps_per_epoch(config, split.num_examples, process_count)
  host_batch = config.batch_size // process_count
  ds = split.dataset.cache() if config.input.cache else split.dataset
  start_epoch, skip_steps = divmod(start_step, spe)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    shuffled = ds.shuffle(config.input.shuffle_buffer, seed=config.seed * 1_000_003 + e,
                          reshuffle_each_iteration=False)
    examples = shuffled.take(spe * host_batch).enumerate()
    examples = examples.skip(tf.where(e == start_epoch, tf.constant(skip_steps * host_batch, tf.int64), 0))
    seed_of = lambda i: tf.stack([tf.cast(config.seed, tf.int64) * 1_000_003 + e, i])
    return examples.map(
        lambda i, ex: {'image': preprocess_train(ex['image'], seed_of(i), config),
                       'label': tf.cast(ex['label'], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE)

  out = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch)
  out = out.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(out)), spe


def eval_batches(config: ml_collections.ConfigDict, split_name: str | None = None, process_index: int = 0,
                 process_count: int = 1) -> tuple[Iterator[dict[str, np.ndarray]], int, int]:
  """This host's evaluation batches: a fixed number of steps, padded with `mask == 0` examples.

  Returns:
    `(batches, num_steps, num_examples)`; batches are `{'image': [b, S, S, C], 'label': [b],
    'mask': [b]}` with `b = eval_batch_size / process_count`; over all hosts and steps the `mask == 1`
    examples are exactly the split.
  """
  check_input_config(config)
  split = load_split(config, split_name or config.dataset.eval_split, process_index, process_count)
  host_batch = config.eval_batch_size // process_count
  num_steps = math.ceil(split.num_examples / (host_batch * process_count))
  size, channels = config.model.image_size, config.model.in_channels
  ds = split.dataset.map(
      lambda ex: {'image': preprocess_eval(ex['image'], config), 'label': tf.cast(ex['label'], tf.int32),
                  'mask': tf.constant(1, tf.int32)}, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({'image': tf.zeros((size, size, channels), tf.float32),
                                          'label': tf.constant(0, tf.int32), 'mask': tf.constant(0, tf.int32)})
  ds = ds.concatenate(padding.repeat()).batch(host_batch).take(num_steps).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds)), num_steps, split.num_examples
