"""One module per measurement of `python -m zfnet_jax.benchmark`, each beside its reference, on one harness.

`harness` holds what they share (options, timing, the record's fields, FLOPs, peak memory, synthetic
inputs). Each measurement module is named after its subcommand and has `run(config, options) -> records`:
`train`, `infer`, `deconv`, `occlusion`, `attribute` (jitted steps on synthetic data), `featurevis` (feature
visualisation's optimisation steps), `report` (the report's layer pages against the top-9 job), `pageload` (a
built report in headless Chromium) and `input` (Grain beside a plain tf.data pipeline); `device` runs them, and
what else a GPU or TPU host must measure, in parts (`scripts/device_check.sh`). `BENCHMARKS` maps each subcommand
to its `run`, importing the module on the first call, so a measurement loads only what it needs (`input`'s
processes: not the training or interpret code; `train`: no TensorFlow).
"""
from __future__ import annotations

import importlib
from typing import Iterable

import ml_collections

from zfnet_jax.benchmarks.harness import Benchmark, Options, Record


def _run_of(name: str) -> Benchmark:
  def run(config: ml_collections.ConfigDict, options: Options) -> Iterable[Record]:
    return importlib.import_module(f'{__name__}.{name}').run(config, options)
  run.__doc__ = f'`zfnet_jax.benchmarks.{name}.run`, imported on the first call.'
  return run


MEASUREMENTS = ('train', 'infer', 'deconv', 'occlusion', 'report', 'pageload', 'input', 'attribute', 'featurevis')
BENCHMARKS: dict[str, Benchmark] = {name: _run_of(name) for name in (*MEASUREMENTS, 'device')}

__all__ = ['BENCHMARKS', 'MEASUREMENTS', 'Options']
