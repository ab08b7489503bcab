"""The deconvnet (Zeiler & Fergus, Section 2.1): project single activations down to pixel space.

`record` runs the network once on a batch of images and keeps what the way down needs: every layer's
output and the max-pool switches. `project` then sends seeds (one activation each, every other
activation of its layer zero) down to the image, per stage **unpool -> rectify -> filter**:
- unpool: each value goes back to the position its switch recorded, everything else zero;
- rectify: ReLU of the reconstructed signal;
- filter: the transposed conv with the same ("tied") kernels, flipped vertically and horizontally with
  input and output channels swapped; no biases.
Contrast normalisation (LRN) is treated as the identity on the way down: the paper does not say how it
is handled, and it only rescales each position's values by a positive factor of the forward pass.

Speed: a seed only reaches its receptive field, so each seed is computed on a static-size window of
every map (`receptive_field.window_below`), placed by `lax.dynamic_slice`, and seeds are vmapped in
chunks sharing one recorded forward pass. The tests hold it equal to an independent formulation
(tests/deconv_reference.py): the gradient of the seed's activation with every ReLU's backward replaced by
ReLU(upstream gradient), max-pool's backward routed to the argmax and LRN's backward the identity.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfnet_jax.model import layers, network, receptive_field
from zfnet_jax.model.receptive_field import Step

Recording = network.Forward  # one forward pass with `record=True`: logits, layer outputs, switches


class Seeds(NamedTuple):
  """Activations to project, one per entry; every field is `[S]`."""
  image: jax.Array  # int32 index into the recorded batch
  channel: jax.Array  # int32 feature map
  y: jax.Array  # int32 row in the layer's output map
  x: jax.Array  # int32 column
  value: jax.Array  # float32 activation sent down (the recorded one, usually)


class Projection(NamedTuple):
  """Projections cropped to a static-size window of the image that holds each seed's receptive field."""
  patches: jax.Array  # [S, R, R, C_in]; R = min(nominal receptive field, image size)
  top: jax.Array  # int32 [S]: the window is image rows [top, top + R)
  left: jax.Array  # int32 [S]


def record(model: network.ConvNet, params: Any, images: jax.Array) -> Recording:
  """Runs `model` on `[B, H, W, C]` images, keeping every layer's output and the switches."""
  return network.forward(model, params, images, record=True)


