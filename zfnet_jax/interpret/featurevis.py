"""Feature visualisation by optimisation (Olah et al., "Feature Visualization", Distill 2017): the input each
unit asks for, found by gradient ascent on the image with Lucid's recipe, in pure JAX and optax.

- The image is parametrised in the Fourier domain (`to_unit`): each frequency's coefficient scaled by 1/f, so
  that all frequencies learn at similar rates; colours decorrelated with Lucid's square root of ImageNet's
  colour correlation (`colour_matrix`; a grey network gets the luminance component alone); a sigmoid squashes
  it into [0, 1], i.e. pixels in [0, 255], normalised as the config's inputs are (`input_affine`).
- Robustness: each step sees the image through fresh random transforms (`transform`): Lucid's pad, jitter (8 px),
  random scale (0.9-1.1), rotation (+-10 degrees) and jitter (4 px) at 224 px, the pixel amounts scaled to the
  network's input size, composed into one bilinear resampling at the input size; the network's input size is
  fixed (its fc layers), so the pad is the grey that fills wherever the transforms uncover the image. Strength
  0 is the identity.
- Objectives (`OBJECTIVES`): a conv unit's map mean (`channel`), its map's centre (`neuron`; on an fc layer both
  are the unit's value), a class logit (`class`, layer 8); `negative` maximises minus the objective.
  `diversity` K > 1 optimises K images per unit together and penalises the cosine similarity of their Gram
  matrices at the unit's layer (the last conv layer for fc units and classes), weighted by `diversity_weight`.
- Dead units get a start (Lucid's redirected ReLU, `REDIRECT_STEPS`): where a ReLU's true gradient is zero for
  the whole of an image's layer, the gradient is passed on except where it would push a negative input lower;
  afterwards the true gradient.
The forward pass is the attribution engine's (`attribution.run`), the layers numbered as the package numbers
them: conv layers 1-5 and fc layers 6, 7 by their paper number, 8 for the logits.

Every unit of a call is optimised at once: `optimise` splits the units over every local device (`shard_map`
over a `parallel.make_mesh` mesh; the units padded to a multiple of the devices) and runs them in chunks of at
most `chunk` units per device (`jit_programs`: one compiled step, looped), so memory is one chunk's images.
Every random number of an image is drawn from `(seed, unit, k, step)`, so an image does not depend on the
devices, the chunks or the other units of the call. `dataset_best` is the quality yardstick: each unit's
strongest value of the same objective over a dataset's images.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from zfnet_jax import parallel
from zfnet_jax.data import augment, squares
from zfnet_jax.interpret import attribution
from zfnet_jax.model import network

OBJECTIVES = ('channel', 'neuron', 'class')
CLASS_LAYER = 8  # the logits, as the paper numbers fc8
REDIRECT_STEPS = 16  # Lucid: redirected ReLU gradients for the first 16 steps
LUCID_SIZE = 224  # the input size Lucid's transform amounts are given for
JITTER = (8.0, 4.0)  # px at LUCID_SIZE: the translations before and after scaling and rotating
SCALE = 0.1  # random scale in [1 - SCALE, 1 + SCALE]
ROTATE = 10.0  # degrees, in [-ROTATE, ROTATE]
PAD_VALUE = 0.5  # grey: what the transforms uncover (Lucid pads with it)
# The diversity term's weight against the objective (Adam makes only their ratio matter). Lucid's tutorials use 1e2
# on InceptionV1; on the digits network (objectives ~1-15) 1e2 wipes out the objective, and 1 halves the correlation
# between a unit's K images (0.58 -> 0.28, layer 3) for ~10% of the objective.
DIVERSITY_WEIGHT = 1.0
INIT_STD = 0.01  # Lucid's initial Fourier coefficients
FOURIER_DIVISOR = 4.0  # Lucid scales the inverse FFT's image down by 4
# Lucid's square root of ImageNet's colour correlation (RGB rows), columns normalised by the largest column norm
COLOUR_CORRELATION_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
ACTIVATION_BYTES = 4 * 6  # per float of a conv map, per image and step: forward, pre-pool, backward, transforms...
CHUNK_BYTES = 2 ** 30  # default memory for one chunk's activations per device


class Settings(NamedTuple):
  """What one compiled optimisation is built for (static)."""
  layer: int  # conv 1-5, fc 6-7 or CLASS_LAYER
  objective: str  # one of OBJECTIVES
  negative: bool
  steps: int
  diversity: int  # K images per unit
  diversity_weight: float
  learning_rate: float
  strength: float  # of the transforms: 1 Lucid's, 0 none
  redirect_steps: int


class Result(NamedTuple):
  """Each unit's `K` visualisations; `U` units."""
  units: np.ndarray  # int32 [U]: the units (channels, fc units or classes) of `layer`
  pixels: np.ndarray  # float32 [U, K, H, W, C]: pixels in [0, 255]
  inputs: np.ndarray  # float32 [U, K, H, W, C]: the same images as the network takes them (normalised)
  activation: np.ndarray  # float32 [U, K]: the objective each image reaches, without transforms


