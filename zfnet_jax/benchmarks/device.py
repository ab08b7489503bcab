"""`device`: everything docs/PERFORMANCE.md asks of a GPU or TPU host, in parts (`scripts/device_check.sh`).

Each part runs in its own process under its own time budget (`--parts NAME`); records stream out as they are
measured, so a part cut off by its budget keeps what it had. The parts, in the script's order:
- `devices`: platform, device kind and count, host cores, the device's peak FLOP/s (`PEAKS`).
- `train`: the jitted train and eval steps (`benchmarks.train`, `benchmarks.infer`) in bfloat16 and float32, at
  each batch of `--batches` (default: `config.batch_size` doubled, while images/s grows by `GROWTH` or more, to
  `MAX_BATCH` or the first out-of-memory), with model-FLOP utilisation: `model_flops_per_image` (the network's
  multiply-adds x 2, x 3 for a train step: forward, input and weight gradients) x images/s over the peak of all
  devices. XLA's own count of the compiled step (`flops_per_step`) is beside it.
- `profile`: a `jax.profiler` trace of a few bfloat16 train steps at the first batch, and the ops that took the
  time (`profile_ops`), for when the utilisation is low.
- `maxpool`: ReLU + max-pool forward and backward at every pool of the network, `layers.max_pool` (gradient
  through its switches, a custom JVP) against `lax.reduce_window`'s (`select_and_scatter`), per dtype.
- `interpret`: the deconvnet, occlusion and report top-9 measurements (and `attribute`, `featurevis` once a
  module of that name is registered in `BENCHMARKS`).
- `input`: the training input on this host's cores (`benchmarks.input`: Grain beside tf.data, then Grain at half
  and twice the default workers) on the ImageNet-format squares the script prepares; the table puts it beside
  the train step's images/s.
`markdown(records)` turns the JSON lines of every part into the table for docs/PERFORMANCE.md.
"""
from __future__ import annotations

import gzip
import glob
import json
import os
import re
import statistics
import tempfile
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from zfnet_jax.benchmarks import harness
from zfnet_jax.model import layers, network

PARTS = ('devices', 'train', 'profile', 'maxpool', 'interpret', 'input')
INTERPRET = ('deconv', 'occlusion', 'report', 'attribute', 'featurevis')
DTYPES = ('bfloat16', 'float32')
GROWTH = 1.05  # keep doubling the batch while images/s grows at least this much
MAX_BATCH = 4096
PROFILE_STEPS = 5

# Dense peak TFLOP/s per device (one GPU, one TPU chip): `(pattern on the lower-case device kind, name, bfloat16,
# float32)`, first match wins. "float32" is what float32 convolutions and dots run at under JAX's default precision
# (docs.jax.dev/en/latest/201/precision.html: "bfloat16 on TPU, TF32 on recent GPUs"): TF32 tensor cores on
# A100/H100/H200 (FP32 without them: A100 19.5, H100/H200 SXM 67), one bfloat16 pass on TPUs. Sparsity-doubled
# datasheet figures are halved.
PEAKS = (
    # NVIDIA H200 Tensor Core GPU datasheet (2024): SXM BF16 1,979 / TF32 989 TFLOPS with sparsity.
    (r'h200 nvl', 'H200 NVL', 835.5, 417.5),  # same datasheet, NVL: BF16 1,671 / TF32 835 with sparsity
    (r'h200', 'H200 SXM', 989.5, 494.5),
    # NVIDIA H100 Tensor Core GPU datasheet: SXM BF16 1,979 / TF32 989; PCIe 1,513 / 756 (with sparsity).
    (r'h100.*pcie', 'H100 PCIe', 756.5, 378.0),
    (r'h100(?!.*nvl)', 'H100 SXM', 989.5, 494.5),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312, TF32 156 (dense), SXM4 and PCIe alike.
    (r'a100', 'A100', 312.0, 156.0),
    # Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): BF16 per chip.
    (r'tpu v4', 'TPU v4', 275.0, 275.0),
    (r'tpu v5 ?(lite|e)', 'TPU v5e', 197.0, 197.0),
    (r'tpu v5p?$', 'TPU v5p', 459.0, 459.0),
    (r'tpu v6 ?(lite|e)', 'TPU v6e', 918.0, 918.0),
)


