"""`python -m zfnet_jax.sweep`: train named variants of one config over seeds; one results table and plot.

  python -m zfnet_jax.sweep --config configs/digits_ablations.py --workdir runs/ablations --seeds 0,1,2

`--variants a,b` runs a subset; `--config.FIELD=VALUE` changes every variant (e.g. `--config.num_epochs=5`).
What a sweep config holds, where each run goes, how re-runs resume and what a row of the results holds:
`zfnet_jax/experiments/sweep.py`.
"""
from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from zfnet_jax import cli, config_lib
from zfnet_jax.experiments import sweep


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  config_path = config_flags.get_config_filename(FLAGS['config'])
  overrides = config_flags.get_override_values(FLAGS['config'])
  seeds = [int(s) for s in FLAGS.seeds.split(',')]
  variants = FLAGS.variants.split(',') if FLAGS.variants else None
  try:
    with cli.exit_when_preempted():  # the finished runs' results are written; the same command resumes
      rows = sweep.run(config_path, FLAGS.workdir, seeds, variants, overrides)
  except sweep.SweepConfigError as e:
    raise SystemExit(f'error: {e}') from None
  for t in sweep.summary(rows):
    print(f'{t["variant"]:>16}: eval top-1 {100 * t["eval_top1_mean"]:.2f} +- {100 * t["eval_top1_std"]:.2f} %, '
          f'train top-1 {100 * t["train_top1_mean"]:.2f} %, {t["params"]:,} params ({t["seeds"]} seed(s))')
  print(f'-> {os.path.join(FLAGS.workdir, "results.csv")}, summary.csv, results.json, results.png')


def define_flags() -> None:
  config_lib.define_config_flag('A sweep config: get_config() and get_variants(), e.g. '
                                'configs/digits_ablations.py.')
  flags.DEFINE_string('workdir', None, 'Runs go to WORKDIR/VARIANT/seed_N; results.csv etc. to WORKDIR.',
                      required=True)
  flags.DEFINE_string('seeds', '0', 'Comma-separated config.seed values, e.g. 0,1,2.')
  flags.DEFINE_string('variants', '', 'Comma-separated variant names to run (default: all).')


if __name__ == '__main__':
  cli.run(main, define_flags)
