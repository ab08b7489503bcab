"""`occlusion`: Fig. 7's occlusion maps (`occlusion.occlusion`) of one synthetic image through random weights.

Fig. 7's default square (`occlusion.square`: side image_size / 7, 32 px at 224, stride half the side), all
three maps (class 0's probability), positions in chunks of 16. One record; `batch` is the one image,
`positions` the squares. The reference (Captum's `Occlusion` on a PyTorch ZFNet) is outside the package:
docs/PERFORMANCE.md.
"""
from __future__ import annotations

import functools
import statistics

import jax
import ml_collections

from zfnet_jax.benchmarks import harness
from zfnet_jax.interpret import occlusion
from zfnet_jax.model import network

CHUNK = 16  # occluded copies per forward pass


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """One record with `window`, `stride`, `positions` and `seconds_per_image`. FLOPs as for `deconv`: from the
  computation compiled (not run) with all positions in one chunk."""
  model = network.create_model(config)
  params = harness.random_params(model, config)
  image = jax.device_put(harness.synthetic_images(config, 1)[0])
  size, stride = occlusion.square(config.model.image_size)
  positions = len(range(0, config.model.image_size - size + 1, stride)) ** 2
  occlude = lambda chunk: jax.jit(functools.partial(occlusion.occlusion, model, size=size, stride=stride, chunk=chunk))
  compiled, compile_s = harness.compile_timed(occlude(CHUNK), params, image, 0)
  flops = harness.step_flops(occlude(positions).lower(params, image, 0).compile())
  times = harness.time_steps(lambda: jax.block_until_ready(compiled(params, image, 0)), options.warmup, options.steps)
  return [harness.record(options, config, 'occlusion', 1, times, flops, compile_s=compile_s, window=size,
                         stride=stride, positions=positions, seconds_per_image=statistics.median(times.wall))]
