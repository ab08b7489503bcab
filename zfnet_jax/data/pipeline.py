"""Prepared squares -> per-host uint8 batches with Grain: exact, O(1)-resumable train batches; padded eval batches.

Training: epoch `e` visits the split in the order `default_rng([seed, e]).permutation(n)`; global batch
`t` is entries `[p * B, (p + 1) * B)` of its epoch's order (`p = t mod steps_per_epoch`, `B` the
global batch), and host `h` of `H` reads rows `[h * B/H, (h + 1) * B/H)` of it. So a global batch is a
pure function of (seed, step, B), the same for any number of hosts or decoding threads, and starting at
step `t` is index arithmetic: nothing before it is read or decoded. Each host reads only its own
records, by index, from the ArrayRecord files (`tfds` data source), and decodes them in
`input.workers` Grain threads (PIL releases the GIL); no TensorFlow runs here.

Batches are `{'image': uint8 [b, R, R, C], 'label': int32 [b]}` (`R = input.resize_size`): 196 KB
per 256x256x3 image to the device, where `augment.train_inputs` crops, flips and normalises them.
Evaluation batches add `mask` (0 for padding) and cover the split exactly once over all hosts.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from typing import Callable, Iterator

import grain
import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from zfnet_jax.data import augment, sources, squares

FOREVER = 2 ** 50  # examples in a host's training stream


@dataclasses.dataclass
class Records:
  """One split of the prepared squares, read by index; entry `k` is record `index[k]` with `labels[k]`."""
  source: object  # tfds ArrayRecord data source
  index: np.ndarray  # int64 record numbers (all of them, or the `dataset.classes` subset)
  labels: np.ndarray  # int32 network labels, relabelled to 0..len(classes)-1 for a subset
  jpeg: bool
  shape: tuple[int, int, int]

  def __len__(self) -> int:
    return len(self.index)

  def example(self, k: int) -> dict[str, np.ndarray]:
    """Entry `k`: `{'image': uint8 [R, R, C], 'label': int32}`."""
    image = self.source[int(self.index[k])]['image']
    if self.jpeg:
      with PIL.Image.open(io.BytesIO(image)) as decoded:
        image = np.asarray(decoded).reshape(self.shape)
    return {'image': image, 'label': self.labels[k]}

  def padding(self) -> dict[str, np.ndarray]:
    return {'image': np.zeros(self.shape, np.uint8), 'label': np.int32(0)}


_OPEN: dict[tuple, Records] = {}  # each split of each prepared set of squares is opened once per process


def open_split(config: ml_collections.ConfigDict, split: str, process_index: int | None = None) -> Records:
  """The prepared squares of `split` (prepared now on process 0 if they are not), `dataset.classes` applied
  from the stored labels, without reading any image. Opened once per process and set of squares (squares
  prepared again in the same process are opened again)."""
  b = squares.prepare(config, process_index)
  key = (b, split, tuple(config.dataset.classes), config.model.num_classes,
         _permutation_seed(config, split))  # b: by identity
  if key not in _OPEN:
    _OPEN[key] = _open_split(config, b, split)
  return _OPEN[key]


def _permutation_seed(config: ml_collections.ConfigDict, split: str) -> int:
  """`dataset.permute_labels_seed` for the train split (its labels are permuted, reproducibly), else -1."""
  return int(config.dataset.permute_labels_seed) if split == config.dataset.train_split else -1


def _open_split(config: ml_collections.ConfigDict, b: squares.ZfnetSquares, split: str) -> Records:
  if split not in b.info.splits:
    raise ValueError(f'dataset {config.dataset.name!r} has no split {split!r}; it has '
                     f'{", ".join(b.info.splits.keys())} (set config.dataset.train_split / eval_split)')
  all_labels = squares.split_file(b, 'labels', split)
  dataset_classes = b.info.features['label'].num_classes
  sources.check_classes(config, dataset_classes)
  classes = tuple(config.dataset.classes)
  if classes:
    relabel = np.full(dataset_classes, -1, np.int32)
    relabel[list(classes)] = np.arange(len(classes))
    index = np.flatnonzero(relabel[all_labels] >= 0)
    labels = relabel[all_labels[index]]
  else:
    index, labels = np.arange(len(all_labels)), all_labels.astype(np.int32)
  seed = _permutation_seed(config, split)
  if seed >= 0:
    labels = np.random.default_rng(seed).permutation(labels)
  c = b.builder_config
  jpeg = bool(c.quality)
  source = b.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()} if jpeg else None)
  return Records(source, index, labels, jpeg, (c.size, c.size, c.channels))


def read_options(config: ml_collections.ConfigDict, host_batch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.input.workers or os.cpu_count(),
                           prefetch_buffer_size=host_batch * config.input.prefetch_batches)


def train_steps_per_epoch(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1) -> int:
  """Global batches in an epoch of the training split (prepared now on process 0 if it is not); raises
  where the batch does not fit the split or the processes. The start of a training run (`loop.set_up` calls
  it before anything else reads the data): checks the squares against their source again
  (`squares.prepare(recheck=True)`), in a notebook kernel too; `train_batches` then reads them unchecked."""
  return _train_split(config, process_index, process_count, recheck=True)[1]


def _train_split(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                 recheck: bool = False) -> tuple[Records, int]:
  """`(the training split's records, global batches per epoch)`, the batch checked against both; the squares
  checked against their source again with `recheck`."""
  augment.check_config(config)
  if recheck:
    squares.prepare(config, process_index, recheck=True)
  records, global_batch = open_split(config, config.dataset.train_split, process_index), config.batch_size
  if global_batch % process_count:
    raise ValueError(f'config.batch_size={global_batch} must be a multiple of the {process_count} processes')
  if len(records) < global_batch:
    raise ValueError(f'config.batch_size={global_batch} is larger than the training split ({len(records)} '
                     'examples): lower it')
  return records, len(records) // global_batch


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """This host's training batches from `start_step` on, forever, and the steps per epoch.

  Yields:
    `{'image': uint8 [b, R, R, C], 'label': int32 [b]}`, `b = batch_size / process_count`: rows
    `[process_index * b, (process_index + 1) * b)` of global batch `start_step`, `start_step + 1`, ...
  """
  records, steps_per_epoch = _train_split(config, process_index, process_count)
  n, global_batch = len(records), config.batch_size
  host_batch = global_batch // process_count

  @functools.lru_cache(maxsize=2)
  def order(epoch: int) -> np.ndarray:
    return np.random.default_rng([config.seed, epoch]).permutation(n)

  def example(k: int) -> dict[str, np.ndarray]:  # the k-th example of this host's stream
    step, row = divmod(k, host_batch)
    epoch, position = divmod(step, steps_per_epoch)
    return records.example(order(epoch)[position * global_batch + process_index * host_batch + row])

  ds = grain.MapDataset.range(start_step * host_batch, FOREVER).map(example)
  ds = ds.to_iter_dataset(read_options(config, host_batch)).batch(host_batch, drop_remainder=True)
  return iter(ds), steps_per_epoch


def eval_batches(config: ml_collections.ConfigDict, split_name: str | None = None, process_index: int = 0,
                 process_count: int = 1,
                 squares_only: bool = False) -> tuple[Iterator[dict[str, np.ndarray]], int, int]:
  """This host's evaluation batches: a fixed number of steps, padded with `mask == 0` examples.

  With `squares_only` the images are the uint8 squares `[b, R, R, C]` (the eval step crops and normalises
  them on the device); otherwise the normalised float32 centre crops `[b, S, S, C]` the network takes.

  Returns:
    `(batches, num_steps, num_examples)`; batches hold `image`, `label` `[b]`, `mask` `[b]` with
    `b = eval_batch_size / process_count`; over all hosts and steps the `mask == 1` examples are exactly
    the split.
  """
  augment.check_config(config)
  records = open_split(config, split_name or config.dataset.eval_split, process_index)
  n, host_batch = len(records), config.eval_batch_size // process_count
  num_steps = math.ceil(n / (host_batch * process_count))

  def example(k: int) -> dict[str, np.ndarray]:
    step, row = divmod(k, host_batch)
    g = (step * process_count + process_index) * host_batch + row
    return {**records.example(g), 'mask': np.int32(1)} if g < n else {**records.padding(), 'mask': np.int32(0)}

  ds = grain.MapDataset.range(num_steps * host_batch).map(example)
  ds = ds.to_iter_dataset(read_options(config, host_batch)).batch(host_batch)
  if not squares_only:
    mean = squares.pixel_mean(config)
    ds = ds.map(lambda b: {**b, 'image': np.asarray(augment.center_crops(b['image'], config, mean))})
  return iter(ds), num_steps, n


def split_batches(config: ml_collections.ConfigDict, split: str | None = None, max_images: int | None = None,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This host's evaluation batches of the split (`eval_batches`, in a fixed order), with `index` int32 `[b]`:
  each row's index in the split, the same on every host (padding rows: past the split's end). `mask` is 0
  from image `max_images` on, and no batch comes after the step that holds it, so over all hosts the
  `mask == 1` rows are exactly images `0 .. max_images - 1` (or the whole split)."""
  stream, num_steps, n = eval_batches(config, split, process_index, process_count)
  host_batch = config.eval_batch_size // process_count
  limit = n if max_images is None else min(n, max_images)
  for step, batch in enumerate(stream):
    start = (step * process_count + process_index) * host_batch
    if step * process_count * host_batch >= limit:
      return
    batch['index'] = np.arange(start, start + host_batch, dtype=np.int32)
    batch['mask'] = np.where(batch['index'] < limit, batch['mask'], 0)
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
