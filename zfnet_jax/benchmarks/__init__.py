"""One module per measurement of `python -m zfnet_jax.benchmark`, each beside its reference, on one harness.

`harness` holds what they share (options, timing, the record's fields, FLOPs, peak memory, synthetic
inputs). Each measurement module is named after its subcommand and has `run(config, options) -> records`:
`train`, `infer`, `deconv`, `occlusion` (jitted steps on synthetic data), `report` (the report's layer
pages against the top-9 job), `pageload` (a built report in headless Chromium) and `input` (Grain beside a
plain tf.data pipeline). `BENCHMARKS` maps each subcommand to its `run`.
"""
from zfnet_jax.benchmarks import deconv, infer, input, occlusion, pageload, report, train
from zfnet_jax.benchmarks.harness import Benchmark, Options

BENCHMARKS: dict[str, Benchmark] = {
    'train': train.run, 'infer': infer.run, 'deconv': deconv.run, 'occlusion': occlusion.run, 'report': report.run,
    'pageload': pageload.run, 'input': input.run}

__all__ = ['BENCHMARKS', 'Options']
