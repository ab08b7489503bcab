"""Top-5 classes of images under a checkpoint: `python -m zfnet_jax.predict --config CFG --workdir DIR IMAGE...`.

An IMAGE is an image file (PNG, JPEG, GIF, BMP), preprocessed as evaluation does (short side to
`config.input.resize_size`, centre `image_size` crop, the config's normalisation), or a `.npy` float32
array `[image_size, image_size, in_channels]` taken as an already preprocessed network input. Class names
are the dataset's label names where its tfds builder has them (ImageNet's are WordNet ids, n01440764...).

  python -m zfnet_jax.predict --config configs/digits.py --workdir runs/digits digit.png --logits-out logits.npy
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from zfnet_jax import checkpointing, config_lib, input_pipeline

TOP_K = 5


def class_names(config: ml_collections.ConfigDict) -> list[str] | None:
  """The dataset's label names, read from its tfds builder without preparing it; None where it has none."""
  d = config.dataset
  if d.name.startswith(input_pipeline.FOLDER_PREFIX):
    root = d.name[len(input_pipeline.FOLDER_PREFIX):]
    if not os.path.isdir(root):
      return None
    builder = tfds.folder_dataset.ImageFolder(root)
  else:
    try:
      builder = tfds.builder(d.name, data_dir=d.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      return None
  names = builder.info.features['label'].names
  return names if len(names) == config.model.num_classes else None


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> tuple[np.ndarray, int]:
  """`(logits [N, num_classes], checkpoint step)` of the latest checkpoint of `workdir` for the inputs at `paths`."""
  input_pipeline.hide_accelerators_from_tf()
  inputs = np.stack([input_pipeline.load_input(p, config) for p in paths])
  model, params, step = checkpointing.load_params(config, workdir)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  n = config.eval_batch_size
  logits = [np.asarray(forward(params, inputs[i:i + n])) for i in range(0, len(inputs), n)]
  return np.concatenate(logits), step


def top_k_lines(logits: np.ndarray, names: list[str] | None, k: int = TOP_K) -> list[str]:
  """`[K]` logits of one input -> one line per class of the top k: rank, probability, index, name."""
  probs = np.asarray(jax.nn.softmax(logits))
  best = np.argsort(-probs, kind='stable')[:k]
  return [f'  {rank}. {probs[c]:.4f}  {c:4d}' + (f'  {names[c]}' if names else '')
          for rank, c in enumerate(best, 1)]


def main(argv: list[str]) -> None:
  from absl import app, flags, logging
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more IMAGE files or preprocessed .npy arrays after the flags')
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  logits, step = predict(FLAGS.config, FLAGS.workdir, paths)
  names = class_names(FLAGS.config)
  print(f'Checkpoint step {step} of {FLAGS.workdir}; top-{min(TOP_K, logits.shape[1])} (probability, class):')
  for path, row in zip(paths, logits):
    print('\n'.join([path] + top_k_lines(row, names)))
  out = FLAGS['logits-out'].value
  if out:
    np.save(out, logits)
    print(f'Logits {list(logits.shape)} -> {out}')


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'The config the checkpoint was trained (or imported) with.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The workdir whose latest checkpoint predicts.', required=True)
  flags.DEFINE_string('logits-out', None, 'Also save the raw logits [N, num_classes] to this .npy file.')
  flags.mark_flag_as_required('config')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
