"""`report`: the report's layer pages against the top-9 job they are drawn from, random weights, synthetic images.

The top-9 job alone: `topk.stream_topk` of every conv layer over `--images` images in batches of
`config.eval_batch_size`, then `topk.projected_chunks` of every unit's top 9 (each chunk computed and
dropped). The report's layer pages: `report.draw_layers` (the same passes, plus each unit's top 100 and
per-class sums, each chunk of projections drawn into tiles in its projection step), then `report.write_layer` of
every layer. Each is one round with its own compilation (caches emptied between them), as a user pays it;
`report_over_top9` is the pages' time over the job's, `report_over_top9_cpu` the same in process CPU seconds
(what the process got: less swayed by other jobs on a shared machine). `peak_memory_bytes` is the process's max
RSS over both.
"""
from __future__ import annotations

import tempfile
import time
from typing import Iterator

import jax
import ml_collections
import numpy as np

from zfnet_jax.benchmarks import harness
from zfnet_jax.interpret import report, topk
from zfnet_jax.model import network

K = 9  # the paper's top-9


def _batches(config: ml_collections.ConfigDict, images: int) -> Iterator[dict[str, np.ndarray]]:
  """`images` synthetic inputs as `pipeline.split_batches` yields them (`image`, `label`, `mask`, `index`; the last
  batch padded), the same on every pass."""
  batch = config.eval_batch_size
  for start in range(0, images, batch):
    index = np.arange(start, start + batch, dtype=np.int32)
    yield {'image': harness.synthetic_images(config, batch, seed=start), 'index': index,
           'label': (index % config.model.num_classes).astype(np.int32), 'mask': (index < images).astype(np.int32)}


def _empty_caches() -> None:
  jax.clear_caches()
  for cached in (topk._jitted_update, topk._jitted_record, topk._jitted_project, report._jitted_tiles):
    cached.cache_clear()


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """One record, `report_layers`: the job's `stream_s` and `project_s` (together `top9_job_s`), the pages'
  `draw_s` (`report.draw_layers`) and `sprites_s` (`report.write_layer`, together `report_layers_s`, the step
  time); `units` every conv unit of the network."""
  model = network.create_model(config)
  params = harness.random_params(model, config)
  layer_numbers = tuple(c.layer for c in model.arch.convs)
  start, cpu = time.perf_counter(), time.process_time()
  tops = jax.block_until_ready(topk.stream_topk(model, params, _batches(config, options.images), layer_numbers, k=K))
  streamed = time.perf_counter()
  every_unit = {n: np.arange(len(t.value)) for n, t in tops.items()}
  for _ in topk.projected_chunks(model, params, _batches(config, options.images), tops, every_unit):
    pass
  projected, job_cpu = time.perf_counter(), time.process_time() - cpu
  _empty_caches()
  begin, cpu = time.perf_counter(), time.process_time()
  tiles, units = report.draw_layers(model, params, lambda: _batches(config, options.images), layer_numbers, K, config,
                                    num_classes=config.model.num_classes)
  drawn = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    for n in layer_numbers:
      report.write_layer(out, n, tiles[n], options.images, units[n])
  written, report_cpu = time.perf_counter(), time.process_time() - cpu
  total = written - begin
  times = harness.Timings([total], [report_cpu])
  return [harness.record(options, config, 'report_layers', config.eval_batch_size, times, 0.0,
                         images=options.images, units=sum(len(t.value) for t in tops.values()),
                         stream_s=streamed - start, project_s=projected - streamed, top9_job_s=projected - start,
                         draw_s=drawn - begin, sprites_s=written - drawn, report_layers_s=total,
                         report_over_top9=total / (projected - start), top9_job_cpu_s=job_cpu,
                         report_layers_cpu_s=report_cpu, report_over_top9_cpu=report_cpu / job_cpu)]