# ------------------------------------------------------------------------------------------ the image

def frequency_scale(height: int, width: int) -> np.ndarray:
  """float32 `[height, width // 2 + 1]`: Lucid's 1/f scaling of the real FFT's coefficients (the frequency floored
  at one cycle per image), times `sqrt(height * width)`."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  f = np.sqrt(fx * fx + fy * fy)
  return (np.sqrt(height * width) / np.maximum(f, 1.0 / max(height, width))).astype(np.float32)


def colour_matrix(channels: int) -> np.ndarray:
  """float32 `[C, C]`: decorrelated colour -> colour. RGB: Lucid's matrix; grey: the luminance component's mean
  over R, G, B (the grey a luminance-only RGB image has)."""
  m = COLOUR_CORRELATION_SQRT / np.max(np.linalg.norm(COLOUR_CORRELATION_SQRT, axis=0))
  if channels == 1:
    return m[:, :1].mean(axis=0, keepdims=True)
  if channels != 3:
    raise ValueError(f'feature visualisation draws grey (1) or RGB (3) channels, got {channels}')
  return m


def param_shape(size: int, channels: int) -> tuple[int, ...]:
  """The Fourier parameters of one `[size, size, channels]` image: real and imaginary parts."""
  return (channels, size, size // 2 + 1, 2)


def to_unit(params: jax.Array, size: int) -> jax.Array:
  """Fourier parameters `[..., C, size, size // 2 + 1, 2]` -> images `[..., size, size, C]` in (0, 1)."""
  spectrum = jax.lax.complex(params[..., 0], params[..., 1]) * frequency_scale(size, size)
  image = jnp.fft.irfft2(spectrum, s=(size, size)) / FOURIER_DIVISOR  # [..., C, H, W]
  image = jnp.moveaxis(image, -3, -1)
  return jax.nn.sigmoid(image @ colour_matrix(image.shape[-1]).T)


def from_unit(images: np.ndarray) -> np.ndarray:
  """`to_unit`'s inverse: images `[..., H, H, C]` in (0, 1) -> their Fourier parameters (float64 NumPy)."""
  images = np.asarray(images, np.float64)
  size = images.shape[-2]
  logits = np.log(images) - np.log1p(-images)
  decorrelated = logits @ np.linalg.inv(colour_matrix(images.shape[-1]).astype(np.float64)).T
  spectrum = np.fft.rfft2(np.moveaxis(decorrelated, -1, -3) * FOURIER_DIVISOR) / frequency_scale(size, size)
  return np.stack([spectrum.real, spectrum.imag], axis=-1)


