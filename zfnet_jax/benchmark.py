"""Throughput benchmarks: `python -m zfnet_jax.benchmark train|infer|deconv|occlusion|input --config CFG`.

Each subcommand prints one JSON line per measurement on stdout: config, what, batch, devices, dtype,
images/s, median step time (after warm-up and compilation), achieved FLOP/s (XLA's cost analysis of the
compiled step divided by the step time), peak memory (the device's `memory_stats()` where it has them,
else the process's maximum resident set), jax version and date. The data are synthetic arrays already
on the devices, so only the step itself is timed. `train` times the jitted train step of
`steps.jit_steps` (SGD with momentum, filter renormalisation, dropout); `infer` the eval step (forward
pass, loss and top-k); `deconv` and `occlusion` the deconvnet's projections and Fig. 7's occlusion maps
of one image; `report` the report's layer pages (top-9 job, then sprites), `pageload` a built report's
pages in headless Chromium, and `input` the training input on the host (`benchmark_input`: Grain over the
prepared squares beside a plain tf.data pipeline, `--start_step N` to time a resume). Results and how to
read them: `docs/PERFORMANCE.md`.

  python -m zfnet_jax.benchmark train --config configs/default.py --config.batch_size=32 --steps 5

A subcommand is a function `(config, options) -> list of records` in `BENCHMARKS`; records start from
`record(...)` so every line has the same fields.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from zfnet_jax import config_lib, parallel
from zfnet_jax.interpret import deconvnet, occlusion
from zfnet_jax.model import network, receptive_field
from zfnet_jax.data import augment, pipeline, sources, squares
from zfnet_jax.training import evaluation, optim, steps


@dataclasses.dataclass(frozen=True)
class Options:
  """What every subcommand is given besides the config."""
  config_path: str
  steps: int = 5  # timed steps; the median is reported
  warmup: int = 2  # untimed steps after compilation
  images: int = 1000  # report: synthetic images for the top-9 pass
  site: str = ''  # pageload: a folder `visualize report` wrote
  screenshot: str = ''  # pageload: also save a screenshot of the largest layer page here
  start_step: int = 0  # `input`: the step the iterator starts at (a resume)


def synthetic_batch(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0) -> parallel.Batch:
  """Random uint8 squares `image` `[B, R, R, C]` (as the input pipeline delivers them), `label` `[B]` and
  `mask` `[B]` (all ones), sharded over the mesh."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if batch_size < 1 or batch_size % n_dev:
    raise ValueError(f'batch size {batch_size} must be a positive multiple of the {n_dev} devices: '
                     f'e.g. --config.batch_size={max(1, batch_size // n_dev) * n_dev}')
  m, local = config.model, batch_size // n_proc
  rng = np.random.default_rng(seed + jax.process_index())
  r = config.input.resize_size
  host = {'image': rng.integers(0, 256, (local, r, r, m.in_channels), np.uint8),
          'label': rng.integers(0, m.num_classes, (local,), np.int32),
          'mask': np.ones((local,), np.int32)}
  return jax.block_until_ready(parallel.global_batch(mesh, host))


