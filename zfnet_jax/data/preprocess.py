"""The deterministic half of the paper's preprocessing, on the host with PIL: any image file -> a square.

"resizing the smallest dimension to 256, cropping the center 256x256 region": done once per image when
the squares are prepared (`data/squares.py`), and for single files given to `predict` / `visualize`
(`data/inputs.py`).
The random half (crops, flips) and the normalisation run on the device (`data/augment.py`).
"""
from __future__ import annotations

import io

import numpy as np
import PIL.Image


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
