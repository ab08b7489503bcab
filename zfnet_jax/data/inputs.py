"""Network inputs from files: an image file preprocessed as evaluation does, or a `.npy` network input.

For `predict` and the `visualize` commands that take `--image` / `--images`.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from zfnet_jax.data import augment, preprocess, squares


def load_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The network input `[image_size, image_size, in_channels]` float32 for an image file or a `.npy` array:
  the image's square, its centre crop, normalised as in training."""
  size, channels = config.model.image_size, config.model.in_channels
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no image file {path!r}')
  if path.endswith('.npy'):
    try:
      x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # empty, truncated, not .npy, or a pickled object
      raise ValueError(f'{path} is not a readable .npy array ({type(e).__name__}: {e}); save the preprocessed input '
                       f'with np.save, or pass the image file to be preprocessed') from None
    if x.shape != (size, size, channels) or x.dtype != np.float32:
      raise ValueError(f'{path} holds a {x.dtype} array {list(x.shape)}; a preprocessed input for this config is '
                       f'float32 {[size, size, channels]} (or pass the image file to be preprocessed)')
    return x
  with open(path, 'rb') as f:
    data = f.read()
  try:
    pixels = preprocess.square(preprocess.decode(data, channels, path), config.input.resize_size)
  except ValueError:
    raise ValueError(f'{path} is neither a .npy array nor an image file PIL can decode '
                     f'(PNG, JPEG, GIF, BMP, ...)') from None
  mean = squares.pixel_mean(config)
  return np.asarray(augment.center_crops(pixels[None], config, mean)[0])
