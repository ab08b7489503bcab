"""The paper's 256x256 squares, prepared once per dataset as a random-access tfds dataset (ArrayRecord).

"resizing the smallest dimension to 256, cropping the center 256x256 region": deterministic, so done
once. `prepare(config)` reads every split of the source (`imagenet2012` built from its archives, any
tfds image dataset, the bundled digits or a folder dataset) through tfds, makes each image's square
(`preprocess.square`: `input.resize_size` px, `model.in_channels` channels) and writes them with
tfds's `ZfnetSquares` builder in `file_format='array_record'`, JPEG at `input.jpeg_quality` or raw
uint8 (`input.square_format`). Beside the records (same folder): `labels-SPLIT.npy` (int32, record
order) and `mean-SPLIT.npy` (float32 `[R, R, C]`, the per-pixel mean image), so class subsets need no
reading and `pixel_mean` normalisation has its mean.

tfds writes into a temporary folder and renames it when complete: an interrupted preparation leaves no
prepared dataset, and running again starts that dataset over. Process 0 prepares; the other processes
wait for it (`input.prepare_timeout_s`), never writing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import os
import re
import socket
import sys
import time

import jax
import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from zfnet_jax import progress
from zfnet_jax.data import preprocess, sources


@dataclasses.dataclass(eq=False)
class SquaresConfig(tfds.core.BuilderConfig):
  """Which source and how its squares are made; `name` says all of it (one folder per choice)."""
  source: str = ''  # config.dataset.name
  source_data_dir: str | None = None
  manual_dir: str | None = None
  num_classes: int = 0
  size: int = 256
  channels: int = 3
  quality: int = 90  # JPEG quality; 0: raw uint8


class ZfnetSquares(tfds.core.GeneratorBasedBuilder):
  """Square crops of another dataset's images, in the source's split and label structure."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Short side to `size`, centre square; JPEG or raw uint8; labels and mean image beside.'}

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    shape = (c.size, c.size, c.channels)
    image = (tfds.features.Image(shape=shape, encoding_format='jpeg') if c.quality
             else tfds.features.Tensor(shape=shape, dtype=np.uint8))
    return self.dataset_info_from_configs(
        description=__doc__,
        disable_shuffling=True,  # records in generation order: labels-SPLIT.npy lines up with them
        features=tfds.features.FeaturesDict(
            {'image': image, 'label': tfds.features.ClassLabel(num_classes=c.num_classes)}))

  def _split_generators(self, dl_manager):
    c = self.builder_config
    source = sources.get_builder(ml_collections.ConfigDict(
        {'name': c.source, 'data_dir': c.source_data_dir, 'manual_dir': c.manual_dir}))
    return {split: self._generate_examples(source, split) for split in source.info.splits}

  def _generate_examples(self, source: tfds.core.DatasetBuilder, split: str):
    c = self.builder_config
    total = source.info.splits[split].num_examples
    in_order = {} if isinstance(source, tfds.folder_dataset.ImageFolder) else {
        'read_config': tfds.ReadConfig(interleave_cycle_length=1)}
    ds = source.as_dataset(split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()}, **in_order)
    total_sum = np.zeros((c.size, c.size, c.channels), np.float64)
    labels = []

    def make(example: dict) -> np.ndarray:
      name = example.get('image/filename', b'').decode() or f'{c.source} {split} example'
      return preprocess.square(preprocess.decode(example['image'], c.channels, name), c.size)

    done = progress.Progress(total, what=f'{c.name} {split}', unit='squares', every_s=10)
    examples = iter(tfds.as_numpy(ds))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL releases the GIL
      while chunk := list(itertools.islice(examples, 512)):
        for example, pixels in zip(chunk, pool.map(make, chunk)):
          total_sum += pixels
          labels.append(int(example['label']))
          yield len(labels) - 1, {'image': encode(pixels, c.quality), 'label': labels[-1]}
        done.update(len(labels))
    out = epath.Path(self.data_dir)  # the temporary folder tfds renames when every split is written
    np.save(out / f'labels-{split}.npy', np.asarray(labels, np.int32))
    np.save(out / f'mean-{split}.npy', (total_sum / max(1, len(labels))).astype(np.float32))


def encode(pixels: np.ndarray, quality: int) -> bytes | np.ndarray:
  """uint8 `[R, R, C]` -> JPEG bytes at `quality` (4:2:0), or the array itself when `quality == 0`."""
  if not quality:
    return pixels
  out = io.BytesIO()
  PIL.Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out, 'JPEG', quality=quality)
  return out.getvalue()


