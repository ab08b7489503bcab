"""Receptive fields: which rows of every map below a unit can reach it, derived from the layer specs.

Maps are square and every operation treats rows and columns alike, so all arithmetic here is 1-D: an
interval of rows `[start, start + size)`. A conv (kernel k, stride s, padding p) or a max-pool (window k,
stride s, p = 0) maps output rows `[a, b)` to the input rows `[a*s - p, (b-1)*s - p + k)` they read.

Three uses:
- `receptive_field`: the exact input pixels a unit depends on (clipped to every map on the way down, so
  padding and the rows that floor-mode pooling or striding never read are excluded).
- `window_below` / `clamp`: static-size windows for the deconvnet, which works on each seed's window of
  every map instead of the whole map (`deconvnet.project`).
- `reached`: the forward direction (which outputs an input window can change), for occlusion.
Functions on rows take Python/NumPy ints or traced JAX ints (for dynamic window starts) alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from zfnet_jax.model import network


@dataclasses.dataclass(frozen=True)
class Step:
  """One operation between two maps: a conv (with its ReLU) or a max-pool."""
  kind: str  # 'conv' or 'pool'
  layer: int  # the paper's layer number of the stage it belongs to
  size: int  # kernel or pooling window
  stride: int
  padding: int
  in_size: int  # rows of the map it reads
  out_size: int  # rows of the map it writes


def steps_down(arch: network.Architecture, layer: int) -> list[Step]:
  """The convs and pools from the output of conv layer `layer` down to the image, top first."""
  if layer not in [c.layer for c in arch.convs]:
    raise ValueError(f'layer {layer} is not a conv layer of this network; it has layers '
                     f'{[c.layer for c in arch.convs]}')
  sizes, steps, in_size = arch.map_sizes(), [], arch.image_size
  for c in arch.convs:
    conv_out, pooled = sizes[c.name]
    steps.append(Step('conv', c.layer, c.kernel, c.stride, c.padding, in_size, conv_out))
    if c.pool:
      steps.append(Step('pool', c.layer, arch.pool_window, arch.pool_stride, 0, conv_out, pooled))
    in_size = pooled
    if c.layer == layer:
      return steps[::-1]
  raise AssertionError('unreachable')


def layer_size(arch: network.Architecture, layer: int) -> int:
  """Rows of conv layer `layer`'s output map (after pooling)."""
  return steps_down(arch, layer)[0].out_size


def reads(step: Step, start: Any, size: int) -> tuple[Any, int]:
  """`(start, size)` of the rows of the lower map that rows `[start, start + size)` of the upper map read.

  Unclipped: the interval may reach into padding or beyond the map.
  """
  return start * step.stride - step.padding, (size - 1) * step.stride + step.size


def receptive_field(arch: network.Architecture, layer: int, y: Any, x: Any) -> tuple[Any, Any, Any, Any]:
  """The exact receptive field of unit `(y, x)` of layer `layer`'s output, in input pixels.

  Returns:
    `(top, left, bottom, right)`, half-open (`bottom`, `right` excluded); elementwise for arrays.
  """
  def interval(u):
    lo, hi = u, u + 1
    for step in steps_down(arch, layer):
      lo, hi = lo * step.stride - step.padding, (hi - 1) * step.stride - step.padding + step.size
      lo, hi = np.maximum(lo, 0), np.minimum(hi, step.in_size)
    return lo, hi
  (top, bottom), (left, right) = interval(np.asarray(y)), interval(np.asarray(x))
  return top, left, bottom, right


def nominal(arch: network.Architecture, layer: int) -> tuple[int, int, int]:
  """`(size, stride, offset)`: unit `u` of layer `layer` sees input rows `[u*stride + offset, ... + size)`.

  The textbook receptive field, before clipping to the image (e.g. 171 px, stride 32 for layer 5 of
  `configs/default.py`).
  """
  start, size, stride = 0, 1, 1
  for step in steps_down(arch, layer):
    start, size = reads(step, start, size)
    stride *= step.stride
  return size, stride, start


def clamp(start: Any, size: int, map_size: int, xp: Any = np) -> tuple[Any, int]:
  """A window of `min(size, map_size)` rows inside the map that holds `[start, start + size)`'s part in it."""
  size = min(size, map_size)
  return xp.clip(start, 0, map_size - size), size


def window_below(step: Step, start: Any, size: int, xp: Any = np) -> tuple[Any, int]:
  """The static-size window of the lower map that holds everything rows `[start, start + size)` read."""
  lo, n = reads(step, start, size)
  return clamp(lo, n, step.in_size, xp)


def reached(step: Step, start: Any, size: int, xp: Any = np) -> tuple[Any, int]:
  """A static-size window of the upper map that holds every output reading rows `[start, start + size)`.

  Outputs `o` with `[o*s - p, o*s - p + k)` meeting the rows: `ceil((start + p - k + 1) / s) <= o <=
  floor((start + size - 1 + p) / s)`, at most `(size + k - 2) // s + 1` of them.
  """
  first = -((step.size - 1 - step.padding - start) // step.stride)
  return clamp(first, (size + step.size - 2) // step.stride + 1, step.out_size, xp)
