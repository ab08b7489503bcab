"""Top-5 classes of images under a checkpoint: `python -m zfnet_jax.predict --config CFG --workdir DIR IMAGE...`.

An IMAGE is an image file (PNG, JPEG, GIF, BMP), preprocessed as evaluation does (short side to
`config.input.resize_size`, centre `image_size` crop, the config's normalisation), or a `.npy` float32
array `[image_size, image_size, in_channels]` taken as an already preprocessed network input. Class names
are the dataset's label names where its tfds builder has them (ImageNet's are WordNet ids, n01440764...).

  python -m zfnet_jax.predict --config configs/digits.py --workdir runs/digits digit.png --logits-out logits.npy
"""
from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from zfnet_jax import cli, config_lib
from zfnet_jax.data import sources
from zfnet_jax.training import evaluation

TOP_K = 5


def top_k_lines(logits: np.ndarray, names: list[str] | None, k: int = TOP_K) -> list[str]:
  """`[K]` logits of one input -> one line per class of the top k: rank, probability, index, name."""
  probs = np.asarray(jax.nn.softmax(logits))
  best = np.argsort(-probs, kind='stable')[:k]
  return [f'  {rank}. {probs[c]:.4f}  {c:4d}' + (f'  {names[c]}' if names else '')
          for rank, c in enumerate(best, 1)]


def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more IMAGE files or preprocessed .npy arrays after the flags')
  FLAGS = flags.FLAGS
  logits, step = evaluation.predict_files(FLAGS.config, FLAGS.workdir, paths)
  names = sources.class_names(FLAGS.config)
  print(f'Checkpoint step {step} of {FLAGS.workdir}; top-{min(TOP_K, logits.shape[1])} (probability, class):')
  for path, row in zip(paths, logits):
    print('\n'.join([path] + top_k_lines(row, names)))
  out = FLAGS['logits-out'].value
  if out:
    np.save(out, logits)
    print(f'Logits {list(logits.shape)} -> {out}')


def define_flags() -> None:
  config_lib.define_config_flag('The config the checkpoint was trained (or imported) with.')
  flags.DEFINE_string('workdir', None, 'The workdir whose latest checkpoint predicts.', required=True)
  flags.DEFINE_string('logits-out', None, 'Also save the raw logits [N, num_classes] to this .npy file.')


if __name__ == '__main__':
  cli.run(main, define_flags, takes_arguments=True)
