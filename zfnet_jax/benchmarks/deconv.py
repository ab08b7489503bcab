"""`deconv`: the deconvnet's projections of one synthetic image through random weights, one record per conv layer.

The strongest activation of every feature map of the layer, all projected in one call of
`deconvnet.project_patches` (chunks of 16) after one recorded forward pass. The reference (Captum's
`NeuronDeconvolution` on a PyTorch ZFNet, one call per activation) is outside the package: docs/PERFORMANCE.md.
"""
from __future__ import annotations

import functools
import statistics

import jax
import ml_collections

from zfnet_jax.benchmarks import harness
from zfnet_jax.interpret import deconvnet
from zfnet_jax.model import network, receptive_field

CHUNK = 16  # projections per `lax.map` step, as the analyses run them


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """Per layer: `batch` and `images_per_s` count projections; `projections_per_s` includes the shared forward
  pass (`forward_s`). XLA's cost analysis counts a `lax.map` body once, so FLOPs come from the same
  projection compiled (not run) as a single chunk."""
  model = network.create_model(config)
  arch = model.arch
  params = harness.random_params(model, config)
  image = jax.device_put(harness.synthetic_images(config, 1))
  forward = jax.jit(functools.partial(deconvnet.record, model)).lower(params, image).compile()
  forward_s = statistics.median(harness.time_steps(lambda: jax.block_until_ready(forward(params, image)),
                                                   options.warmup, options.steps).wall)
  recording = forward(params, image)
  records = []
  for spec in arch.convs:
    seeds = deconvnet.strongest(recording, spec.layer)
    count = len(seeds.value)
    project = lambda chunk, layer=spec.layer: jax.jit(
        lambda p, switches, s: deconvnet.project_patches(arch, p, switches, layer, s, chunk))
    compiled, compile_s = harness.compile_timed(project(CHUNK), params, recording.switches, seeds)
    flops = harness.step_flops(project(count).lower(params, recording.switches, seeds).compile())
    times = harness.time_steps(lambda: jax.block_until_ready(compiled(params, recording.switches, seeds)),
                               options.warmup, options.steps)
    records.append(harness.record(
        options, config, 'deconv', count, times, flops, compile_s=compile_s, layer=spec.layer,
        receptive_field=receptive_field.nominal(arch, spec.layer)[0], forward_s=forward_s,
        projections_per_s=count / (statistics.median(times.wall) + forward_s)))
  return records
