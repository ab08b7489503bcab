"""Correspondence (Table 1): how consistently masking the same part of different images changes features.

Masks are 0 in the network's input space, i.e. the dataset's mean pixel under both normalisations.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zfnet_jax.model import network


def mask_boxes(images: jax.Array, boxes: jax.Array, fill: float = 0.0) -> jax.Array:
  """`[N, H, W, C]` images with box `i` = (top, left, height, width) of image `i` set to `fill`."""
  h, w = images.shape[1:3]
  r, c = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  top, left, height, width = (boxes[:, i, None, None] for i in range(4))
  inside = (r >= top) & (r < top + height) & (c >= left) & (c < left + width)
  return jnp.where(inside[..., None], fill, images)


def sign_disagreement(eps: jax.Array) -> jax.Array:
  """Table 1's Delta for `[N, F]` feature differences: the mean over ordered pairs `i != j` of the
  normalised Hamming distance between `sign(eps_i)` and `sign(eps_j)` (0: identical signs)."""
  s = jnp.sign(eps)
  n = s.shape[0]
  differ = jnp.mean(s[:, None, :] != s[None, :, :], axis=-1)  # [N, N], zero diagonal
  return jnp.sum(differ) / (n * (n - 1))


def default_layers(arch: network.Architecture) -> tuple[int, ...]:
  """Table 1's layers 5 and 7 in any network: the last conv layer and the last hidden layer present."""
  return tuple(dict.fromkeys((arch.convs[-1].layer, arch.layer_numbers[-1])))


def correspondence(model: network.ConvNet, params: Any, images: jax.Array, boxes: jax.Array,
                   layer_numbers: tuple[int, ...] | None = None, fill: float = 0.0) -> dict[int, jax.Array]:
  """Table 1: `{layer: Delta_l}` for `[N, H, W, C]` images with the same part masked by `boxes` `[N, 4]`
  (top, left, height, width) at each of `layer_numbers` (default: `default_layers`); eps_i = features of
  image i minus those of its masked copy."""
  layer_numbers = default_layers(model.arch) if layer_numbers is None else layer_numbers
  plain = network.forward(model, params, images).layers
  masked = network.forward(model, params, mask_boxes(images, boxes, fill)).layers
  return {n: sign_disagreement((plain[f'layer{n}'] - masked[f'layer{n}']).reshape(len(images), -1))
          for n in layer_numbers}


def random_boxes(rng: np.random.Generator, boxes: np.ndarray, image_size: int) -> np.ndarray:
  """The baseline's masks: boxes of the same sizes at uniformly random positions inside the image."""
  boxes = np.array(boxes)
  for i in range(len(boxes)):
    boxes[i, 0] = rng.integers(0, image_size - boxes[i, 2] + 1)
    boxes[i, 1] = rng.integers(0, image_size - boxes[i, 3] + 1)
  return boxes


_correspondence = jax.jit(correspondence, static_argnums=(0, 4))


def with_random_baseline(model: network.ConvNet, params: Any, images: np.ndarray, boxes: np.ndarray,
                         layer_numbers: tuple[int, ...], draws: int,
                         rng: np.random.Generator) -> tuple[dict[int, float], dict[int, list[float]]]:
  """Table 1 for one part: `({layer: Delta}` of `boxes` `[N, 4]` on `[N, H, W, C]` images, `{layer: [draws]
  Deltas})` of `draws` sets of `random_boxes` of the same sizes, the paper's "random" row."""
  layer_numbers = tuple(layer_numbers)
  part = {n: float(v) for n, v in _correspondence(model, params, images, boxes, layer_numbers).items()}
  random: dict[int, list[float]] = {n: [] for n in layer_numbers}
  for _ in range(draws):
    moved = random_boxes(rng, boxes, model.arch.image_size)
    for n, v in _correspondence(model, params, images, moved, layer_numbers).items():
      random[n].append(float(v))
  return part, random
