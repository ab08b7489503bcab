"""`train`: the jitted train step of `steps.jit_steps` on synthetic batches already on the devices.

Forward, backward, SGD with momentum, filter RMS renormalisation, dropout and metrics, on uint8 squares that
the step crops, flips and normalises itself, as in training; the state is donated. One record; the reference
(a plain PyTorch ZFNet) is outside the package: docs/PERFORMANCE.md.
"""
from __future__ import annotations

import contextlib
import os

import jax
import ml_collections

from zfnet_jax import parallel
from zfnet_jax.benchmarks import harness
from zfnet_jax.data import augment
from zfnet_jax.model import network
from zfnet_jax.training import optim, steps

HLO_FILE = 'train_step.hlo.txt'


def run(config: ml_collections.ConfigDict, options: harness.Options, profile_dir: str = '') -> list[harness.Record]:
  """One record of `config.batch_size` images per step, with `compile_s`; with `profile_dir`, the timed steps
  run under `jax.profiler.trace` into it (a Perfetto trace beside TensorBoard's), and the compiled step's HLO
  is written beside them (`train_step.hlo.txt`: what each op of the trace computes)."""
  mesh = parallel.make_mesh()
  model = network.create_model(config)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=1000, num_steps=1000 * config.num_epochs)
  tx = optim.create_optimizer(config.optim, schedule)
  init_fn, train_fn = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                      config.skip_nonfinite_steps,
                                      inputs=augment.train_inputs_fn(config, harness.synthetic_pixel_mean(config)))
  state = init_fn(parallel.device_stream_key(config.seed, 'init', mesh))
  batch = harness.synthetic_batch(mesh, config, config.batch_size)
  batch = {k: batch[k] for k in ('image', 'label')}
  compiled, compile_s = harness.compile_timed(train_fn, state, batch)

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))

  if profile_dir:
    os.makedirs(profile_dir, exist_ok=True)
    with open(os.path.join(profile_dir, HLO_FILE), 'w') as f:
      f.write(compiled.as_text())
  with jax.profiler.trace(profile_dir, create_perfetto_trace=True) if profile_dir else contextlib.nullcontext():
    times = harness.time_steps(step, options.warmup, options.steps)
  return [harness.record(options, config, 'train', config.batch_size, times, harness.step_flops(compiled),
                         compile_s=compile_s)]
