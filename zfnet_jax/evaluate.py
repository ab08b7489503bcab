"""Evaluation of a checkpoint over a whole split: `python -m zfnet_jax.evaluate --config CFG --workdir DIR`.

`--crops 1` scores the centre crop (as training's evaluation does); `--crops 10` the paper's ten test crops,
the four corners and the centre of the resized square, each also mirrored, averaging the ten softmaxes.
Every example of `config.dataset.eval_split` counts exactly once. Prints top-1/top-5 accuracy (and error,
as the paper reports it) and the loss, and writes them to `DIR/eval.json` with the number of examples,
the crop mode and the checkpoint step (the latest of `DIR/checkpoints`).

  python -m zfnet_jax.evaluate --config configs/digits.py --workdir runs/digits --crops 10
"""
from __future__ import annotations

import os

from absl import flags

from zfnet_jax import cli, config_lib
from zfnet_jax.training import evaluation


def summary(r: dict) -> str:
  """`eval.json`'s record in one line."""
  return (f'{r["dataset"]} {r["split"]}, {r["num_examples"]} examples, {r["crops"]} crop(s), checkpoint step '
          f'{r["checkpoint_step"]}: top-1 {r["top1"]:.2%} (error {1 - r["top1"]:.2%}), top-5 {r["top5"]:.2%} '
          f'(error {1 - r["top5"]:.2%}), loss {r["loss"]:.4f}')


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  try:
    r = evaluation.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, int(FLAGS.crops))
  except evaluation.ResultNotSavedError as e:  # the result first, then the error
    print(summary(e.record), flush=True)
    raise
  print(f'{summary(r)} -> {os.path.join(FLAGS.workdir, "eval.json")}')


def define_flags() -> None:
  config_lib.define_config_flag('The config the checkpoint was trained (or imported) with.')
  flags.DEFINE_string('workdir', None, 'The workdir whose latest checkpoint is evaluated; eval.json '
                      'goes here.', required=True)
  flags.DEFINE_enum('crops', '1', ['1', '10'], 'Centre crop (1) or the paper\'s 10 crops, softmax averaged.')


if __name__ == '__main__':
  cli.run(main, define_flags)
