"""Feature evolution (Fig. 4): a few maps per layer, each map's strongest activation over a stream of images
projected at every checkpoint of a run.

The checkpoints come in as `steps` and a `params_at(step)` callable: interpret/ reads no checkpoints itself
(`visualize` loads them).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from zfnet_jax import progress as progress_lib
from zfnet_jax.interpret import topk
from zfnet_jax.model import network

MAPS = 8  # feature maps per layer, by default


class Evolution(NamedTuple):
  """What Fig. 4 draws: per layer `M` maps over `T` checkpoints."""
  steps: list[int]  # [T]
  channels: dict[int, np.ndarray]  # {layer: [M]} the maps, the same at every step
  values: dict[int, np.ndarray]  # {layer: [T, M]} each map's strongest activation over the stream
  reconstructions: dict[int, np.ndarray]  # {layer: [T, M, R, R, C_in]} its projection, cropped to its window


def choose_maps(top: topk.TopK, count: int) -> np.ndarray:
  """Fig. 4's maps of one layer, given its top-1 `top` at the last checkpoint: `count` of them (0: all)
  spread evenly over the maps that fire, then the first that do not if too few fire; in index order.
  Deterministic, so every drawing of a run's evolution follows the same maps."""
  value = np.asarray(top.value)[:, 0]
  if count <= 0 or count >= len(value):
    return np.arange(len(value))
  alive, dead = np.flatnonzero(value > 0), np.flatnonzero(~(value > 0))
  picked = alive[np.linspace(0, len(alive) - 1, min(count, len(alive))).astype(int)] if len(alive) else alive
  return np.sort(np.concatenate([picked, dead[:count - len(picked)]]))


def evolution(model: network.ConvNet, steps: Sequence[int], params_at: Callable[[int], Any],
              batches: Callable[[], Iterable[dict[str, np.ndarray]]], layer_numbers: Iterable[int],
              maps: int = MAPS, progress: progress_lib.Progress | None = None) -> Evolution:
  """Fig. 4 over the checkpoints `steps` (ascending; `params_at(step)` gives each one's params) and the
  stream `batches()` returns (read twice per step): the maps `choose_maps` picks at the last step, their
  strongest activation at every step, projected. `progress` advances twice per step."""
  steps, layer_numbers = [int(s) for s in steps], tuple(layer_numbers)
  advance = progress.advance if progress else lambda amount, note: None
  last_params = params_at(steps[-1])
  last = topk.stream_topk(model, last_params, batches(), layer_numbers, k=1)
  channels = {n: choose_maps(last[n], maps) for n in layer_numbers}
  columns = []
  for step in steps:
    params = last_params if step == steps[-1] else params_at(step)
    tops = last if step == steps[-1] else topk.stream_topk(model, params, batches(), layer_numbers, k=1)
    advance(1, f'evolution: top-1 at step {step}')
    columns.append(topk.project_topk(model, params, batches(), tops, channels))
    advance(1, f'evolution: projections at step {step}')
  return Evolution(steps, channels, {n: np.stack([c[n].top.value[:, 0] for c in columns]) for n in layer_numbers},
                   {n: np.stack([c[n].reconstruction[:, 0] for c in columns]) for n in layer_numbers})
