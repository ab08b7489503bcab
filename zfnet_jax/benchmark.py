"""Benchmarks: `python -m zfnet_jax.benchmark train|infer|deconv|occlusion|report|pageload|input|attribute|featurevis`.

Each subcommand prints one JSON line per measurement on stdout: config, what, batch, devices, dtype,
images/s, median step time (after warm-up and compilation), achieved FLOP/s (XLA's cost analysis of the
compiled step divided by the step time), peak memory, jax version and date. `train` and `infer` time the
jitted train and eval steps, `deconv` and `occlusion` the deconvnet's projections and Fig. 7's occlusion
maps of one image, `report` the report's layer pages, `pageload` a built report's pages in headless
Chromium (`--site DIR [--screenshot PNG]`), `input` the training input beside a plain tf.data pipeline
(`--start_step N` to time a resume), `attribute` each attribution method beside Captum's (`--batch B` images
per call), `featurevis` feature visualisation's units x optimisation steps per second on layer 5 (`--units U
--steps N`: here `--steps` counts the optimisation steps of one timed call). `device` is what a GPU or TPU host
measures, part by part (`--parts devices,train,profile,maxpool,interpret,input`; `scripts/device_check.sh` runs
each under its own time budget). What each measures and against what: `zfnet_jax/benchmarks/`. Results and how
to read them: `docs/PERFORMANCE.md`.

  python -m zfnet_jax.benchmark train --config configs/default.py --config.batch_size=32 --steps 5
  python -m zfnet_jax.benchmark featurevis --config configs/default.py --units 16 --steps 32
  python -m zfnet_jax.benchmark device --config configs/default.py --config.batch_size=256 --parts train
"""
from __future__ import annotations

import json

from absl import flags

from zfnet_jax import cli, config_lib
from zfnet_jax.benchmarks import BENCHMARKS, MEASUREMENTS, Options


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise SystemExit(f'usage: python -m zfnet_jax.benchmark {"|".join(MEASUREMENTS)} --config CFG '
                     f'[--config.batch_size=32] [--steps N], or device --config CFG [--parts P] (what a GPU or TPU '
                     f'host measures: scripts/device_check.sh); got {argv[1:]}')
  FLAGS = flags.FLAGS
  options = Options(config_path=FLAGS['config'].config_filename, steps=FLAGS.steps, warmup=FLAGS.warmup,
                    images=FLAGS.images, site=FLAGS.site or '', screenshot=FLAGS.screenshot or '',
                    start_step=FLAGS.start_step, parts=FLAGS.parts or '', batches=FLAGS.batches or '',
                    peak_tflops=FLAGS.peak_tflops or '', profile_dir=FLAGS.profile_dir or '', units=FLAGS.units,
                    batch=FLAGS.batch)
  for line in BENCHMARKS[argv[1]](FLAGS.config, options):
    print(json.dumps(line), flush=True)


def define_flags() -> None:
  config_lib.define_config_flag('A config file in configs/, e.g. configs/default.py.')
  flags.DEFINE_integer('steps', Options.steps, 'Timed steps; the median step time is reported.')
  flags.DEFINE_integer('warmup', Options.warmup, 'Untimed steps after compilation.')
  flags.DEFINE_integer('images', Options.images, 'report: synthetic images for the top-9 pass.')
  flags.DEFINE_string('site', None, 'pageload: a folder written by python -m zfnet_jax.visualize report.')
  flags.DEFINE_string('screenshot', None, 'pageload: save a screenshot of the largest layer page to this PNG.')
  flags.DEFINE_integer('start_step', Options.start_step, 'input: start the training input at this step.')
  flags.DEFINE_string('parts', None, 'device: the parts to run, comma-separated (default all, in order).')
  flags.DEFINE_string('batches', None, 'device: train/infer batch sizes, comma-separated (default: config.batch_size '
                      'doubled while images/s grows).')
  flags.DEFINE_string('peak_tflops', None, "device: one device's peak TFLOP/s, BF16[,F32], for a device kind the "
                      'peak table lacks.')
  flags.DEFINE_string('profile_dir', None, 'device: where the profile part writes its trace.')
  flags.DEFINE_integer('units', Options.units, 'featurevis: the units of layer 5 optimised together.')
  flags.DEFINE_integer('batch', Options.batch, 'attribute: images (each with its target) per call; maps/s = batch / '
                       'time per call.')


if __name__ == '__main__':
  cli.run(main, define_flags, takes_arguments=True)
