"""Occlusion sensitivity (Fig. 7): a grey square slid over an image, recomputing only what it changes.

"Grey" is 0 in the network's input space, i.e. the dataset's mean pixel under both normalisations.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfnet_jax.model import network, receptive_field
from zfnet_jax.model.receptive_field import Step


class OcclusionMaps(NamedTuple):
  """Fig. 7's maps, one entry per position of the square; `[Ny, Nx]` each."""
  activity: jax.Array  # total activation of feature map `feature` of the top conv layer
  probability: jax.Array  # softmax probability of the true class
  top_class: jax.Array  # int32 most probable class
  feature: jax.Array  # int32 the strongest map of the top conv layer on the unoccluded image
  rows: np.ndarray  # [Ny] top rows of the square
  cols: np.ndarray  # [Nx] left columns


def _forward_steps(arch: network.Architecture) -> list[Step]:
  """Every conv and pool of the network, image first."""
  return receptive_field.steps_down(arch, arch.convs[-1].layer)[::-1]


def _apply_step(arch: network.Architecture, params: Any, step: Step, x: jax.Array, whole: bool = True) -> jax.Array:
  """One step of `network.ConvNet` (its conv stage or its pool stage) on `[B, n, n, C]`; `whole=False`
  treats `x` as a region already cut (with padding) from the step's input map."""
  spec = {c.layer: c for c in arch.convs}[step.layer]
  if step.kind == 'conv':
    return network.conv_stage(arch, spec, params[spec.name], x, whole)
  return network.pool_stage(arch, spec, x, whole)[0]


class _LocalStep(NamedTuple):
  step: Step
  size_in: int  # rows of the changed window of the step's input
  size_out: int  # rows of the window of its output that can change
  region: int  # rows of input the output window reads
  pad: tuple[int, int]  # zeros around the input window before the region is sliced from it
  base_pad: tuple[int, int]  # padding of the unoccluded input map (conv zeros / pool -inf)


def _occlusion_plan(arch: network.Architecture, size: int, rows: np.ndarray,
                    local_fraction: float) -> list[_LocalStep]:
  """The steps done on windows, in order; the rest run on whole maps. Static, from every square position."""
  start, n, plan = rows, size, []
  for step in _forward_steps(arch):
    out_start, q = receptive_field.reached(step, start, n)
    if q * q > local_fraction * step.out_size ** 2:
      break
    region_start, region = receptive_field.reads(step, out_start, q)
    pad = (max(0, int(np.max(start - region_start))), max(0, int(np.max(region_start + region - start - n))))
    high = max(0, (step.out_size - 1) * step.stride - step.padding + step.size - step.in_size)
    plan.append(_LocalStep(step, n, q, region, pad, (step.padding, high)))
    start, n = out_start, q
  return plan