def strongest(recording: Recording, layer: int, image: int = 0) -> Seeds:
  """One seed per feature map of `layer`: its strongest activation in image `image` of the recording."""
  act = recording.layers[f'layer{layer}'][image]  # [H, W, C]
  h, w, c = act.shape
  flat = jnp.argmax(act.reshape(h * w, c), axis=0)
  y, x = (flat // w).astype(jnp.int32), (flat % w).astype(jnp.int32)
  channel = jnp.arange(c, dtype=jnp.int32)
  return Seeds(jnp.full((c,), image, jnp.int32), channel, y, x, act[y, x, channel])


@dataclasses.dataclass(frozen=True)
class _Move:
  """One step of a seed's way down: window sizes on both maps, and the zeros that make slicing safe."""
  step: Step
  upper: int  # window rows on the map above
  lower: int  # window rows on the map below
  pad: tuple[int, int]  # zeros around the step's local result before the lower window is sliced from it


@functools.lru_cache(maxsize=None)
def _moves(arch: network.Architecture, layer: int) -> tuple[_Move, ...]:
  """The static plan for seeds of `layer`, worked out for every possible seed position at once."""
  start, size, moves = np.arange(receptive_field.layer_size(arch, layer)), 1, []
  for step in receptive_field.steps_down(arch, layer):
    local, extent = receptive_field.reads(step, start, size)
    lower, n = receptive_field.clamp(local, extent, step.in_size)
    pad = (max(0, int(np.max(local - lower))), max(0, int(np.max(lower + n - local - extent))))
    moves.append(_Move(step, size, n, pad))
    start, size = lower, n
  return tuple(moves)


def filter_down(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The deconvnet's filtering: the transposed conv with the flipped, channel-swapped forward kernel.

  Args:
    x: `[B, n, n, C_out]`, a window of a conv's output.
    kernel: `[k, k, C_in, C_out]`, the forward (Flax HWIO) kernel.
  Returns:
    `[B, (n-1)*stride + k, (n-1)*stride + k, C_in]`: every input row the window's outputs read, starting
    at input row `window_start * stride - padding`.

  XLA's CPU convolution with an input dilation (`lax.conv_transpose`'s lowering) is slow on small
  windows (10x on 3x3 ones), so strided filtering runs as `stride**2` undilated convs, one per output
  phase, interleaved (`_filter_down_by_phases`); into few channels (the image) the dilated conv is
  the faster one and is kept. Both are the same sum; the tests check it against the conv's vjp.
  """
  if stride > 1 and kernel.shape[2] >= 8:
    return _filter_down_by_phases(x, kernel, stride)
  k = kernel.shape[0]
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # [k, k, C_out, C_in]
  return lax.conv_general_dilated(x, flipped, (1, 1), [(k - 1, k - 1)] * 2, lhs_dilation=(stride, stride),
                                  dimension_numbers=network.CONV_DIMS)


def _filter_down_by_phases(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """`filter_down` as `stride**2` convs: output row `q*s + t` only meets kernel taps `d*s + t`.

  Row `q*s + t` of the result is `sum_d x[q - d] * kernel[d*s + t]`: a full stride-1 convolution of
  `x` with the sub-kernel `kernel[t::s]`, flipped for `conv_general_dilated`'s correlation.
  """
  k, s = kernel.shape[0], stride
  b, n = x.shape[:2]
  rows = n - 1 + -(-k // s)  # output rows per phase
  phases = []
  for ty in range(s):
    row = []
    for tx in range(s):
      sub = kernel[ty::s, tx::s]
      dy, dx = sub.shape[:2]
      row.append(lax.conv_general_dilated(x, jnp.swapaxes(sub[::-1, ::-1], 2, 3), (1, 1),
                                          [(dy - 1, rows - n), (dx - 1, rows - n)],
                                          dimension_numbers=network.CONV_DIMS))
    phases.append(jnp.stack(row, axis=3))  # [B, rows, rows, s (tx), C_in]
  size = (n - 1) * s + k
  return jnp.stack(phases, axis=2).reshape(b, rows * s, rows * s, -1)[:, :size, :size]


def _project_seed(arch: network.Architecture, kernels: dict[str, jax.Array], switches: dict[str, jax.Array],
                  layer: int, seed: Seeds) -> tuple[jax.Array, jax.Array]:
  """One seed down to its image window: `([R, R, C_in], start [2])`."""
  channels = {c.layer: c.features for c in arch.convs}[layer]
  signal = (jax.nn.one_hot(seed.channel, channels) * seed.value)[None, None, None]  # [1, 1, 1, C]
  start = jnp.stack([seed.y, seed.x]).astype(jnp.int32)
  for move in _moves(arch, layer):
    step = move.step
    if step.kind == 'pool':
      recorded = switches[f'pool{step.layer}']
      window = lax.dynamic_slice(recorded, (seed.image, start[0], start[1], 0),
                                 (1, move.upper, move.upper, recorded.shape[-1]))
      extent = receptive_field.reads(step, 0, move.upper)[1]
      local = layers.unpool(signal, window, (extent, extent), step.size, step.stride)
    else:
      local = filter_down(jax.nn.relu(signal), kernels[f'conv{step.layer}'], step.stride)
    local_start = start * step.stride - step.padding
    lower = jnp.clip(local_start, 0, step.in_size - move.lower)
    lo, hi = move.pad
    padded = jnp.pad(local, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    offset = lower - local_start + lo
    signal = lax.dynamic_slice(padded, (0, offset[0], offset[1], 0),
                               (1, move.lower, move.lower, local.shape[-1]))
    start = lower
  return signal[0], start


def project_patches(arch: network.Architecture, params: Any, switches: dict[str, jax.Array], layer: int,
                    seeds: Seeds, chunk: int = 16) -> Projection:
  """Projects every seed of conv layer `layer` down to pixel space, each cropped to its image window.

  Pure and jittable (`arch`, `layer` and `chunk` static); seeds are vmapped `chunk` at a time.

  Args:
    switches: `Recording.switches` of the forward pass the seeds come from (`[B, Ho, Wo, C]` each);
      `seeds.image` indexes its batch.
    seeds: `[S]` each; `seeds.value` is the activation sent down (its sign matters: the first rectify
      zeroes a negative seed; positive scalings scale the projection).
  """
  kernels = {c.name: params[c.name]['kernel'] for c in arch.convs}
  one = functools.partial(_project_seed, arch, kernels, switches, layer)
  patches, starts = lax.map(one, seeds, batch_size=chunk)
  return Projection(patches, starts[:, 0], starts[:, 1])


def paste(projection: Projection, image_size: int) -> jax.Array:
  """Full-size reconstructions `[S, image_size, image_size, C_in]` from cropped ones (zero outside)."""
  def one(patch, top, left):
    canvas = jnp.zeros((image_size, image_size, patch.shape[-1]), patch.dtype)
    return lax.dynamic_update_slice(canvas, patch, (top, left, 0))
  return jax.vmap(one)(*projection)


def project(arch: network.Architecture, params: Any, switches: dict[str, jax.Array], layer: int, seeds: Seeds,
            chunk: int = 16) -> jax.Array:
  """`project_patches` pasted into full-size images: `[S, H, W, C_in]`, input resolution, unnormalised."""
  return paste(project_patches(arch, params, switches, layer, seeds, chunk), arch.image_size)
