"""What every measurement shares: options, timing, the record's fields, FLOPs, peak memory, synthetic inputs.

A measurement is a function `(config, options) -> list[Record]`; its records start from `record(...)` so every
line of every subcommand has the same fields. Synthetic data are NumPy's `default_rng(seed)` draws (the
same on every run); weights are `network.init_params` from the config's `init` stream (`parallel.stream_key`).
No TensorFlow or Playwright here: the modules that need them import them.
"""
from __future__ import annotations

import dataclasses
import datetime
import resource
import statistics
import time
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from zfnet_jax import parallel
from zfnet_jax.model import network

Record = dict[str, Any]  # one JSON line


@dataclasses.dataclass(frozen=True)
class Options:
  """What every measurement is given besides the config."""
  config_path: str
  steps: int = 5  # timed steps; the median is reported
  warmup: int = 2  # untimed steps after compilation
  images: int = 1000  # report: synthetic images for the top-9 pass
  site: str = ''  # pageload: a folder `visualize report` wrote
  screenshot: str = ''  # pageload: also save a screenshot of the largest layer page here
  start_step: int = 0  # input: the step the iterator starts at (a resume)
  parts: str = ''  # device: which parts, comma-separated (default all: `device.PARTS`)
  batches: str = ''  # device: train/infer batch sizes, comma-separated (default: doubling while images/s grows)
  peak_tflops: str = ''  # device: one device's peak TFLOP/s, 'BF16[,F32]', where `device.PEAKS` lacks it
  profile_dir: str = ''  # device: where the profile part writes its trace (default: a temporary folder)
  units: int = 16  # featurevis: the units optimised together (`steps`: the optimisation steps)
  batch: int = 1  # attribute: images (and targets) per call

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f'--steps must be at least 1, got {self.steps}')
    if self.warmup < 0:
      raise ValueError(f'--warmup must be at least 0, got {self.warmup}')
    if self.units < 1:
      raise ValueError(f'--units must be at least 1, got {self.units}')
    if self.batch < 1:
      raise ValueError(f'--batch must be at least 1, got {self.batch}')


Benchmark = Callable[[ml_collections.ConfigDict, Options], Iterable[Record]]


@dataclasses.dataclass(frozen=True)
class Timings:
  """Wall-clock and process CPU seconds of each timed step."""
  wall: list[float]
  cpu: list[float]


def time_steps(step: Callable[[], Any], warmup: int, num_steps: int) -> Timings:
  """Times each of `num_steps` calls of `step` (which must block until its results are ready), after `warmup`
  untimed calls.

  Process CPU time is recorded too: on a shared machine, CPU seconds per step well below
  `wall * cores` mean the step was waiting for cores that other processes held.
  """
  for _ in range(warmup):
    step()
  wall, cpu = [], []
  for _ in range(num_steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return Timings(wall, cpu)


def compile_timed(fn: Any, *args: Any) -> tuple[Any, float]:
  """`(compiled, seconds)`: the jitted `fn` lowered for `args` and compiled, and how long that took."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def step_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled function, from XLA's cost analysis (0 where it has none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def process_max_rss() -> int:
  """The process's maximum resident set so far, in bytes (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory() -> tuple[int, str]:
  """`(bytes, source)`: the largest device peak where devices report one, else the process's max RSS."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  if peaks:
    return int(max(peaks)), 'device_peak_bytes_in_use'
  return process_max_rss(), 'process_max_rss'


def utc_now() -> str:
  """The date field of a record: now, UTC, to the second (ISO 8601)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def record(options: Options, config: ml_collections.ConfigDict, what: str, batch: int, times: Timings,
           flops: float, **extra: Any) -> Record:
  """One measurement: the fields every line of every subcommand has, then `extra`. `batch` is what one
  step processes (images, projections, units); rates are per median step."""
  step_time = statistics.median(times.wall)
  memory, memory_source = peak_memory()
  return {
      'config': options.config_path, 'what': what, 'batch': batch, 'devices': jax.device_count(),
      'platform': jax.devices()[0].platform, 'dtype': config.dtype,
      'images_per_s': batch / step_time, 'step_time_s': step_time,
      'step_time_min_s': min(times.wall), 'step_time_max_s': max(times.wall), 'timed_steps': len(times.wall),
      'process_cpu_s_per_step': statistics.median(times.cpu),
      'flops_per_step': flops, 'flops_per_s': flops / step_time,
      'peak_memory_bytes': memory, 'peak_memory_source': memory_source,
      **extra,
      'jax': jax.__version__, 'date': utc_now(),
  }


def synthetic_batch(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0) -> parallel.Batch:
  """Random uint8 squares `image` `[B, R, R, C]` (as the input pipeline delivers them), `label` `[B]` and
  `mask` `[B]` (all ones), sharded over the mesh; each process draws its rows from `seed + process index`."""
  parallel.check_batch_size('batch_size', batch_size, mesh.devices.size)
  m, local = config.model, batch_size // jax.process_count()
  rng = np.random.default_rng(seed + jax.process_index())
  r = config.input.resize_size
  host = {'image': rng.integers(0, 256, (local, r, r, m.in_channels), np.uint8),
          'label': rng.integers(0, m.num_classes, (local,), np.int32),
          'mask': np.ones((local,), np.int32)}
  return jax.block_until_ready(parallel.global_batch(mesh, host))


def synthetic_pixel_mean(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """A stand-in mean image `[R, R, C]` for `pixel_mean` normalisation (the real one's cost, not its values);
  None for the other normalisations, which need none."""
  r, c = config.input.resize_size, config.model.in_channels
  return np.full((r, r, c), 117.0, np.float32) if config.input.normalization == 'pixel_mean' else None


def synthetic_images(config: ml_collections.ConfigDict, count: int, seed: int = 0) -> np.ndarray:
  """`count` standard-normal network inputs, float32 `[count, S, S, C]` (S the model's image size)."""
  m = config.model
  return np.random.default_rng(seed).standard_normal((count, m.image_size, m.image_size, m.in_channels), np.float32)


def random_params(model: network.ConvNet, config: ml_collections.ConfigDict) -> Any:
  """The network's initial weights from the `init` stream of `config.seed` (what the analyses time with)."""
  return jax.jit(network.init_params, static_argnums=0)(model, parallel.stream_key(config.seed, 'init'))
