"""Where examples come from: tfds builders (prepared on first use), folder datasets, class checks, label names.

The sources are read once, by `squares.py`, to prepare the squares that training and evaluation read.
"""
from __future__ import annotations

import os
import re

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from zfnet_jax.data import sklearn_digits  # noqa: F401  (registers the bundled builder)


IMAGENET_ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
FOLDER_PREFIX = 'folder:'
SPLIT_NAME = r'[\w-]+'  # what tfds takes as a split name (tfds.core.splits): letters, digits, _ and -


class DatasetNotFoundError(RuntimeError):
  """The dataset is not prepared and cannot be prepared here; the message says how to prepare it."""


def hide_accelerators_from_tf() -> None:
  """TensorFlow only feeds data here: keep it off the GPUs/TPUs that JAX uses."""
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


def folder_root(name: str) -> str | None:
  """The folder of a `folder:/path` dataset name, None for a tfds name."""
  return name[len(FOLDER_PREFIX):] if name.startswith(FOLDER_PREFIX) else None


def source_builder(d: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder (or `ImageFolder`) for `config.dataset`, not prepared: its info, nothing read."""
  root = folder_root(d.name)
  if root is not None:
    if not os.path.isdir(root):
      raise DatasetNotFoundError(f'folder dataset {root!r} does not exist: expected {root}/SPLIT/CLASS/IMAGE files')
    splits = [s for s in os.listdir(root) if os.path.isdir(os.path.join(root, s))]
    bad = sorted(s for s in splits if not re.fullmatch(SPLIT_NAME, s))
    if bad:
      renamed = re.sub(r'[^\w-]+', '_', bad[0])
      raise ValueError(f'folder dataset {root!r} has split folder(s) {bad} whose names tfds cannot read back: a split '
                       f'name is letters, digits, _ and - only. Rename the folder (e.g. to {renamed!r}) and set '
                       f'config.dataset.train_split / eval_split to match.')
    return tfds.folder_dataset.ImageFolder(root)
  try:
    return tfds.builder(d.name, data_dir=d.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'config.dataset.name={d.name!r} is not a tfds dataset, the bundled '
                               f"'sklearn_digits', or 'folder:/path/to/images'. ({e})") from None


def get_builder(d: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for `config.dataset`, prepared; clear errors when it cannot be."""
  builder = source_builder(d)
  if isinstance(builder, tfds.folder_dataset.ImageFolder):
    return builder
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


def class_names(config: ml_collections.ConfigDict) -> list[str] | None:
  """The network's class names, index by output: the dataset's label names (its `dataset.classes`
  subset, in that order), read from the tfds builder without preparing it. None where the dataset has
  no names or they do not match `config.model.num_classes` (ImageNet's are WordNet ids, n01440764...)."""
  d = config.dataset
  try:
    builder = source_builder(d)
  except DatasetNotFoundError:
    return None
  names = list(builder.info.features['label'].names)
  if d.classes:
    names = [names[c] for c in d.classes if 0 <= c < len(names)]
  return names if len(names) == config.model.num_classes else None
