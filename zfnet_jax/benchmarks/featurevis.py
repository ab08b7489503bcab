"""`featurevis`: feature visualisation's units x optimisation steps per second, beside lucent's.

`featurevis.optimise` on layer 5 (the channel objective, Lucid's transforms, Adam lr 0.05, random weights) for
channels 0..`--units`-1 (at most the layer's channels), one image each, `--steps` optimisation steps: one untimed
call (it compiles: `first_call_s`), then one timed call of the `--steps` steps (`--warmup` does not apply). The
record's `batch` is the units, its step time the timed call's over `--steps`, so `images_per_s` is units x steps per
second (`units_x_steps_per_s`); no FLOPs (the call is many dispatches of one compiled step, which XLA's cost
analysis does not see). With `ZFNET_REFERENCE_PYTHON` naming a Python that has torch and lucent (a venv of its own,
never a dependency), the same run also times lucent's `render_vis` on the plain PyTorch 224-px ZFNet with the same
units, steps and transforms (`scripts/reference_featurevis.py`) and adds `lucent_units_x_steps_per_s` and `ratio`.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import ml_collections

from zfnet_jax.benchmarks import harness
from zfnet_jax.interpret import featurevis
from zfnet_jax.model import network

LAYER = 5
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'scripts',
                         'reference_featurevis.py')


def _reference(units: int, steps: int) -> dict:
  python = os.environ.get('ZFNET_REFERENCE_PYTHON')
  if not python:
    return {}
  done = subprocess.run([python, REFERENCE, '--units', str(units), '--steps', str(steps)], check=True,
                        capture_output=True, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  model = network.create_model(config)
  params = harness.random_params(model, config)
  pixel_mean = harness.synthetic_pixel_mean(config)
  count, steps = min(options.units, featurevis.check_target(model.arch, LAYER, 'channel')), options.steps
  units = range(count)

  def call() -> featurevis.Result:
    return featurevis.optimise(model, params, config, LAYER, units, steps=steps, pixel_mean=pixel_mean)

  start = time.perf_counter()
  call()
  first_call_s = time.perf_counter() - start  # compiling, then the same work as the timed call
  times = harness.time_steps(call, warmup=0, num_steps=1)
  per_step = harness.Timings([t / steps for t in times.wall], [t / steps for t in times.cpu])
  rate = count / per_step.wall[0]
  record = harness.record(options, config, 'featurevis', count, per_step, 0.0, first_call_s=first_call_s,
                          timed_steps=steps, layer=LAYER, units=count,
                          chunk=featurevis.default_chunk(model.arch, 1), units_x_steps_per_s=rate)
  reference = _reference(count, steps)
  if reference:
    record.update(lucent_units_x_steps_per_s=reference['units_x_steps_per_s'],
                  ratio=rate / reference['units_x_steps_per_s'], reference_threads=reference['threads'])
  return [record]
