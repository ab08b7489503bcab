"""`report`: the report's layer pages against the top-9 job they are drawn from, random weights, synthetic images.

The top-9 job alone: `topk.stream_topk` of every conv layer over `--images` images in batches of
`config.eval_batch_size`, then `topk.project_topk` of every unit; then the sprite sheets of every layer
(`report.write_layer`), as `report.build` does. One round, compilation included (as a user pays it); the
ratio `report_over_top9` is the pages' cost over the job's.
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
  """`images` synthetic inputs as `pipeline.eval_batches` yields them (`image`, `mask`; the last batch padded),
  the same on every pass."""
  batch = config.eval_batch_size
  for start in range(0, images, batch):
    yield {'image': harness.synthetic_images(config, batch, seed=start),
           'mask': (start + np.arange(batch) < images).astype(np.int32)}


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """One record, `report_layers`: `stream_s`, `project_s` (together `top9_job_s`), `sprites_s` and their sum
  `report_layers_s`, the step time; `units` every conv unit of the network."""
  model = network.create_model(config)
  params = harness.random_params(model, config)
  layer_numbers = tuple(c.layer for c in model.arch.convs)
  start, cpu = time.perf_counter(), time.process_time()
  tops = jax.block_until_ready(topk.stream_topk(model, params, _batches(config, options.images), layer_numbers, k=K))
  streamed = time.perf_counter()
  results = topk.project_topk(model, params, _batches(config, options.images), tops,
                              {n: np.arange(len(t.value)) for n, t in tops.items()})
  projected = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    for n in layer_numbers:
      report.write_layer(out, n, results[n], config, options.images)
  drawn = time.perf_counter()
  total = drawn - start
  times = harness.Timings([total], [time.process_time() - cpu])
  return [harness.record(options, config, 'report_layers', config.eval_batch_size, times, 0.0,
                         images=options.images, units=sum(len(t.value) for t in tops.values()),
                         stream_s=streamed - start, project_s=projected - streamed, top9_job_s=projected - start,
                         sprites_s=drawn - projected, report_layers_s=total,
                         report_over_top9=total / (projected - start))]