def _synthetic_pixel_mean(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """A stand-in mean image for `pixel_mean` normalisation (same cost as the real one)."""
  r, c = config.input.resize_size, config.model.in_channels
  return np.full((r, r, c), 117.0, np.float32) if config.input.normalization == 'pixel_mean' else None


def step_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled function, from XLA's cost analysis (0 where it has none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def peak_memory() -> tuple[int, str]:
  """`(bytes, source)`: the largest device peak where devices report one, else the process's max RSS."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  if peaks:
    return int(max(peaks)), 'device_peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process_max_rss'


@dataclasses.dataclass(frozen=True)
class Timings:
  """Wall-clock and process CPU seconds of each timed step."""
  wall: list[float]
  cpu: list[float]


def time_steps(step: Callable[[], Any], warmup: int, num_steps: int) -> Timings:
  """Times each of `num_steps` calls of `step` (which must block until its results are ready).

  Process CPU time is recorded too: on a shared machine, CPU seconds per step well below
  `wall * cores` mean the step was waiting for cores that other processes held.
  """
  if num_steps < 1:
    raise ValueError(f'--steps must be at least 1, got {num_steps}')
  for _ in range(warmup):
    step()
  wall, cpu = [], []
  for _ in range(num_steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return Timings(wall, cpu)


def record(options: Options, config: ml_collections.ConfigDict, what: str, batch: int, times: Timings,
           flops: float, **extra: Any) -> dict[str, Any]:
  """One measurement: the fields every line of every subcommand has, then `extra`."""
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
      'jax': jax.__version__, 'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def benchmark_train(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """The jitted train step of `steps.jit_steps` (forward, backward, SGD momentum, filter renormalisation)."""
  mesh = parallel.make_mesh()
  model = network.create_model(config)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=1000, num_steps=1000 * config.num_epochs)
  tx = optim.create_optimizer(config.optim, schedule)
  init_fn, train_fn = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                      config.skip_nonfinite_steps,
                                      inputs=augment.train_inputs_fn(config, _synthetic_pixel_mean(config)))
  state = init_fn(jax.random.key(config.seed))
  batch = synthetic_batch(mesh, config, config.batch_size)
  batch = {k: batch[k] for k in ('image', 'label')}
  start = time.perf_counter()
  compiled = train_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)  # the state is donated, as in training
    jax.block_until_ready((state, metrics))

  times = time_steps(step, options.warmup, options.steps)
  return [record(options, config, 'train', config.batch_size, times, step_flops(compiled), compile_s=compile_s)]


def benchmark_infer(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """The jitted eval step of `evaluation.jit_eval_step` (forward pass, loss, top-1/top-5), at `batch_size`."""
  mesh = parallel.make_mesh()
  model = network.create_model(config)
  params = jax.jit(network.init_params, static_argnums=0)(model, jax.random.key(config.seed))
  batch = synthetic_batch(mesh, config, config.batch_size)
  eval_fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, _synthetic_pixel_mean(config)))
  start = time.perf_counter()
  compiled = eval_fn.lower(params, batch).compile()
  compile_s = time.perf_counter() - start
  times = time_steps(lambda: jax.block_until_ready(compiled(params, batch)), options.warmup, options.steps)
  return [record(options, config, 'infer', config.batch_size, times, step_flops(compiled),
                 compile_s=compile_s)]


def _synthetic_image(config: ml_collections.ConfigDict, seed: int = 0) -> jax.Array:
  m = config.model
  return jax.device_put(np.random.default_rng(seed).standard_normal((m.image_size, m.image_size, m.in_channels),
                                                                    np.float32))


def benchmark_deconv(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """Deconvnet projections of one image, one record per conv layer: the strongest activation of every
  feature map, all projected in one call of `deconvnet.project_patches` after one recorded forward pass
  (random weights). `batch` and `images_per_s` count projections; `projections_per_s` includes the
  shared forward pass (`forward_s`). XLA's cost analysis counts a `lax.map` body once, so FLOPs come from
  the same projection compiled (not run) as a single chunk."""
  model = network.create_model(config)
  arch = model.arch
  params = jax.jit(network.init_params, static_argnums=0)(model, jax.random.key(config.seed))
  image = _synthetic_image(config)[None]
  forward = jax.jit(functools.partial(deconvnet.record, model)).lower(params, image).compile()
  forward_s = statistics.median(time_steps(lambda: jax.block_until_ready(forward(params, image)),
                                           options.warmup, options.steps).wall)
  recording = forward(params, image)
  records = []
  for spec in arch.convs:
    seeds = deconvnet.strongest(recording, spec.layer)
    count = len(seeds.value)
    project = lambda chunk, layer=spec.layer: jax.jit(  # noqa: E731
        lambda p, switches, s: deconvnet.project_patches(arch, p, switches, layer, s, chunk))
    start = time.perf_counter()
    compiled = project(16).lower(params, recording.switches, seeds).compile()
    compile_s = time.perf_counter() - start
    flops = step_flops(project(count).lower(params, recording.switches, seeds).compile())
    times = time_steps(lambda: jax.block_until_ready(compiled(params, recording.switches, seeds)), options.warmup,
                       options.steps)
    records.append(record(options, config, 'deconv', count, times, flops, compile_s=compile_s, layer=spec.layer,
                          receptive_field=receptive_field.nominal(arch, spec.layer)[0], forward_s=forward_s,
                          projections_per_s=count / (statistics.median(times.wall) + forward_s)))
  return records


def benchmark_occlusion(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """`occlusion.occlusion` of one image (random weights): a grey square of side image_size // 7 (32 px
  at 224) at stride side // 2, all three maps of Fig. 7; `batch` is one image, `positions` the squares.
  FLOPs as for `deconv`: from the computation compiled with all positions in one chunk."""
  model = network.create_model(config)
  params = jax.jit(network.init_params, static_argnums=0)(model, jax.random.key(config.seed))
  image = _synthetic_image(config)
  size = max(1, config.model.image_size // 7)
  stride = max(1, size // 2)
  positions = len(range(0, config.model.image_size - size + 1, stride)) ** 2
  occlude = lambda chunk: jax.jit(  # noqa: E731
      functools.partial(occlusion.occlusion, model, size=size, stride=stride, chunk=chunk))
  start = time.perf_counter()
  compiled = occlude(16).lower(params, image, 0).compile()
  compile_s = time.perf_counter() - start
  flops = step_flops(occlude(positions).lower(params, image, 0).compile())
  times = time_steps(lambda: jax.block_until_ready(compiled(params, image, 0)), options.warmup, options.steps)
  return [record(options, config, 'occlusion', 1, times, flops, compile_s=compile_s, window=size, stride=stride,
                 positions=positions, seconds_per_image=statistics.median(times.wall))]


def benchmark_report(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """The report's layer pages (random weights, synthetic images): the top-9 job alone (`stream_topk` of every
  conv layer over `--images` images, then `project_topk` of every unit), then the sprite sheets drawn from it,
  as `report.build` does; one round, compilation included (as a user pays it)."""
  import tempfile
  from zfnet_jax.interpret import report, topk
  model = network.create_model(config)
  params = jax.jit(network.init_params, static_argnums=0)(model, jax.random.key(config.seed))
  batch, layer_numbers = config.eval_batch_size, tuple(c.layer for c in model.arch.convs)
  shape = (batch, config.model.image_size, config.model.image_size, config.model.in_channels)

  def batches():
    rng = np.random.default_rng(0)
    for start in range(0, options.images, batch):
      yield {'image': rng.standard_normal(shape, np.float32),
             'mask': (start + np.arange(batch) < options.images).astype(np.int32)}
  start, cpu = time.perf_counter(), time.process_time()
  tops = topk.stream_topk(model, params, batches(), layer_numbers, k=9)
  jax.block_until_ready(tops)
  streamed = time.perf_counter()
  results = topk.project_topk(model, params, batches(), tops, {n: np.arange(len(t.value)) for n, t in tops.items()})
  projected = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    for n in layer_numbers:
      report.write_layer(out, n, results[n], config, options.images)
  drawn = time.perf_counter()
  total = drawn - start
  return [record(options, config, 'report_layers', batch, Timings([total], [time.process_time() - cpu]), 0.0,
                 images=options.images, units=sum(len(t.value) for t in tops.values()), stream_s=streamed - start,
                 project_s=projected - streamed, top9_job_s=projected - start, sprites_s=drawn - projected,
                 report_layers_s=total, report_over_top9=total / (projected - start))]


def benchmark_pageload(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """Each page of the report in `--site`, opened from file:// in headless Chromium (/usr/bin/chromium, or
  $ZFNET_CHROMIUM) in a fresh context `--steps` times: the load event's time after navigation start
  (images decoded, styles applied). `batch` is the number of units on the page."""
  import os
  from playwright.sync_api import sync_playwright
  if not options.site:
    raise SystemExit('pageload needs --site, a folder written by python -m zfnet_jax.visualize report')
  pages = sorted(f for f in os.listdir(options.site) if f.endswith('.html'))
  records = []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=os.environ.get('ZFNET_CHROMIUM', '/usr/bin/chromium'),
                                args=['--no-sandbox'])
    for name in pages:
      wall, units = [], 0
      for _ in range(options.steps):
        context = browser.new_context(viewport={'width': 1280, 'height': 900})
        page = context.new_page()
        page.goto('file://' + os.path.abspath(os.path.join(options.site, name)), wait_until='load')
        wall.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
        units = page.eval_on_selector_all('section.unit', 'u => u.length')
        context.close()
      bytes_ = sum(os.path.getsize(os.path.join(options.site, f)) for f in os.listdir(options.site)
                   if f.startswith(name[:-5] + '_') or f == name)
      records.append(record(options, config, f'pageload {name}', units, Timings(wall, [0.0] * len(wall)), 0.0,
                            load_s=statistics.median(wall), page_and_sprite_bytes=bytes_))
    if options.screenshot:
      biggest = max((r for r in records if r['what'].startswith('pageload layer')), key=lambda r: r['batch'])
      page = browser.new_page(viewport={'width': 1280, 'height': 900})
      page.goto('file://' + os.path.abspath(os.path.join(options.site, biggest['what'].split()[1])))
      page.screenshot(path=options.screenshot)
    browser.close()
  return records


def measure_input(config: ml_collections.ConfigDict, kind: str, start_step: int, num_steps: int) -> dict[str, Any]:
  """Runs in its own process (so peak RSS is its own): `grain`, this codebase's training input from
  `start_step`, or `tfdata`, the plain tf.data pipeline doing the same work on the original tfds images."""
  host_batch = config.batch_size // jax.process_count()
  if kind == 'grain':
    squares.prepare(config)  # once, before timing
    start, start_cpu = time.perf_counter(), time.process_time()
    batches, _ = pipeline.train_batches(config, start_step)
  else:
    start, start_cpu = time.perf_counter(), time.process_time()
    batches = _tfdata_batches(config, host_batch)
  batch = next(batches)
  first_batch_s = time.perf_counter() - start
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_steps):
    batch = next(batches)
  wall, images = time.perf_counter() - start, num_steps * host_batch
  return {'images_per_s': images / wall, 'cpu_ms_per_image': 1e3 * (time.process_time() - start_cpu) / images,
          'first_batch_s': first_batch_s, 'host_bytes_per_image': sum(v.nbytes for v in batch.values()) / host_batch,
          'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _tfdata_batches(config: ml_collections.ConfigDict, host_batch: int):
  """The reference: tfds records -> decode -> short side R -> centre R square -> random S crop -> flip ->
  minus the channel mean -> float32 batches, all `tf.data.AUTOTUNE`d."""
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415
  sources.hide_accelerators_from_tf()
  r, s, c = config.input.resize_size, config.model.image_size, config.model.in_channels
  ds = sources.get_builder(config.dataset).as_dataset(
      split=config.dataset.train_split, shuffle_files=True, decoders={'image': tfds.decode.SkipDecoding()})
  mean = tf.constant(augment.channel_stats(c)[0], tf.float32)

  def prepare(example):
    image = tf.io.decode_image(example['image'], channels=c, expand_animations=False)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * r / tf.reduce_min(hw)), tf.int32), r)
    image = tf.image.resize(image, new_hw, antialias=True)
    top, left = (new_hw[0] - r) // 2, (new_hw[1] - r) // 2
    image = tf.image.random_crop(image[top:top + r, left:left + r], (s, s, c))
    return {'image': tf.image.random_flip_left_right(image) - mean, 'label': tf.cast(example['label'], tf.int32)}
  ds = ds.repeat().map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(host_batch).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds))


def benchmark_input(config: ml_collections.ConfigDict, options: Options) -> list[dict[str, Any]]:
  """The training input's host side, from `--start_step` on: Grain over the prepared squares (uint8 out),
  and beside it, in the same run, the plain tf.data pipeline on the original tfds images (float32 crops
  out). Each runs in a fresh process; `--steps` batches are timed after the first."""
  results = {}
  for kind in ('grain', 'tfdata'):
    code = ('import json, sys; from zfnet_jax import benchmark; import ml_collections; '
            'c = ml_collections.ConfigDict(json.loads(sys.argv[1])); '
            'print(json.dumps(benchmark.measure_input(c, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))')
    done = subprocess.run([sys.executable, '-c', code, config.to_json(), kind, str(options.start_step),
                           str(options.steps)], capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f'the {kind} input benchmark failed:\n{done.stderr[-3000:]}')
    results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
  ours, ref = results['grain'], results['tfdata']
  return [{'config': options.config_path, 'what': 'input', 'batch': config.batch_size, 'dataset': config.dataset.name,
           'start_step': options.start_step, 'timed_steps': options.steps, **ours,
           'workers': config.input.workers or os.cpu_count(), 'cpu_cores': os.cpu_count(),
           'square_format': config.input.square_format, 'jpeg_quality': config.input.jpeg_quality,
           **{f'tfdata_{k}': v for k, v in ref.items()}, 'ratio_images_per_s': ours['images_per_s'] / ref['images_per_s'],
           'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}]


BENCHMARKS: dict[str, Callable[[ml_collections.ConfigDict, Options], list[dict[str, Any]]]] = {
    'train': benchmark_train,
    'infer': benchmark_infer,
    'deconv': benchmark_deconv,
    'occlusion': benchmark_occlusion,
    'report': benchmark_report,
    'pageload': benchmark_pageload,
    'input': benchmark_input,
}


def main(argv: list[str]) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise SystemExit(f'usage: python -m zfnet_jax.benchmark {"|".join(BENCHMARKS)} --config CFG '
                     f'[--config.batch_size=32] [--steps N]; got {argv[1:]}')
  options = Options(config_path=FLAGS['config'].config_filename, steps=FLAGS.steps, warmup=FLAGS.warmup,
                    images=FLAGS.images, site=FLAGS.site or '', screenshot=FLAGS.screenshot or '',
                    start_step=FLAGS.start_step)
  for line in BENCHMARKS[argv[1]](FLAGS.config, options):
    print(json.dumps(line), flush=True)


def _define_flags() -> None:
  from absl import flags
  config_lib.define_config_flag('A config file in configs/, e.g. configs/default.py.')
  flags.DEFINE_integer('steps', Options.steps, 'Timed steps; the median step time is reported.')
  flags.DEFINE_integer('warmup', Options.warmup, 'Untimed steps after compilation.')
  flags.DEFINE_integer('images', Options.images, 'report: synthetic images for the top-9 pass.')
  flags.DEFINE_string('site', None, 'pageload: a folder written by python -m zfnet_jax.visualize report.')
  flags.DEFINE_string('screenshot', None, 'pageload: save a screenshot of the largest layer page to this PNG.')
  flags.DEFINE_integer('start_step', Options.start_step, '`input`: start the training input at this step.')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
