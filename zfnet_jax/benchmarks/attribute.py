"""`attribute`: each attribution method's maps of synthetic images through random weights, per second.

One record per method of `attribution.METHODS` (`--batch` images per call, default 1, each with the class logit 0
as target; integrated gradients with 32 steps, SmoothGrad with 16 samples, Grad-CAM at its default layer), jitted
once, median of `--steps` calls; `maps_per_s` is the batch over the median time per call. With
`ZFNET_REFERENCE_PYTHON` naming a Python that has torch and captum (a venv of its own, never a dependency),
the same run also times Captum's same method on the plain PyTorch ZFNet (`scripts/reference_attribution.py`,
the same batch in one call) and adds `captum_maps_per_s` and `ratio` to each record.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess

import jax
import jax.numpy as jnp
import ml_collections

from zfnet_jax.benchmarks import harness
from zfnet_jax.interpret import attribution
from zfnet_jax.model import network

STEPS, SAMPLES = 32, 16
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'scripts',
                         'reference_attribution.py')


def _reference(options: harness.Options) -> dict:
  python = os.environ.get('ZFNET_REFERENCE_PYTHON')
  if not python:
    return {}
  done = subprocess.run([python, REFERENCE, '--steps', str(STEPS), '--samples', str(SAMPLES), '--runs',
                         str(options.steps), '--batch', str(options.batch)],
                        check=True, capture_output=True, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  model = network.create_model(config)
  arch = model.arch
  params = harness.random_params(model, config)
  image = jax.device_put(harness.synthetic_images(config, options.batch))
  targets = attribution.Targets(*(jnp.zeros((options.batch,), jnp.int32) for _ in range(3)))
  records = []
  for method in attribution.METHODS:
    fn = jax.jit(lambda p, x, t, method=method: attribution.attribute(arch, p, x, t, 'logits', method, steps=STEPS,
                                                                      samples=SAMPLES))
    compiled, compile_s = harness.compile_timed(fn, params, image, targets)
    flops = harness.step_flops(compiled)
    times = harness.time_steps(lambda: jax.block_until_ready(compiled(params, image, targets)), options.warmup,
                               options.steps)
    records.append(harness.record(options, config, 'attribute', options.batch, times, flops, compile_s=compile_s,
                                  method=method, maps_per_s=options.batch / statistics.median(times.wall)))
  reference = _reference(options)
  for r in records:
    if r['method'] in reference:
      r.update(captum_maps_per_s=reference[r['method']], ratio=r['maps_per_s'] / reference[r['method']],
               reference_threads=reference['threads'])
  return records
