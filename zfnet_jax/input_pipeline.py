"""tfds -> per-host batches: dataset lookup, the paper's preprocessing, deterministic train order.

Every host reads its own disjoint part of a split (`tfds.even_splits`; folder datasets are sharded
after listing). Training batches are a pure function of (seed, step): each epoch's order is a seeded
shuffle and every random crop/flip is seeded by (seed, epoch, position in epoch), so a run resumed at
step s sees exactly the batches an uninterrupted run would. Evaluation batches are padded to a fixed
number of steps with `mask == 0` examples, so every example of the split counts exactly once.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Iterator

import ml_collections
import numpy as np
import PIL.Image
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


def load_split(config: ml_collections.ConfigDict, split: str, shard_index: int = 0, num_shards: int = 1) -> Split:
  """Part `shard_index` of `num_shards` disjoint parts of `split`, decoded, in a fixed order.

  With `config.dataset.classes`, only those classes' examples, relabelled 0..len(classes)-1; the
  subset is taken from the whole split before it is sharded, so the parts stay even.
  """
  builder = get_builder(config.dataset)
  known_splits = builder.info.splits  # empty under tfds.testing.mock_data
  if known_splits and split not in known_splits:
    raise ValueError(f'dataset {config.dataset.name!r} has no split {split!r}; it has '
                     f'{", ".join(builder.info.splits.keys())} (set config.dataset.train_split / eval_split)')
  classes = tuple(config.dataset.classes)
  dataset_classes = builder.info.features['label'].num_classes
  num_classes = check_classes(config, dataset_classes)
  select = lambda ds: select_classes(ds, classes, dataset_classes)
  read = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
  skip_decoding = {'image': tfds.decode.SkipDecoding()}
  if isinstance(builder, tfds.folder_dataset.ImageFolder):
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip_decoding)
    ds = select(ds).shard(num_shards, shard_index).map(
        lambda ex: {'image': _decode_file(ex['image'], ex['image/filename']), 'label': ex['label']})
  elif classes:
    ds = select(builder.as_dataset(split=split, shuffle_files=False, read_config=read)).shard(num_shards, shard_index)
  else:
    part = tfds.even_splits(split, n=num_shards, drop_remainder=False)[shard_index]
    ds = builder.as_dataset(split=part, shuffle_files=False, read_config=read)
  if classes:  # count the subset's labels without decoding images
    labels = builder.as_dataset(split=split, shuffle_files=False, decoders=skip_decoding)
    num_examples = int(select(labels).reduce(0, lambda n, _: n + 1))
  elif split in known_splits:
    num_examples = known_splits[split].num_examples
  else:
    num_examples = int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
  return Split(ds, num_examples, num_classes)


def check_classes(config: ml_collections.ConfigDict, dataset_classes: int) -> int:
  """The number of classes the network sees (`dataset.classes` or all); errors say which field to set."""
  classes, name = tuple(config.dataset.classes), config.dataset.name
  if classes and (len(set(classes)) != len(classes) or not all(0 <= c < dataset_classes for c in classes)):
    raise ValueError(f'config.dataset.classes={classes} must be distinct labels of {name!r}, which has '
                     f'labels 0..{dataset_classes - 1}')
  num_classes = len(classes) or dataset_classes
  if num_classes != config.model.num_classes:
    chosen = f'config.dataset.classes selects {num_classes} classes' if classes else f'has {num_classes} classes'
    raise ValueError(f'dataset {name!r} {chosen} but config.model.num_classes is {config.model.num_classes}: '
                     f'set --config.model.num_classes={num_classes}')
  return num_classes


def select_classes(ds: tf.data.Dataset, classes: tuple[int, ...], dataset_classes: int) -> tf.data.Dataset:
  """Keeps the examples whose label is in `classes`, relabelled to its position there; `()` keeps all."""
  if not classes:
    return ds
  new_label = np.full(dataset_classes, -1, np.int64)
  new_label[list(classes)] = np.arange(len(classes))
  new_label = tf.constant(new_label)
  relabelled = ds.map(lambda ex: {**ex, 'label': tf.gather(new_label, ex['label'])})
  return relabelled.filter(lambda ex: ex['label'] >= 0)


def _decode_file(encoded: tf.Tensor, filename: tf.Tensor) -> tf.Tensor:
  """Decodes an image file's bytes to uint8 RGB `[H, W, 3]`; an unreadable file is an error naming it."""
  def decode(data: bytes, name: bytes) -> np.ndarray:
    try:
      with PIL.Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as e:
      raise ValueError(f'corrupt or unreadable image file {name.decode()} ({e}): remove or replace it') from None
  image = tf.numpy_function(decode, [encoded, filename], tf.uint8, stateful=False)
  return tf.ensure_shape(image, (None, None, 3))


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
  check_input_config(config)
  num_shards = data_shards(config, process_count)
  shard_batch = config.batch_size // num_shards
  per_host = num_shards // process_count
  streams, spe = [], None
  for shard in range(process_index * per_host, (process_index + 1) * per_host):
    split = load_split(config, config.dataset.train_split, shard, num_shards)
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
        lambda i, ex: {'image': preprocess_train(ex['image'], tf.stack([base_seed + e, i]), config),
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


def load_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The network input `[image_size, image_size, in_channels]` float32 for an image file or a `.npy` array."""
  size, channels = config.model.image_size, config.model.in_channels
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no image file {path!r}')
  if path.endswith('.npy'):
    x = np.load(path)
    if x.shape != (size, size, channels) or x.dtype != np.float32:
      raise ValueError(f'{path} holds a {x.dtype} array {list(x.shape)}; a preprocessed input for this config is '
                       f'float32 {[size, size, channels]} (or pass the image file to be preprocessed)')
    return x
  try:
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
  except tf.errors.InvalidArgumentError:
    raise ValueError(f'{path} is neither a .npy array nor an image file TensorFlow can decode '
                     f'(PNG, JPEG, GIF, BMP)') from None
  return preprocess_eval(image, config).numpy()
