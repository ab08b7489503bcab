"""The paper's preprocessing in TensorFlow: short side to 256, centre square, crops, flips, mean subtraction."""
from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixels in [0, 255]
IMAGENET_STD = (58.395, 57.12, 57.375)


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Grey <-> RGB as the network needs; tfds image features have a static channel count."""
  have = image.shape[-1]
  if have == channels:
    return image
  if channels == 3:
    return tf.image.grayscale_to_rgb(image[..., :1])
  return tf.image.rgb_to_grayscale(image[..., :3])


def _resize_short_side_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Short side to `size`, then the central `size x size` square (the paper's 256x256 image)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  scale = size / tf.cast(tf.minimum(h, w), tf.float32)
  new_hw = tf.cast(tf.math.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
  new_hw = tf.maximum(new_hw, size)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return image[top:top + size, left:left + size]


def _normalize(image: tf.Tensor, mode: str) -> tf.Tensor:
  """`[H, W, C]` float pixels in [0, 255] -> network input."""
  channels = image.shape[-1]
  mean = tf.constant(IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,), tf.float32)
  if mode == 'mean':
    return image - mean
  std = tf.constant(IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,), tf.float32)
  return (image - mean) / std


def check_config(config: ml_collections.ConfigDict) -> None:
  i, size = config.input, config.model.image_size
  if i.crop not in ('paper', 'inception'):
    raise ValueError(f"config.input.crop must be 'paper' or 'inception', got {i.crop!r}")
  if i.normalization not in ('mean', 'mean_std'):
    raise ValueError(f"config.input.normalization must be 'mean' or 'mean_std', got {i.normalization!r}")
  if i.resize_size < size:
    raise ValueError(f'config.model.image_size={size} crops are larger than the {i.resize_size}px resized '
                     f'images: set config.input.resize_size >= image_size')


def eval_image(image: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 `[H, W, C]` -> float32 `[S, S, in_channels]`: short side to resize_size, centre S crop."""
  image = _to_channels(image, config.model.in_channels)
  image = _resize_short_side_and_center_crop(image, config.input.resize_size)
  size, off = config.model.image_size, (config.input.resize_size - config.model.image_size) // 2
  image = image[off:off + size, off:off + size]
  return _normalize(image, config.input.normalization)


def train_image(image: tf.Tensor, seed: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 `[H, W, C]` -> float32 `[S, S, in_channels]`, random crop (and flip) seeded by `seed` `[2]`."""
  size, channels = config.model.image_size, config.model.in_channels
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _to_channels(image, channels)
  if config.input.crop == 'inception':
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
  else:
    image = _resize_short_side_and_center_crop(image, config.input.resize_size)
    image = tf.image.stateless_random_crop(image, (size, size, channels), seed=crop_seed)
  if config.input.flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  image = tf.ensure_shape(image, (size, size, channels))
  return _normalize(image, config.input.normalization)


def load_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The network input `[image_size, image_size, in_channels]` float32 for an image file or a `.npy` array."""
  size, channels = config.model.image_size, config.model.in_channels
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no image file {path!r}')
  if path.endswith('.npy'):
    x = np.load(path)
    if x.shape != (size, size, channels) or x.dtype != np.float32:
      raise ValueError(f'{path} holds a {x.dtype} array {list(x.shape)}; a preprocessed input for this config is '
                       f'float32 {[size, size, channels]} (or pass the image file to be preprocessed)')
    return x
  try:
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
  except tf.errors.InvalidArgumentError:
    raise ValueError(f'{path} is neither a .npy array nor an image file TensorFlow can decode '
                     f'(PNG, JPEG, GIF, BMP)') from None
  return eval_image(image, config).numpy()
