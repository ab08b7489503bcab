"""The deterministic half of the paper's preprocessing, on the host with PIL: any image file -> a square.

"resizing the smallest dimension to 256, cropping the center 256x256 region": done once per image when
the squares are prepared (`data/squares.py`), and for single files given to `predict` / `visualize`.
The random half (crops, flips) and the normalisation run on the device (`data/augment.py`).
"""
from __future__ import annotations

import io
import os

import ml_collections
import numpy as np
import PIL.Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixels in [0, 255]
IMAGENET_STD = (58.395, 57.12, 57.375)


def decode(data: bytes, channels: int, name: str = 'image') -> PIL.Image.Image:
  """Image file bytes (JPEG, PNG, CMYK or grey JPEG, PNG bytes named .JPEG, ...) -> PIL image in
  'RGB' (`channels == 3`) or 'L' (1). PIL's decoders release the GIL, so threads decode in parallel."""
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      return image.convert('RGB' if channels == 3 else 'L')
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'corrupt or unreadable image file {name} ({e}): remove or replace it') from None


def square(image: PIL.Image.Image, size: int) -> np.ndarray:
  """PIL image -> uint8 `[size, size, C]`: short side to `size` (bilinear, antialiased when shrinking),
  then the central `size x size` region."""
  w, h = image.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  image = image.resize((new_w, new_h), PIL.Image.BILINEAR)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
  return pixels if pixels.ndim == 3 else pixels[..., None]


def load_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The network input `[image_size, image_size, in_channels]` float32 for an image file or a `.npy` array:
  the image's square, its centre crop, normalised as in training."""
  from zfnet_jax.data import augment, squares  # noqa: PLC0415  (augment imports jax)
  size, channels = config.model.image_size, config.model.in_channels
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no image file {path!r}')
  if path.endswith('.npy'):
    x = np.load(path)
    if x.shape != (size, size, channels) or x.dtype != np.float32:
      raise ValueError(f'{path} holds a {x.dtype} array {list(x.shape)}; a preprocessed input for this config is '
                       f'float32 {[size, size, channels]} (or pass the image file to be preprocessed)')
    return x
  with open(path, 'rb') as f:
    data = f.read()
  try:
    pixels = square(decode(data, channels, path), config.input.resize_size)
  except ValueError:
    raise ValueError(f'{path} is neither a .npy array nor an image file PIL can decode '
                     f'(PNG, JPEG, GIF, BMP, ...)') from None
  mean = squares.pixel_mean(config)
  return np.asarray(augment.center_crops(pixels[None], config, mean)[0])
