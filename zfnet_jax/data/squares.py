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
prepared dataset, and running again starts that dataset over. One process prepares: process 0 of a
run, holding the lock file `zfnet_squares/NAME.lock` beside the squares (`paths.Lock`), so that runs
started at once on one machine or many (other workdirs, the same data dir) wait for it instead of
preparing the same squares twice; the other processes of a run wait for it (`input.prepare_timeout_s`),
never writing.

The squares know their source: `source.json` beside the records holds its fingerprint when they were
prepared (`source_fingerprint`: a folder's files with their sizes and modification times; a tfds
dataset's version and split sizes). Process 0 compares it with the source as it is when it first opens
the squares in a process, and again at the start of every training run (`prepare(recheck=True)`, so a
notebook kernel that trains again notices too); a changed source stops with what to run
(`SourceChangedError`). A folder copied without its modification times counts as changed; squares
prepared before fingerprints were recorded are not checked.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import os
import json
import re
import sys
import time

import jax
import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from zfnet_jax import paths, progress
from zfnet_jax.data import preprocess, sources

SOURCE_FILE = 'source.json'  # beside the records: the source's fingerprint when the squares were prepared


class SourceChangedError(ValueError):
  """The source changed since its squares were prepared; the message says what to run."""


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
    d = ml_collections.ConfigDict({'name': c.source, 'data_dir': c.source_data_dir, 'manual_dir': c.manual_dir})
    source = sources.get_builder(d)
    # into the temporary folder tfds renames when every split is written, beside the records
    (epath.Path(self.data_dir) / SOURCE_FILE).write_text(json.dumps(source_fingerprint(d)))
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


def source_fingerprint(d: ml_collections.ConfigDict) -> dict | None:
  """What `config.dataset` is now: a folder dataset's image files (`SPLIT/CLASS/FILE`: how many, their bytes,
  and a digest of every path, size and modification time); a tfds dataset's version and split sizes. None
  for a tfds dataset no longer prepared (deleted after its squares were made: it cannot have changed)."""
  root = sources.folder_root(d.name)
  if root is not None:
    digest, count, size = hashlib.sha256(), 0, 0
    for folder, dirs, files in os.walk(root):
      dirs.sort()
      if os.path.relpath(folder, root).count(os.sep) != 1:  # SPLIT/CLASS folders hold the images
        continue
      for name in sorted(files):
        stat = os.stat(os.path.join(folder, name))
        digest.update(f'{os.path.relpath(folder, root)}/{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n'.encode())
        count, size = count + 1, size + stat.st_size
    return {'files': count, 'bytes': size, 'digest': digest.hexdigest()}
  source = sources.source_builder(d)
  if not source.is_prepared():
    return None
  return {'version': str(source.info.version),
          'splits': {name: split.num_examples for name, split in sorted(source.info.splits.items())}}


def _describe(fingerprint: dict) -> str:
  if 'files' in fingerprint:
    return f'{fingerprint["files"]} files, {fingerprint["bytes"]:,} bytes'
  return f'version {fingerprint["version"]}, split sizes {fingerprint["splits"]}'


def check_source(config: ml_collections.ConfigDict, b: ZfnetSquares) -> None:
  """Raises `SourceChangedError` if the source of the prepared squares `b` is not what they were made from."""
  recorded = epath.Path(b.data_dir) / SOURCE_FILE
  then = json.loads(recorded.read_text()) if recorded.exists() else None
  now = source_fingerprint(config.dataset) if then is not None else None
  if then is None or now is None or now == then:
    return
  same = ' (as many files and bytes, but paths, sizes or modification times differ)' \
      if _describe(now) == _describe(then) else ''
  raise SourceChangedError(
      f'the source {config.dataset.name!r} changed since its squares were prepared in {b.data_dir} (then: '
      f'{_describe(then)}; now: {_describe(now)}{same}), so the squares leave the change out. To prepare them '
      f'again from the source as it is, move that folder aside (or delete it) and run the same command again; '
      f'to go on with the old squares, put the source back as it was.')


def key(config: ml_collections.ConfigDict) -> tuple:
  """What names one set of squares: the source and how its squares are made."""
  d, i = config.dataset, config.input
  return (d.name, d.data_dir, d.manual_dir, i.resize_size, i.square_format, i.jpeg_quality, config.model.in_channels)


_PREPARED: dict[tuple, ZfnetSquares] = {}  # each set of squares is opened once per process


def prepare(config: ml_collections.ConfigDict, process_index: int | None = None,
            recheck: bool = False) -> ZfnetSquares:
  """The prepared squares builder, opened once per process: prepared here on process 0 if needed (other
  processes wait for it); their source checked on process 0 when first opened, and with `recheck` when
  already open (`SourceChangedError`)."""
  k = key(config)
  process_index = jax.process_index() if process_index is None else process_index
  if k in _PREPARED and recheck and process_index == 0:
    try:
      check_source(config, _PREPARED[k])
    except SourceChangedError:
      del _PREPARED[k]  # prepared again in this process, they are opened again
      raise
  if k not in _PREPARED:
    _PREPARED[k] = _prepare(config, process_index)
  return _PREPARED[k]


def _prepare(config: ml_collections.ConfigDict, process_index: int) -> ZfnetSquares:
  b = builder(config)
  lock_path = paths.join(str(b.data_dir_root), 'zfnet_squares', f'{b.builder_config.name}.lock')
  if process_index != 0:
    return _wait_for_process_0(config, process_index, lock_path)
  if not b.is_prepared():
    paths.makedirs(paths.join(str(b.data_dir_root), 'zfnet_squares'))
    waiting = lambda holder: print(f'Waiting for {holder} to finish preparing the squares in {b.data_dir}',  # noqa: E731
                                   file=sys.stderr, flush=True)
    try:
      lock = paths.Lock(lock_path).acquire(wait_s=config.input.prepare_timeout_s, on_wait=waiting)
    except paths.LockHeldError as e:
      raise TimeoutError(f'waited {config.input.prepare_timeout_s}s for {e.holder} to prepare the squares in '
                         f'{b.data_dir}: raise config.input.prepare_timeout_s, or stop it and run again') from None
    with lock:
      b = builder(config)
      if not b.is_prepared():  # else the holder we waited for prepared them
        print(f'Preparing the {config.input.resize_size}px squares of {config.dataset.name!r} in {b.data_dir} '
              f'(once; an interrupted preparation starts over when run again)', file=sys.stderr, flush=True)
        b.download_and_prepare()
        b = builder(config)
  check_source(config, b)
  return b


def _wait_for_process_0(config: ml_collections.ConfigDict, process_index: int, lock_path: str) -> ZfnetSquares:
  deadline = time.time() + config.input.prepare_timeout_s
  b = builder(config)
  while not b.is_prepared():
    if time.time() >= deadline:
      holder = paths.describe_holder(paths.read_text(lock_path)) if paths.exists(lock_path) else 'no process'
      raise TimeoutError(
          f'process {process_index} waited {config.input.prepare_timeout_s}s for process 0 to prepare the squares '
          f'in {b.data_dir} (being prepared by: {holder}). Prepare them first on one machine: python '
          f'scripts/prepare_imagenet.py ... (or a one-process run of the same config), or raise '
          f'config.input.prepare_timeout_s.')
    time.sleep(min(2.0, max(0.1, deadline - time.time())))
    b = builder(config)
  return b


def split_file(b: ZfnetSquares, kind: str, split: str) -> np.ndarray:
  """`labels-SPLIT.npy` or `mean-SPLIT.npy` of a prepared squares builder."""
  return np.load(epath.Path(b.data_dir) / f'{kind}-{split}.npy')


def pixel_mean(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """float32 `[R, R, C]`: the mean square of the training split (prepared if needed), where
  `input.normalization == 'pixel_mean'`; None otherwise (the other normalisations need no data)."""
  if config.input.normalization != 'pixel_mean':
    return None
  return split_file(prepare(config), 'mean', config.dataset.train_split)