def peak_tflops(device_kind: str, override: str = '') -> tuple[dict[str, float] | None, str]:
  """`({'bfloat16': T, 'float32': T}, source)`: one device's peak TFLOP/s from `PEAKS`, or `override` ('BF16[,F32]',
  `--peak_tflops`, for devices the table lacks); `(None, 'unknown ...')` when neither has one."""
  if override:
    values = [float(v) for v in override.split(',')]
    if len(values) not in (1, 2) or min(values) <= 0:
      raise ValueError(f'--peak_tflops takes BF16[,F32] TFLOP/s per device, e.g. 989.5,494.5; got {override!r}')
    return {'bfloat16': values[0], 'float32': values[-1]}, '--peak_tflops'
  for pattern, name, bf16, f32 in PEAKS:
    if re.search(pattern, device_kind.lower()):
      return {'bfloat16': bf16, 'float32': f32}, name
  return None, f'unknown device kind {device_kind!r}: pass --peak_tflops=BF16,F32'


def forward_flops(arch: network.Architecture) -> int:
  """Model FLOPs of one image's forward pass: 2 x the multiply-adds of every conv and fully connected layer."""
  flops, size, channels = 0, arch.image_size, arch.in_channels
  for spec in arch.convs:
    conv_out, size = arch.map_sizes()[spec.name]
    flops += 2 * spec.kernel ** 2 * channels * spec.features * conv_out ** 2
    channels = spec.features
  width = size * size * channels
  for _, features in (*arch.fcs, (None, arch.num_classes)):
    flops += 2 * width * features
    width = features
  return flops


def run(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """The records of each part in `options.parts` (comma-separated; default all of `PARTS`), `part` added."""
  parts = [p for p in options.parts.split(',') if p] or list(PARTS)
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'--parts: unknown {unknown}; the parts are {",".join(PARTS)}')
  for part in parts:
    for record in globals()[f'_{part}'](config, options):
      yield {'part': part, **record}


