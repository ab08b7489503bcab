"""Top-5 classes of images under a checkpoint: `python -m zfnet_jax.predict --config CFG --workdir DIR IMAGE...`.

An IMAGE is an image file (PNG, JPEG, GIF, BMP), preprocessed as evaluation does (short side to
`config.input.resize_size`, centre `image_size` crop, the config's normalisation), or a `.npy` float32
array `[image_size, image_size, in_channels]` taken as an already preprocessed network input. Class names
are the dataset's label names where its tfds builder has them (ImageNet's are WordNet ids, n01440764...).

  python -m zfnet_jax.predict --config configs/digits.py --workdir runs/digits digit.png --logits-out logits.npy
"""
from __future__ import annotations


import jax
import ml_collections
import numpy as np
from absl import app, flags

from zfnet_jax import cli, config_lib
from zfnet_jax.data import inputs, sources
from zfnet_jax.model import inference
from zfnet_jax.training import checkpointing

TOP_K = 5


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> tuple[np.ndarray, int]:
  """`(logits [N, num_classes], checkpoint step)` of the latest checkpoint of `workdir` for the inputs at `paths`."""
  sources.hide_accelerators_from_tf()
  inputs = np.stack([inputs.load_input(p, config) for p in paths])
  model, params, step = checkpointing.load_params(config, workdir)
  logits = jax.jit(lambda p, x: {'logits': model.apply({'params': p}, x)})
  n = config.eval_batch_size
  batches = ({'image': inputs[i:i + n], 'mask': np.ones(len(inputs[i:i + n]))} for i in range(0, len(inputs), n))
  return inference.collect(logits, params, batches)['logits'], step


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
  logits, step = predict(FLAGS.config, FLAGS.workdir, paths)
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
