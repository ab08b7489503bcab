"""The random half of the preprocessing, on the device inside the jitted steps: uint8 squares -> network inputs.

Pure jax functions. A training example's crop and flip are drawn from
`fold_in(fold_in(parallel.stream_key(seed, 'crops'), step), i)`, `i` its index in the global batch, so they depend on
(seed, step, example) only: not on the host count, the device count or a resume.
- `paper` crops: a random `image_size` window of the square, flipped left-right with probability 1/2.
- `inception` crops: a random-resized crop (area 8-100%, aspect 3/4-4/3) of the square, resized to
  `image_size` with `jax.image.scale_and_translate` (bilinear, antialiased). It sees only the square,
  not the whole original image, and costs one resampling per example on the device (about 30 MFLOP
  for a 224x224x3 output: under 1% of ZFNet's 6.65 GFLOP train step).
Normalisation: `mean` (ImageNet's channel means), `mean_std` (also divided by the channel stds) or
`pixel_mean` (the per-pixel mean image of the train squares, the paper's choice; `squares.pixel_mean`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zfnet_jax import parallel

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixels in [0, 255]
IMAGENET_STD = (58.395, 57.12, 57.375)
CROPS = ('paper', 'inception')
NORMALIZATIONS = ('mean', 'mean_std', 'pixel_mean')


def check_config(config: ml_collections.ConfigDict) -> None:
  """The `input` fields this module reads; errors name the field and the choices."""
  i, size = config.input, config.model.image_size
  if i.crop not in CROPS:
    raise ValueError(f'config.input.crop must be one of {CROPS}, got {i.crop!r}')
  if i.normalization not in NORMALIZATIONS:
    raise ValueError(f'config.input.normalization must be one of {NORMALIZATIONS}, got {i.normalization!r}')
  if i.resize_size < size:
    raise ValueError(f'config.model.image_size={size} crops are larger than the {i.resize_size}px squares: '
                     f'set config.input.resize_size >= image_size')


def channel_stats(channels: int) -> tuple[np.ndarray, np.ndarray]:
  """ImageNet's per-channel `(mean, std)` in [0, 255] pixels, float32 `[C]`: RGB as they are; a grey
  channel gets the mean of the three (the one grey mean of the package: inputs, displays, benchmarks)."""
  mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
  if channels == 1:
    return mean.mean(keepdims=True), std.mean(keepdims=True)
  if channels != 3:
    raise ValueError(f'images have 1 (grey) or 3 (RGB) channels, got {channels}')
  return mean, std


def normalize(images: jax.Array, normalization: str, pixel_mean: np.ndarray | None = None) -> jax.Array:
  """uint8 `[..., R, R, C]` pixels -> float32 network values (`pixel_mean`: float32 `[R, R, C]`)."""
  x = jnp.asarray(images).astype(jnp.float32)
  if normalization == 'pixel_mean':
    return x - jnp.asarray(pixel_mean, jnp.float32)
  mean, std = channel_stats(x.shape[-1])
  x = x - mean
  return x / std if normalization == 'mean_std' else x


def _paper_crop(key: jax.Array, image: jax.Array, size: int) -> jax.Array:
  r = image.shape[0]
  y, x = jax.random.randint(key, (2,), 0, r - size + 1)
  return jax.lax.dynamic_slice(image, (y, x, 0), (size, size, image.shape[-1]))


def _inception_crop(key: jax.Array, image: jax.Array, size: int) -> jax.Array:
  r = image.shape[0]
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = r * r * jax.random.uniform(k_area, (), minval=0.08, maxval=1.0)
  ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=np.log(3 / 4), maxval=np.log(4 / 3)))
  w = jnp.clip(jnp.sqrt(area * ratio), 1.0, r)
  h = jnp.clip(jnp.sqrt(area / ratio), 1.0, r)
  y, x = jax.random.uniform(k_y) * (r - h), jax.random.uniform(k_x) * (r - w)
  scale = jnp.stack([size / h, size / w])
  return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale, -jnp.stack([y, x]) * scale,
                                       method='linear', antialias=True)


def train_inputs(images: jax.Array, step: jax.Array, *, seed: int, size: int, crop: str, flip: bool,
                 normalization: str, pixel_mean: np.ndarray | None = None) -> jax.Array:
  """uint8 squares `[B, R, R, C]` of global batch `step` -> float32 network inputs `[B, size, size, C]`."""
  base = jax.random.fold_in(parallel.stream_key(seed, 'crops'), step)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(images.shape[0]))
  cut = _paper_crop if crop == 'paper' else _inception_crop

  def one(key, image):
    k_crop, k_flip = jax.random.split(key)
    out = cut(k_crop, image, size)
    return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out) if flip else out
  return jax.vmap(one)(keys, normalize(images, normalization, pixel_mean))


def train_inputs_fn(config: ml_collections.ConfigDict, pixel_mean: np.ndarray | None) -> Callable:
  """`train_inputs` with `config`'s fields: `(images, step) -> inputs`, for `steps.jit_steps`."""
  check_config(config)
  i = config.input
  return functools.partial(train_inputs, seed=config.seed, size=config.model.image_size, crop=i.crop, flip=i.flip,
                           normalization=i.normalization, pixel_mean=pixel_mean)


def normalize_fn(config: ml_collections.ConfigDict, pixel_mean: np.ndarray | None) -> Callable:
  """`normalize` with `config`'s fields: `squares -> float squares`, for `evaluation.jit_eval_step`."""
  check_config(config)
  return functools.partial(normalize, normalization=config.input.normalization, pixel_mean=pixel_mean)


def center_crops(squares: jax.Array, config: ml_collections.ConfigDict, pixel_mean: np.ndarray | None) -> jax.Array:
  """uint8 squares `[B, R, R, C]` -> normalised centre crops `[B, S, S, C]` (offset `(R - S) // 2`)."""
  s, r = config.model.image_size, squares.shape[1]
  off = (r - s) // 2
  return normalize_fn(config, pixel_mean)(squares)[:, off:off + s, off:off + s]