def _devices(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """One record: what this process sees (and the first thing to fail when the accelerator's jax is missing)."""
  device = jax.devices()[0]
  peaks, source = peak_tflops(device.device_kind, options.peak_tflops)
  memory = (device.memory_stats() or {}).get('bytes_limit')
  yield {'what': 'devices', 'platform': device.platform, 'device_kind': device.device_kind,
         'devices': jax.device_count(), 'local_devices': jax.local_device_count(), 'processes': jax.process_count(),
         'device_memory_bytes': memory, 'cpu_cores': os.cpu_count(),
         'peak_bfloat16_tflops': peaks and peaks['bfloat16'], 'peak_float32_tflops': peaks and peaks['float32'],
         'peak_source': source, 'jax': jax.__version__, 'date': harness.utc_now()}


def _batches(config: ml_collections.ConfigDict, options: harness.Options) -> tuple[list[int], bool]:
  """`(batch sizes, whether to stop once images/s stops growing)`."""
  if options.batches:
    return [int(b) for b in options.batches.split(',')], False
  sizes, b = [], config.batch_size
  while b <= max(MAX_BATCH, config.batch_size):
    sizes.append(b)
    b *= 2
  return sizes, True


def _out_of_memory(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'out of memory' in str(error).lower()


def _with_mfu(record: harness.Record, flops_per_image: int, peaks: dict[str, float] | None,
              source: str) -> harness.Record:
  model_flops_per_s = flops_per_image * record['images_per_s']
  peak = peaks and peaks[record['dtype']] * 1e12 * record['devices']
  return {**record, 'device_kind': jax.devices()[0].device_kind, 'model_flops_per_image': flops_per_image,
          'model_flops_per_s': model_flops_per_s, 'peak_flops_per_s': peak, 'peak_source': source,
          'mfu': model_flops_per_s / peak if peak else None}


def _train(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """Train and eval step per batch size, bfloat16 and float32 interleaved so both get the small batches first."""
  from zfnet_jax.benchmarks import infer, train
  peaks, source = peak_tflops(jax.devices()[0].device_kind, options.peak_tflops)
  forward = forward_flops(network.create_model(config).arch)
  sizes, stop_when_flat = _batches(config, options)
  best, active = {}, list(DTYPES)
  for batch in sizes:
    for dtype in list(active):
      c = _with(config, dtype=dtype, batch_size=batch, eval_batch_size=batch)
      try:
        [trained] = train.run(c, options)
        yield _with_mfu(trained, 3 * forward, peaks, source)
        [inferred] = infer.run(c, options)
        yield _with_mfu(inferred, forward, peaks, source)
      except Exception as e:  # noqa: BLE001  (out of memory ends this dtype's ladder; anything else is raised)
        if not _out_of_memory(e):
          raise
        yield {'what': 'train', 'dtype': dtype, 'batch': batch, 'status': 'out_of_memory', 'error': str(e)[:300]}
        active.remove(dtype)
        continue
      if stop_when_flat and trained['images_per_s'] < GROWTH * best.get(dtype, 0.0):
        active.remove(dtype)
      best[dtype] = max(best.get(dtype, 0.0), trained['images_per_s'])


def _with(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with `fields` (dotted names: `**{'input.workers': 4}`) set."""
  c = ml_collections.ConfigDict(config.to_dict())
  for name, value in fields.items():
    *path, last = name.split('.')
    node = c
    for key in path:
      node = node[key]
    node[last] = value
  return c


def _profile(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """`PROFILE_STEPS` bfloat16 train steps at the first batch under `jax.profiler`, the trace in `--profile_dir`
  (default: a temporary folder; TensorBoard's profile tab or Perfetto show it), and the `--steps` (at least 10)
  ops that took the most device time per step."""
  from zfnet_jax.benchmarks import train
  batch = _batches(config, options)[0][0]
  out = options.profile_dir or tempfile.mkdtemp(prefix='zfnet_profile_')
  c = _with(config, dtype='bfloat16', batch_size=batch)
  [record] = train.run(c, harness.Options(config_path=options.config_path, steps=PROFILE_STEPS, warmup=0),
                       profile_dir=out)
  ops, busy = profile_ops(out)
  top = sorted(ops.items(), key=lambda kv: -kv[1])[:max(options.steps, 10)]
  with open(os.path.join(out, train.HLO_FILE)) as f:
    sources = hlo_sources(f.read())
  yield {**record, 'what': 'profile', 'profile_dir': out, 'profiled_steps': PROFILE_STEPS,
         'device_busy_s_per_step': busy / PROFILE_STEPS,
         'top_ops': [{'op': name, 'ms_per_step': 1e3 * s / PROFILE_STEPS, 'share': s / busy,
                      'source': sources.get(name, [])[:3]} for name, s in top]}


def hlo_sources(hlo: str) -> dict[str, list[str]]:
  """`{op name without its .N suffix: [the jax operations it computes (`op_name` metadata), ...]}` of a compiled
  module's text, to say which layer and pass (forward, `transpose(jvp(...))` backward) a profiled op belongs to."""
  sources: dict[str, list[str]] = {}
  for name, op_name in re.findall(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?metadata=\{op_name="([^"]+)"', hlo, re.MULTILINE):
    names = sources.setdefault(re.sub(r'\.\d+$', '', name), [])
    if op_name not in names:
      names.append(op_name)
  return sources


def profile_ops(trace_dir: str) -> tuple[dict[str, float], float]:
  """`({op: seconds}, total)` from the newest trace under `trace_dir` (the `*.trace.json.gz` that
  `jax.profiler.trace` writes): the "XLA Ops" line of each GPU/TPU device where there is one, else every event of
  the device streams; on CPU, the events that name an HLO op. Events of one op are summed by its HLO name."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}: jax.profiler wrote no trace')
  with gzip.open(paths[-1], 'rt') as f:
    events = json.load(f)['traceEvents']
  meta = lambda kind: {(e['pid'], e.get('tid')): e['args'].get('name', '') for e in events  # noqa: E731
                       if e.get('ph') == 'M' and e.get('name') == kind}
  device = {pid for (pid, _), name in meta('process_name').items() if re.search(r'/device:(GPU|TPU)', name)}
  xla_ops = {key for key, name in meta('thread_name').items() if key[0] in device and 'XLA Ops' in name}

  def counted(e: dict) -> bool:
    if xla_ops:
      return (e['pid'], e.get('tid')) in xla_ops
    if device:
      return e['pid'] in device
    return 'hlo_op' in e.get('args', {}) or 'long_name' in e.get('args', {})
  ops: dict[str, float] = {}
  for e in events:
    if e.get('ph') == 'X' and e.get('dur') and counted(e):
      name = re.sub(r'\.\d+$', '', e.get('args', {}).get('hlo_op') or e['name'])
      ops[name] = ops.get(name, 0.0) + e['dur'] * 1e-6
  if not ops:
    raise ValueError(f'no device op events in {paths[-1]}')
  return ops, sum(ops.values())


def _reduce_window_pool(x: jax.Array, window: int, stride: int, ceil_mode: bool) -> jax.Array:
  """Max-pooling as `lax.reduce_window` (its gradient: `select_and_scatter`), `-inf` past the input in ceil mode."""
  pads = [(0, max(0, (layers.pool_output_size(n, window, stride, ceil_mode) - 1) * stride + window - n))
          for n in x.shape[1:3]]
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), *pads, (0, 0)))


def _maxpool(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """Per dtype, one record per implementation: ReLU + max-pool, forward and backward, at every pool of the network
  (`[B, conv_out, conv_out, C]`, B the first batch), in one jitted function; the switches' one carries how many
  times faster it is than `reduce_window`'s and the largest gradient difference (ties aside: the same)."""
  arch = network.create_model(config).arch
  batch = _batches(config, options)[0][0]
  shapes = [(batch, arch.map_sizes()[c.name][0], arch.map_sizes()[c.name][0], c.features) for c in arch.convs if c.pool]
  rng = np.random.default_rng(0)
  window = (arch.pool_window, arch.pool_stride, arch.pool_ceil)
  for dtype in DTYPES:
    xs = [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]
    cotangents = [jnp.asarray(rng.standard_normal(jax.eval_shape(lambda x: layers.max_pool(x, *window), x).shape),
                              dtype) for x in xs]
    results = {}
    for name, pool in (('reduce_window', _reduce_window_pool), ('switches', layers.max_pool)):
      def loss(xs, pool=pool):  # upstream gradients `cotangents` into every pool
        return sum(jnp.vdot(pool(jax.nn.relu(x), *window), g).astype(jnp.float32) for x, g in zip(xs, cotangents))
      compiled, compile_s = harness.compile_timed(jax.jit(jax.grad(loss)), xs)
      times = harness.time_steps(lambda: jax.block_until_ready(compiled(xs)), options.warmup, options.steps)
      results[name] = (compiled(xs), times, compile_s)
    diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
               for a, b in zip(results['switches'][0], results['reduce_window'][0]))
    for name, (_, times, compile_s) in results.items():
      extra = {'speedup_over_reduce_window': statistics.median(results['reduce_window'][1].wall) /
               statistics.median(times.wall), 'max_abs_gradient_difference': diff} if name == 'switches' else {}
      yield harness.record(options, _with(config, dtype=dtype), 'maxpool', batch, times, 0.0, implementation=name,
                           pools=[list(s[1:]) for s in shapes], compile_s=compile_s, **extra)


def _interpret(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """The analyses' measurements of `INTERPRET`, each as its own subcommand records it; a `status` line for each
  that this version does not have yet."""
  from zfnet_jax.benchmarks import BENCHMARKS
  for name in INTERPRET:
    if name not in BENCHMARKS:
      yield {'what': name, 'status': 'not in this version'}
      continue
    yield from BENCHMARKS[name](config, options)


def _input(config: ml_collections.ConfigDict, options: harness.Options) -> Iterator[harness.Record]:
  """`benchmarks.input` (Grain and tf.data, `input.workers` as configured), then Grain at half and twice as many
  decoding threads (in this process)."""
  from zfnet_jax.benchmarks import input as input_benchmark
  yield from input_benchmark.run(config, options)
  default = config.input.workers or os.cpu_count()
  for workers in sorted({max(1, default // 2), 2 * default}):
    c = _with(config, **{'input.workers': workers})
    got = input_benchmark.measure(c, 'grain', options.start_step, options.steps)
    yield {'what': 'input_workers', 'batch': config.batch_size, 'workers': workers, 'cpu_cores': os.cpu_count(),
           **got, 'date': harness.utc_now()}


def read_jsonl(path: str) -> list[harness.Record]:
  """The JSON objects of a file's lines; other lines (a part's stray output) are skipped."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        value = json.loads(line)
      except ValueError:
        continue
      if isinstance(value, dict):
        records.append(value)
  return records


def _number(x: float | None, digits: int = 1) -> str:
  """`x` with `digits` decimals, or 3 significant digits when that would show less."""
  if x is None:
    return '-'
  return f'{x:,.{digits}f}' if abs(x) >= 10 ** (2 - digits) or x == 0 else f'{x:.3g}'


def _row(r: harness.Record, train_best: float | None) -> list[str] | None:
  """One table row: part, measurement, dtype, batch, rate, step ms, model TFLOP/s, MFU, notes."""
  what, step_ms = r.get('what'), 1e3 * r['step_time_s'] if 'step_time_s' in r else None
  base = [r.get('part', ''), what, r.get('dtype', ''), str(r.get('batch', ''))]
  if r.get('status'):
    return [*base[:2], '', base[3], '-', '-', '-', '-', r['status']]
  if what in ('train', 'infer', 'profile'):
    mfu = r.get('mfu')
    note = (f"XLA: {_number(r['flops_per_s'] / 1e12)} TFLOP/s; {r['peak_source']}" if what != 'profile' else
            '; '.join(f"{o['op']} {o['ms_per_step']:.2f} ms" for o in r['top_ops'][:5]))
    return [*base, f"{r['images_per_s']:,.0f} img/s", _number(step_ms, 2),
            _number(r.get('model_flops_per_s', 0) / 1e12) if what != 'profile' else '-',
            '-' if mfu is None else f'{100 * mfu:.1f}%', note]
  if what == 'maxpool':
    note = (f"{r['speedup_over_reduce_window']:.2f}x reduce_window's speed; max grad diff "
            f"{r['max_abs_gradient_difference']:.1e}" if 'speedup_over_reduce_window' in r else 'lax.reduce_window')
    return [*base[:1], f"maxpool ({r['implementation']})", *base[2:], f"{r['images_per_s']:,.0f} img/s",
            _number(step_ms, 2), '-', '-', note]
  if what == 'deconv':
    return [*base[:1], f"deconv layer {r['layer']}", *base[2:], f"{r['projections_per_s']:,.1f} projections/s",
            _number(step_ms, 2), '-', '-', f"{r['receptive_field']} px receptive field"]
  if what == 'occlusion':
    return [*base, f"{1 / r['seconds_per_image']:,.2f} images/s", _number(step_ms, 1), '-', '-',
            f"{r['positions']} positions of a {r['window']} px square"]
  if what == 'report_layers':
    return [*base, f"{r['images'] / r['top9_job_s']:,.1f} images/s", '-', '-', '-',
            f"top-9 job {r['top9_job_s']:.1f} s over {r['images']} images; with sprites {r['report_layers_s']:.1f} s"]
  if what == 'attribute':
    beside = f"; {r['ratio']:.2f}x Captum's" if 'ratio' in r else ''
    return [*base[:1], f"attribute {r['method']}", *base[2:], f"{r['maps_per_s']:,.1f} maps/s", _number(step_ms, 2),
            '-', '-', f"one image's map{beside}"]
  if what == 'featurevis':
    beside = f"; {r['ratio']:.2f}x lucent's" if 'ratio' in r else ''
    return [*base, f"{r['units_x_steps_per_s']:,.1f} /s", _number(step_ms, 2), '-', '-',
            f"units x optimisation steps per second, layer {r['layer']}, {r['units']} units{beside}"]
  if what in ('input', 'input_workers'):
    beside = f'; train step (best) {train_best:,.0f} img/s' if train_best else ''
    tfdata = f"; tf.data {r['tfdata_images_per_s']:,.0f} img/s" if 'tfdata_images_per_s' in r else ''
    return [*base[:1], f"input, {r['workers']} decoding threads", '', str(r['batch']),
            f"{r['images_per_s']:,.0f} img/s", '-', '-', '-',
            f"{r['cpu_cores']} cores, {r['cpu_ms_per_image']:.2f} CPU ms/img{tfdata}{beside}"]
  return None


def markdown(records: Iterable[harness.Record]) -> str:
  """The table for docs/PERFORMANCE.md: a heading naming the devices, then one row per measurement."""
  records = list(records)
  devices = next((r for r in records if r.get('what') == 'devices'), {})
  trains = [r['images_per_s'] for r in records if r.get('what') == 'train' and 'images_per_s' in r]
  head = (f"### {devices.get('devices', '?')} x {devices.get('device_kind', '?')} ({devices.get('platform', '?')}), "
          f"{devices.get('cpu_cores', '?')} host cores, jax {devices.get('jax', '?')}, {devices.get('date', '?')}\n\n"
          '| part | measurement | dtype | batch | rate | step (ms) | model TFLOP/s | MFU | notes |\n'
          '|---|---|---|---|---|---|---|---|---|\n')
  rows = [_row(r, max(trains) if trains else None) for r in records if r.get('what') not in ('devices', 'part')]
  parts = [r for r in records if r.get('what') == 'part' and r.get('status') != 'ok']
  rows += [[r['part'], 'part', '', '', '-', '-', '-', '-', f"{r['status']} after {r['seconds']} s "
            f"(budget {r['budget_s']} s)"] for r in parts]
  return head + ''.join('| ' + ' | '.join(row) + ' |\n' for row in rows if row)
