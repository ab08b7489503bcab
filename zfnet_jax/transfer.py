"""`python -m zfnet_jax.transfer`: probe a frozen network's features with the paper's transfer protocol.

The protocol and the classifiers are described in `zfnet_jax/experiments/transfer.py`. Any tfds or folder
dataset can be the target (`--target`), with any subset of its classes (`--target_classes`) and splits
pooled (`--target_splits train,test`). At full scale, e.g. `--config configs/default.py --workdir
runs/zfnet --target caltech101 --target_splits train,test --per_class 30 --test_cap 50 --folds 5`. At
small scale, features learnt on digits 0-4, probed on 5-9:

  python -m zfnet_jax.train --config configs/digits.py --workdir runs/digits_0to4 \\
      --config.dataset.classes=0,1,2,3,4 --config.model.num_classes=5
  python -m zfnet_jax.transfer --config configs/digits.py --workdir runs/digits_0to4 \\
      --config.dataset.classes=0,1,2,3,4 --config.model.num_classes=5 \\
      --target_classes 5,6,7,8,9 --target_splits train,test --per_class 10 --test_cap 50 --folds 5 \\
      --layers 0,1,2,3,4,5,6,7 --classifiers softmax,svm --scratch_steps 300 --out runs/transfer_digits

`--out` gets `results.csv` / `results.json` (one row per layer and classifier, plus `scratch`) and
`results.png` (accuracy against layer).
"""
from __future__ import annotations

import os

from absl import flags

from zfnet_jax import cli, config_lib
from zfnet_jax.experiments import transfer


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  ints = lambda text: [int(v) for v in text.split(',') if v]
  source = FLAGS.config
  target = transfer.target_config(source, FLAGS.target, ints(FLAGS.target_classes), FLAGS.target_data_dir)
  protocol = transfer.Protocol(FLAGS.per_class, FLAGS.folds, FLAGS.test_cap or None, FLAGS.seed)
  with cli.exit_when_preempted():  # a preempted scratch run resumes when the same command runs again
    transfer.run(source, FLAGS.workdir, target, FLAGS.target_splits.split(','), protocol, ints(FLAGS.layers),
                 FLAGS.classifiers.split(','), FLAGS.scratch_steps, FLAGS.out, FLAGS.C)
  print(f'-> {os.path.join(FLAGS.out, "results.csv")}, results.json, results.png')


def define_flags() -> None:
  config_lib.define_config_flag('The config the frozen network was trained with.')
  flags.DEFINE_string('workdir', None, 'The frozen network\'s workdir (its latest checkpoint).', required=True)
  flags.DEFINE_string('out', None, 'Where results.csv, results.json, results.png and scratch runs go.',
                      required=True)
  flags.DEFINE_string('target', None, 'Target dataset: tfds name, sklearn_digits or folder:/path '
                      '(default: the source\'s).')
  flags.DEFINE_string('target_data_dir', None, 'tfds data dir of the target (default: the source\'s).')
  flags.DEFINE_string('target_classes', '', 'Comma-separated target labels to use (default: all).')
  flags.DEFINE_string('target_splits', 'train', 'Comma-separated target splits, pooled before sampling.')
  flags.DEFINE_integer('per_class', 30, 'Training images per class (Caltech-101: 15 or 30).')
  flags.DEFINE_integer('test_cap', 50, 'At most this many test images per class (0: all the rest).')
  flags.DEFINE_integer('folds', 5, 'Random folds to average over.')
  flags.DEFINE_integer('seed', 0, 'Seed of the fold sampling.')
  flags.DEFINE_string('layers', '1,2,3,4,5,6,7', 'Comma-separated layers to probe (0: the input pixels).')
  flags.DEFINE_string('classifiers', 'softmax', 'Comma-separated: softmax, svm.')
  flags.DEFINE_float('C', 1.0, 'Inverse L2 regularisation strength of both classifiers.')
  flags.DEFINE_integer('scratch_steps', 0, 'If > 0: also train the architecture from scratch on each fold\'s '
                       'training images for this many steps (the baseline).')


if __name__ == '__main__':
  cli.run(main, define_flags)