def builder(config: ml_collections.ConfigDict) -> ZfnetSquares:
  """The squares builder for `config.dataset` and `config.input` (prepared or not; nothing is read)."""
  d, i = config.dataset, config.input
  if i.square_format not in ('jpeg', 'raw'):
    raise ValueError(f"config.input.square_format must be 'jpeg' or 'raw', got {i.square_format!r}")
  if i.square_format == 'jpeg' and not 1 <= i.jpeg_quality <= 100:
    raise ValueError(f'config.input.jpeg_quality must be in 1..100, got {i.jpeg_quality}')
  quality = i.jpeg_quality if i.square_format == 'jpeg' else 0
  source = sources.source_builder(d)
  root = sources.folder_root(d.name)
  if root is not None:
    root = os.path.abspath(root)
    slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(root).lower())
    base = f'folder_{slug}_{hashlib.sha1(root.encode()).hexdigest()[:8]}'
  else:
    base = re.sub(r'[^a-z0-9]+', '_', d.name.lower())
  channels = config.model.in_channels
  name = f'{base}_{i.resize_size}px_{channels}ch_{f"q{quality}" if quality else "raw"}'
  squares_config = SquaresConfig(name=name, source=d.name, source_data_dir=d.data_dir, manual_dir=d.manual_dir,
                                 num_classes=source.info.features['label'].num_classes, size=i.resize_size,
                                 channels=channels, quality=quality)
  return ZfnetSquares(config=squares_config, data_dir=d.data_dir, file_format='array_record')


def key(config: ml_collections.ConfigDict) -> tuple:
  """What names one set of squares: the source and how its squares are made."""
  d, i = config.dataset, config.input
  return (d.name, d.data_dir, d.manual_dir, i.resize_size, i.square_format, i.jpeg_quality, config.model.in_channels)


_PREPARED: dict[tuple, ZfnetSquares] = {}  # each set of squares is opened once per process


def prepare(config: ml_collections.ConfigDict, process_index: int | None = None) -> ZfnetSquares:
  """The prepared squares builder, opened once per process: prepared here on process 0 if needed; other
  processes wait for it."""
  if key(config) not in _PREPARED:
    _PREPARED[key(config)] = _prepare(config, process_index)
  return _PREPARED[key(config)]


def _prepare(config: ml_collections.ConfigDict, process_index: int | None) -> ZfnetSquares:
  b = builder(config)
  if b.is_prepared():
    return b
  process_index = jax.process_index() if process_index is None else process_index
  lock = epath.Path(b.data_dir_root) / 'zfnet_squares' / f'{b.builder_config.name}.preparing'
  if process_index == 0:
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f'{socket.gethostname()} pid {os.getpid()} since {time.ctime()}\n')
    print(f'Preparing the {config.input.resize_size}px squares of {config.dataset.name!r} in {b.data_dir} '
          f'(once; an interrupted preparation starts over when run again)', file=sys.stderr, flush=True)
    try:
      b.download_and_prepare()
    finally:
      lock.unlink(missing_ok=True)
    return builder(config)
  deadline = time.time() + config.input.prepare_timeout_s
  while time.time() < deadline:
    time.sleep(min(2.0, max(0.1, deadline - time.time())))
    b = builder(config)
    if b.is_prepared():
      return b
  holder = lock.read_text().strip() if lock.exists() else 'no process (no lock file)'
  raise TimeoutError(
      f'process {process_index} waited {config.input.prepare_timeout_s}s for process 0 to prepare the squares '
      f'in {b.data_dir} (being prepared by: {holder}). Prepare them first on one machine: python '
      f'scripts/prepare_imagenet.py ... (or a one-process run of the same config), or raise '
      f'config.input.prepare_timeout_s.')


def split_file(b: ZfnetSquares, kind: str, split: str) -> np.ndarray:
  """`labels-SPLIT.npy` or `mean-SPLIT.npy` of a prepared squares builder."""
  return np.load(epath.Path(b.data_dir) / f'{kind}-{split}.npy')


def pixel_mean(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """float32 `[R, R, C]`: the mean square of the training split (prepared if needed), where
  `input.normalization == 'pixel_mean'`; None otherwise (the other normalisations need no data)."""
  if config.input.normalization != 'pixel_mean':
    return None
  return split_file(prepare(config), 'mean', config.dataset.train_split)