def input_affine(config: ml_collections.ConfigDict, channels: int,
                 pixel_mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`(offset [S, S, C], scale [C])` float32 such that the network's input is `(pixels - offset) / scale` for
  pixels in [0, 255] (`augment.normalize` of a centre crop; `pixel_mean`: the mean image `[R, R, C]`)."""
  size = config.model.image_size
  mean, std = augment.channel_stats(channels)
  normalization = config.input.normalization
  if normalization == 'pixel_mean':
    if pixel_mean is None:
      raise ValueError('inputs normalised by the mean image: pass it, pixel_mean=squares.pixel_mean(config)')
    off = (pixel_mean.shape[0] - size) // 2
    return np.asarray(pixel_mean[off:off + size, off:off + size], np.float32), np.ones_like(std)
  offset = np.broadcast_to(mean, (size, size, channels)).astype(np.float32)
  return offset, (std if normalization == 'mean_std' else np.ones_like(std))


# ------------------------------------------------------------------------------------------ transforms

def transform(key: jax.Array, images: jax.Array, strength: float = 1.0) -> jax.Array:
  """Lucid's robustness transforms with fresh randomness per image: `[N, S, S, C]` -> `[N, S, S, C]`.

  Output pixel `p` (centred coordinates) shows the image at `R(alpha)(p + t2) / s + t1`: a jitter `t1`, scale `s`,
  rotation `alpha`, jitter `t2`, each amount times `strength` and the jitters scaled by `S / 224`; `PAD_VALUE`
  outside the image. `strength` 0: the identity, exactly.

  Resampled without gathers (a gather's gradient is a scatter): the scale and jitters as two 1-D linear
  resamplings, rows then columns, one matrix each (`_stretch`; together exactly the 2-D bilinear one), the rotation
  as three shears (Paeth: `R = X(tan(alpha/2)) Y(-sin alpha) X(tan(alpha/2))`), each a shift of every line by the
  FFT (`_shear`). On 96 64-px images on CPU, forward and gradient: 13 ms, against 38 ms for a bilinear gather.
  """
  n, size = images.shape[0], images.shape[1]
  jitter = tuple(j * size / LUCID_SIZE * strength for j in JITTER)
  k1, k2, k_scale, k_angle = jax.random.split(key, 4)
  t1 = jax.random.uniform(k1, (n, 2), minval=-0.5, maxval=0.5) * jitter[0]
  t2 = jax.random.uniform(k2, (n, 2), minval=-0.5, maxval=0.5) * jitter[1]
  s = 1.0 + jax.random.uniform(k_scale, (n,), minval=-SCALE, maxval=SCALE) * strength
  alpha = jnp.deg2rad(jax.random.uniform(k_angle, (n,), minval=-ROTATE, maxval=ROTATE) * strength)
  return warp(images, t1, t2, s, alpha, strength)


def warp(images: jax.Array, t1: jax.Array, t2: jax.Array, s: jax.Array, alpha: jax.Array,
         strength: float = 1.0) -> jax.Array:
  """`transform` with given amounts: `[N, S, S, C]` images; jitters `t1`, `t2` `[N, 2]` (rows, columns), scale `s`
  and angle `alpha` (radians) `[N]`, within `transform`'s ranges at `strength` (static: it bounds the shears)."""
  size = images.shape[1]
  cos, sin = jnp.cos(alpha), jnp.sin(alpha)
  d = jnp.stack([cos * t2[:, 0] - sin * t2[:, 1], sin * t2[:, 0] + cos * t2[:, 1]], -1)  # R(alpha) t2
  centre = (size - 1) / 2
  q = jnp.arange(size, dtype=jnp.float32) - centre  # centred coordinates along one axis
  per = lambda v: v[:, None]  # noqa: E731  (one value per image)
  x = _stretch(images, (q + per(d[:, 0])) / per(s) + per(t1[:, 0]) + centre, 1)  # rows
  x = _stretch(x, (q + per(d[:, 1])) / per(s) + per(t1[:, 1]) + centre, 2)  # columns
  angle = np.deg2rad(ROTATE * strength)
  if angle == 0:
    return x
  shear_x, shear_y = per(jnp.tan(alpha / 2)) * q, per(-sin) * q  # column shift by row; row shift by column
  x = _shear(x, shear_x, 2, centre * np.tan(angle / 2))
  x = _shear(x, shear_y, 1, centre * np.sin(angle))
  return jnp.clip(_shear(x, shear_x, 2, centre * np.tan(angle / 2)), 0.0, 1.0)  # the band-limited shifts ring


def _stretch(images: jax.Array, source: jax.Array, axis: int) -> jax.Array:
  """1-D linear interpolation of `[N, S, S, C]` along `axis` (1 rows, 2 columns): output index `i` reads the image
  at `source[:, i]` (`[N, S]`), `PAD_VALUE` outside; one `[S, S]` matrix per image."""
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(source[:, :, None] - jnp.arange(images.shape[axis])))  # [N, S, S]
  uncovered = PAD_VALUE * (1.0 - jnp.sum(weights, axis=-1))  # [N, S]
  if axis == 1:
    return jnp.einsum('nij,njxc->nixc', weights, images, precision='highest') + uncovered[:, :, None, None]
  return jnp.einsum('nij,nyjc->nyic', weights, images, precision='highest') + uncovered[:, None, :, None]


def _shear(images: jax.Array, shift: jax.Array, axis: int, bound: float) -> jax.Array:
  """`[N, S, S, C]` with each line along `axis` (2: each row, 1: each column) read `shift[:, line]` (`[N, S]`, at
  most `bound` in magnitude) pixels further on, `PAD_VALUE` outside: the shift theorem on each line's real FFT
  (band-limited interpolation), the lines padded by `bound` so that nothing wraps around."""
  size = images.shape[1]
  reach = int(np.ceil(bound)) + 1
  lines = images if axis == 2 else jnp.swapaxes(images, 1, 2)  # [N, line, S along it, C]
  padded = jnp.pad(lines, ((0, 0), (0, 0), (reach, reach), (0, 0)), constant_values=PAD_VALUE)
  length = size + 2 * reach
  phase = jnp.exp(2j * np.pi * np.fft.rfftfreq(length).astype(np.float32) * shift[:, :, None])  # [N, line, F]
  out = jnp.fft.irfft(jnp.fft.rfft(padded, axis=2) * phase[..., None], n=length, axis=2)[:, :, reach:reach + size]
  return out if axis == 2 else jnp.swapaxes(out, 1, 2)


# ------------------------------------------------------------------------------------------ objectives

@jax.custom_vjp
def redirected_relu(x: jax.Array, redirect: jax.Array) -> jax.Array:
  """ReLU whose backward, while `redirect` (a float32 scalar) is 1, is Lucid's redirected gradient for each
  image whose true gradient is zero across the layer: passed on except where it pushes a negative input lower.
  The cotangent is the loss's (minimised), as in Lucid."""
  return jax.nn.relu(x)


def _redirected_fwd(x, redirect):
  return jax.nn.relu(x), (x, redirect)


def _redirected_bwd(res, g):
  x, redirect = res
  true = jnp.where(x > 0, g, 0)

  def redirected(true):
    stuck = jnp.all(true == 0, axis=tuple(range(1, x.ndim)), keepdims=True)
    return jnp.where(stuck & ~((x < 0) & (g > 0)), g, true)
  return jax.lax.cond(redirect > 0, redirected, lambda true: true, true), jnp.zeros_like(redirect)


redirected_relu.defvjp(_redirected_fwd, _redirected_bwd)


def stage(layer: int) -> str:
  """`attribution.run`'s name of a layer: 'layer{n}', or 'logits' for `CLASS_LAYER`."""
  return 'logits' if layer == CLASS_LAYER else f'layer{layer}'


def diversity_layer(arch: network.Architecture, layer: int) -> int:
  """Where the diversity term compares Gram matrices: `layer` if a conv layer, else the last conv layer."""
  convs = [c.layer for c in arch.convs]
  return layer if layer in convs else convs[-1]


def objective_values(outputs: jax.Array, units: jax.Array, objective: str, negative: bool) -> jax.Array:
  """The objective `[N]` of each output (`[N, h, w, C]` a conv map, `[N, F]` fc units or logits) for its unit
  `units` (`[N]`)."""
  if outputs.ndim == 4:
    h, w = outputs.shape[1:3]
    outputs = outputs[:, h // 2, w // 2] if objective == 'neuron' else jnp.mean(outputs, axis=(1, 2))
  value = jnp.take_along_axis(outputs, units[:, None], axis=1)[:, 0]
  return -value if negative else value


def diversity_penalty(maps: jax.Array, k: int) -> jax.Array:
  """Lucid's diversity term per unit, `[N / k]`: the mean over each unit's `k` images (`[N, h, w, C]`, unit by
  unit) of the summed cosine similarity of its Gram matrix to the others'."""
  flat = maps.reshape(maps.shape[0] // k, k, -1, maps.shape[-1])
  gram = jnp.einsum('ukpa,ukpb->ukab', flat, flat)
  gram = gram / jnp.maximum(jnp.sqrt(jnp.sum(gram * gram, axis=(2, 3), keepdims=True)), 1e-10)
  cos = jnp.einsum('ukab,ujab->ukj', gram, gram)
  return (jnp.sum(cos, axis=(1, 2)) - jnp.trace(cos, axis1=1, axis2=2)) / k


def _objective_and_maps(arch, params, inputs, units, s: Settings, relu=None):
  """`(objective [N], the diversity layer's maps)` of normalised `inputs`."""
  rules = attribution.CUBE['gradient']  # the true forward pass and gradient
  div = stage(diversity_layer(arch, s.layer))
  maps = attribution.run(arch, params, inputs, rules, stop=div, relu=relu)
  outputs = maps if div == stage(s.layer) else attribution.run(arch, params, maps, rules, start=div,
                                                               stop=stage(s.layer), relu=relu)
  return objective_values(outputs, units, s.objective, s.negative), maps


def _image_keys(units: jax.Array, seed: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`(each image's unit, its key)`, `[u * K]` each, unit by unit: the key from `(seed, unit, k)` alone."""
  image_units = jnp.repeat(units, k)
  keys = jax.vmap(lambda u, j: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), u), j))(
      image_units, jnp.tile(jnp.arange(k), units.shape[0]))
  return image_units, keys


def _init_local(arch: network.Architecture, s: Settings, units: jax.Array, seed: jax.Array) -> tuple[Any, Any]:
  """One device's units `[u]`: `(Fourier parameters [u * K, ...], Adam's state)` at the start."""
  _, keys = _image_keys(units, seed, s.diversity)
  fourier = INIT_STD * jax.vmap(lambda key: jax.random.normal(key, param_shape(arch.image_size, arch.in_channels)))(
      keys)
  return fourier, optax.adam(s.learning_rate).init(fourier)


def _step_local(arch: network.Architecture, s: Settings, params: Any, units: jax.Array, seed: jax.Array,
                offset: jax.Array, scale: jax.Array, fourier: jax.Array, state: Any,
                step: jax.Array) -> tuple[jax.Array, Any]:
  """One Adam step of one device's images: each seen through fresh transforms (keyed by `step`), ReLUs redirected
  while `step < s.redirect_steps`."""
  k = s.diversity
  image_units, keys = _image_keys(units, seed, k)

  def loss(fourier):
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)
    seen = jax.vmap(lambda key, image: transform(key, image[None], s.strength)[0])(
        step_keys, to_unit(fourier, arch.image_size))
    redirect = (step < s.redirect_steps).astype(jnp.float32)
    value, maps = _objective_and_maps(arch, params, (255.0 * seen - offset) / scale, image_units, s,
                                      relu=lambda x: redirected_relu(x, redirect))
    total = -jnp.sum(value)
    if k > 1:
      total = total + s.diversity_weight * jnp.sum(diversity_penalty(maps, k))
    return total

  updates, state = optax.adam(s.learning_rate).update(jax.grad(loss)(fourier), state, fourier)
  return optax.apply_updates(fourier, updates), state


def _finish_local(arch: network.Architecture, s: Settings, params: Any, units: jax.Array, offset: jax.Array,
                  scale: jax.Array, fourier: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One device's images: `(pixels, inputs [u, K, S, S, C], activation [u, K])`, the objective without transforms."""
  unit = to_unit(fourier, arch.image_size)
  inputs = (255.0 * unit - offset) / scale
  value, _ = _objective_and_maps(arch, params, inputs, jnp.repeat(units, s.diversity), s)
  shape = (units.shape[0], s.diversity, *unit.shape[1:])
  return (255.0 * unit).reshape(shape), inputs.reshape(shape), value.reshape(shape[:2])


class Programs(NamedTuple):
  """The compiled parts of an optimisation over a mesh, units split over its `data` axis (`jit_programs`)."""
  init: Callable  # (units [U], seed) -> (fourier, state)
  step: Callable  # (params, units, seed, offset, scale, fourier, state, step) -> (fourier, state); donates both
  finish: Callable  # (params, units, offset, scale, fourier) -> (pixels, inputs, activation)


@functools.lru_cache(maxsize=None)
def jit_programs(model: network.ConvNet, settings: Settings, mesh: Mesh | jax.sharding.AbstractMesh) -> Programs:
  """The optimisation's three programs over `mesh`, each device working on its own units with no communication
  (`shard_map`; the units a multiple of the devices). One step per program, looped in Python: XLA:CPU runs the
  same step inside a `fori_loop` 2-3x slower (measured by the benchmark's helper, 2026-11-30), and a dispatch per
  step costs nothing beside a step's convolutions. One set per (model, settings, mesh), shared by every call."""
  arch, data, copies = model.arch, P('data'), P()
  state = jax.eval_shape(functools.partial(_init_local, arch, settings), jnp.zeros((1,), jnp.int32), jnp.int32(0))[1]
  per_state = jax.tree_util.tree_map(lambda leaf: data if leaf.ndim else copies, state)  # Adam's count: a scalar
  options = parallel.compiler_options(mesh)

  def over_mesh(f, in_specs, out_specs, **kwargs):
    return jax.jit(jax.shard_map(functools.partial(f, arch, settings), mesh=mesh, in_specs=in_specs,
                                 out_specs=out_specs), compiler_options=options, **kwargs)
  return Programs(
      over_mesh(_init_local, (data, copies), (data, per_state)),
      over_mesh(_step_local, (copies, data, copies, copies, copies, data, per_state, copies), (data, per_state),
                donate_argnums=(5, 6)),
      over_mesh(_finish_local, (copies, data, copies, copies, data), (data, data, data)))


def check_target(arch: network.Architecture, layer: int, objective: str) -> int:
  """The number of units of `layer` under `objective`; a clear error for a layer or objective that does not fit."""
  if objective not in OBJECTIVES:
    raise ValueError(f'unknown objective {objective!r}: use one of {", ".join(OBJECTIVES)}')
  widths = {**{c.layer: c.features for c in arch.convs}, **dict(arch.fcs)}
  if objective == 'class' or layer == CLASS_LAYER:
    if objective != 'class' or layer != CLASS_LAYER:
      raise ValueError(f'the class objective is the logits, layer {CLASS_LAYER}: use --objective class with '
                       f'--layer {CLASS_LAYER} (got objective {objective!r}, layer {layer})')
    return arch.num_classes
  if layer not in widths:
    raise ValueError(f'layer {layer} is not in this network: it has layers {sorted(widths)} and {CLASS_LAYER} '
                     f'(the logits, objective class)')
  return widths[layer]


def default_chunk(arch: network.Architecture, k: int) -> int:
  """Units per device per compiled call: as many as `CHUNK_BYTES` of activations hold (at least 1)."""
  floats = sum(c.features * conv_out ** 2 for c, (conv_out, _) in zip(arch.convs, arch.map_sizes().values()))
  floats += arch.image_size ** 2 * arch.in_channels * 4
  return max(1, CHUNK_BYTES // (ACTIVATION_BYTES * floats * k))


def optimise(model: network.ConvNet, params: Any, config: ml_collections.ConfigDict, layer: int,
             units: Iterable[int] | None = None, *, objective: str = 'channel', negative: bool = False,
             steps: int = 512, diversity: int = 1, diversity_weight: float = DIVERSITY_WEIGHT, seed: int = 0,
             learning_rate: float = 0.05, strength: float = 1.0, redirect_steps: int = REDIRECT_STEPS,
             chunk: int | None = None, mesh: Mesh | None = None, pixel_mean: np.ndarray | None = None,
             progress: Callable[[int], None] | None = None) -> Result:
  """Visualises `units` (default: all) of `layer` (conv 1-5, fc 6-7; 8 with `objective='class'`): for each,
  `diversity` images optimised for `steps` Adam steps together, over every device of `mesh` (default: every local
  device), `chunk` units per device at a time (default `default_chunk`). `progress(units done)` after each chunk.
  Deterministic from `seed`; a unit's images do not depend on the other units, the chunks or the devices."""
  arch = model.arch
  width = check_target(arch, layer, objective)
  units = np.arange(width, dtype=np.int32) if units is None else np.asarray(list(units), np.int32).reshape(-1)
  if not len(units) or units.min() < 0 or units.max() >= width:
    raise ValueError(f'units must be in 0..{width - 1} for layer {layer} ({objective}), got {units.tolist()}')
  if steps < 1 or diversity < 1:
    raise ValueError(f'steps and diversity must be at least 1, got steps {steps}, diversity {diversity}')
  if config.input.normalization == 'pixel_mean' and pixel_mean is None:
    pixel_mean = squares.pixel_mean(config)
  offset, scale = input_affine(config, arch.in_channels, pixel_mean)
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  devices = mesh.devices.size
  calls = -(-len(units) // (devices * (chunk or default_chunk(arch, diversity))))
  per_call = devices * -(-len(units) // (devices * calls))  # balanced: the last call pads at most devices - 1 units
  settings = Settings(int(layer), objective, bool(negative), int(steps), int(diversity), float(diversity_weight),
                      float(learning_rate), float(strength), int(redirect_steps))
  programs = jit_programs(model, settings, mesh)
  replicated = parallel.replicated(mesh)
  params, offset, scale, seed_array = jax.device_put((jax.device_get(params), offset, scale, np.int32(seed)),
                                                     replicated)
  steps_on_device = [jax.device_put(np.int32(i), replicated) for i in range(steps)]
  wait = parallel.one_step_in_flight()
  parts = []
  for start in range(0, len(units), per_call):
    part = units[start:start + per_call]
    padded = jax.device_put(np.concatenate([part, np.full(per_call - len(part), part[0], np.int32)]),
                            parallel.sharded(mesh))
    fourier, state = programs.init(padded, seed_array)
    for step in steps_on_device:
      fourier, state = programs.step(params, padded, seed_array, offset, scale, fourier, state, step)
      if wait:
        jax.block_until_ready(fourier)
    out = programs.finish(params, padded, offset, scale, fourier)
    parts.append([np.asarray(a)[:len(part)] for a in jax.device_get(out)])
    if progress:
      progress(len(part))
  pixels, inputs, activation = (np.concatenate(a) for a in zip(*parts))
  return Result(units, pixels, inputs, activation)


# ------------------------------------------------------------------------------------------ the yardstick

@functools.lru_cache(maxsize=None)
def _jitted_best(model: network.ConvNet, layers: tuple[int, ...], objective: str, negative: bool) -> Callable:
  def update(best, params, images, mask):
    outputs = network.forward(model, params, images)
    new = {}
    for n in layers:
      out = outputs.logits if n == CLASS_LAYER else outputs.layers[f'layer{n}']
      if out.ndim == 4:
        h, w = out.shape[1:3]
        out = out[:, h // 2, w // 2] if objective == 'neuron' else jnp.mean(out, axis=(1, 2))
      out = -out if negative else out
      new[n] = jnp.maximum(best[n], jnp.max(jnp.where(mask[:, None] > 0, out, -jnp.inf), axis=0))
    return new
  return jax.jit(update)


def dataset_best(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                 layers: Iterable[int], objective: str = 'channel', negative: bool = False,
                 mesh: Mesh | None = None) -> dict[int, np.ndarray]:
  """The strongest value of the objective over the images of `batches` (`image`, `mask`), per unit of each layer:
  `{layer: float32 [units]}` (the map mean over each whole image for `channel`, not the top-k's strongest
  position). One pass for all layers, data-parallel over `mesh` (default: every device of every process, each
  process passing its rows of each global batch, as `topk.stream_units`)."""
  layers = tuple(layers)
  for n in layers:
    check_target(model.arch, n, 'class' if n == CLASS_LAYER else objective)
  mesh = mesh or parallel.make_mesh()
  widths = {**{c.layer: c.features for c in model.arch.convs}, **dict(model.arch.fcs),
            CLASS_LAYER: model.arch.num_classes}
  update = _jitted_best(model, layers, objective, negative)
  replicated = parallel.replicated(mesh)
  params = jax.device_put(jax.device_get(params), replicated)
  best = jax.device_put({n: np.full(widths[n], -np.inf, np.float32) for n in layers}, replicated)
  wait = parallel.one_step_in_flight()
  for batch in batches:
    placed = parallel.global_batch(mesh, {'image': batch['image'], 'mask': batch['mask']})
    best = update(best, params, placed['image'], placed['mask'])
    if wait:
      jax.block_until_ready(best)
  return {n: np.asarray(v) for n, v in jax.device_get(best).items()}


def beats_dataset(activation: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(beats, live)`, bool `[U]` each: whether a unit's strongest visualisation (`activation` `[U, K]`) exceeds its
  best dataset image (`best` `[U]`, `dataset_best`), and whether the unit is live (its best image > 0)."""
  best = np.asarray(best)
  return np.max(np.asarray(activation), axis=1) > best, best > 0