def square(image_size: int, size: int | None = None, stride: int | None = None) -> tuple[int, int]:
  """Fig. 7's square `(side, stride)` in pixels; the paper gives neither. Defaults: side image_size / 7
  (32 px at 224), stride half the side."""
  size = size or max(1, image_size // 7)
  return size, stride or max(1, size // 2)


def occlusion(model: network.ConvNet, params: Any, image: jax.Array, label: int | jax.Array, size: int, stride: int,
              fill: float = 0.0, chunk: int = 16, local_fraction: float = 0.5) -> OcclusionMaps:
  """Fig. 7: a `size` square of value `fill` at every `stride`-th position inside the image.

  Only what the square can change is recomputed: while the window of a map that the square reaches
  (`receptive_field.reached`) covers at most `local_fraction` of it, each step runs on that window,
  read from the unoccluded map with the changed window written in; after that, whole maps. For
  `configs/default.py` and a 32 px square that is conv1-conv4 on windows, conv5 and the fc layers whole.
  Pure and jittable with `model`, `size` and `stride` static (`sensitivity` holds the package's one jit).

  Args:
    image: `[H, W, C]` network input.
  """
  arch = model.arch
  h = arch.image_size
  if image.shape != (h, h, arch.in_channels):
    raise ValueError(f'occlusion needs a {(h, h, arch.in_channels)} network input, got {image.shape}')
  if not 0 < size <= h or stride < 1:
    raise ValueError(f'the square size must be in 1..{h} and the stride positive, got {size}, {stride}')
  rows = np.arange(0, h - size + 1, stride)
  plan = _occlusion_plan(arch, size, rows, local_fraction)
  base, padded, feature = _base_pass(arch, params, image, plan)
  one = _occluded_outputs(arch, params, plan, base, padded, size, fill, feature, label)
  grid = jnp.stack(jnp.meshgrid(jnp.asarray(rows), jnp.asarray(rows), indexing='ij'), -1).reshape(-1, 2)
  activity, probability, top_class = lax.map(one, grid.astype(jnp.int32), batch_size=chunk)
  shape = (len(rows), len(rows))
  return OcclusionMaps(activity.reshape(shape), probability.reshape(shape), top_class.reshape(shape), feature,
                       rows, rows)


def _base_pass(arch: network.Architecture, params: Any, image: jax.Array,
               plan: list[_LocalStep]) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
  """The unoccluded image through every step: `(maps [1, n, n, C] per step input and the top output,
  the inputs of the `plan`'s steps padded as the step pads them [n', n', C], the top layer's strongest map)`."""
  base = [image[None].astype(jnp.float32)]
  for step in _forward_steps(arch):
    base.append(_apply_step(arch, params, step, base[-1]))
  feature = jnp.argmax(jnp.max(base[-1][0], axis=(0, 1))).astype(jnp.int32)
  padded = []
  for plan_step, x in zip(plan, base):
    lo, hi = plan_step.base_pad
    pad_value = -jnp.inf if plan_step.step.kind == 'pool' else 0.0
    padded.append(jnp.pad(x[0], ((lo, hi), (lo, hi), (0, 0)), constant_values=pad_value))
  return base, padded, feature


def _occluded_outputs(arch: network.Architecture, params: Any, plan: list[_LocalStep], base: list[jax.Array],
                      padded: list[jax.Array], size: int, fill: float, feature: jax.Array,
                      label: int | jax.Array):
  """The function of one square position `[2]` (top, left) -> (activity of `feature`, p(label), top class):
  the `plan`'s steps on windows read from `padded` with the square's window written in, the rest whole."""
  rest_steps = _forward_steps(arch)[len(plan):]

  def one(position):
    start = position
    window = jnp.full((size, size, arch.in_channels), fill, jnp.float32)
    for local, base_map in zip(plan, padded):
      step = local.step
      out_start, _ = receptive_field.reached(step, start, local.size_in, jnp)
      region_start = out_start * step.stride - step.padding
      region = lax.dynamic_slice(base_map, (*(region_start + local.base_pad[0]), 0),
                                 (local.region, local.region, base_map.shape[-1]))
      lo, hi = local.pad
      offset = region_start - start + lo
      changed = lambda v: lax.dynamic_slice(  # noqa: E731  (the window's values in region coordinates)
          jnp.pad(v, ((lo, hi), (lo, hi), (0, 0))), (*offset, 0), (local.region, local.region, v.shape[-1]))
      inside = changed(jnp.ones((local.size_in, local.size_in, 1), bool))
      region = jnp.where(inside, changed(window), region)
      window = _apply_step(arch, params, step, region[None], whole=False)[0]
      start = out_start
    rest = lax.dynamic_update_slice(base[len(plan)][0], window, (*start, 0))[None]
    for step in rest_steps:
      rest = _apply_step(arch, params, step, rest)
    probs = jax.nn.softmax(network.head(arch, params, rest)[0])
    return jnp.sum(rest[0, ..., feature]), probs[label], jnp.argmax(probs).astype(jnp.int32)
  return one


class Sensitivity(NamedTuple):
  """Fig. 7 for one image, as `visualize occlusion` and the report draw it."""
  maps: OcclusionMaps  # as numpy arrays
  label: int  # the class whose probability `maps.probability` follows
  probabilities: np.ndarray  # [K] softmax of the unoccluded image
  size: int  # the square's side in pixels
  stride: int


_occlude = jax.jit(occlusion, static_argnums=(0, 4, 5))
_forward = jax.jit(network.forward, static_argnums=0)


def sensitivity(model: network.ConvNet, params: Any, image: np.ndarray, label: int | None = None,
                size: int | None = None, stride: int | None = None) -> Sensitivity:
  """`occlusion` of an `[H, W, C]` network input (`square`'s defaults where `size` or `stride` is None),
  following p(`label`) (default: the class the network predicts for the unoccluded image)."""
  size, stride = square(model.arch.image_size, size, stride)
  probabilities = np.asarray(jax.nn.softmax(_forward(model, params, jnp.asarray(image)[None]).logits[0]))
  label = int(np.argmax(probabilities)) if label is None else int(label)
  maps = jax.device_get(_occlude(model, params, jnp.asarray(image), label, size, stride))
  return Sensitivity(OcclusionMaps(*(np.asarray(f) for f in maps)), label, probabilities, size, stride)
