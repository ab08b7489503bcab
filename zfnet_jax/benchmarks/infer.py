"""`infer`: the jitted eval step of `evaluation.jit_eval_step` (forward pass, loss, top-1/top-5) on synthetic
batches already on the devices, normalised inside the step as in evaluation. One record; the reference (a plain
PyTorch ZFNet) is outside the package: docs/PERFORMANCE.md.
"""
from __future__ import annotations

import jax
import ml_collections

from zfnet_jax import parallel
from zfnet_jax.benchmarks import harness
from zfnet_jax.data import augment
from zfnet_jax.model import network
from zfnet_jax.training import evaluation


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """One record of `config.batch_size` images per step, with `compile_s`."""
  mesh = parallel.make_mesh()
  model = network.create_model(config)
  params = harness.random_params(model, config)
  batch = harness.synthetic_batch(mesh, config, config.batch_size)
  eval_fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, harness.synthetic_pixel_mean(config)))
  compiled, compile_s = harness.compile_timed(eval_fn, params, batch)
  times = harness.time_steps(lambda: jax.block_until_ready(compiled(params, batch)), options.warmup, options.steps)
  return [harness.record(options, config, 'infer', config.batch_size, times, harness.step_flops(compiled),
                         compile_s=compile_s)]
