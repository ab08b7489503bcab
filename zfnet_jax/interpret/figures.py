"""Figures of the deconvnet and the analyses: network inputs and projections as pixels, mosaics, writers.

Display conventions: network inputs go back to RGB pixels in [0, 1] (the config's normalisation undone,
grey repeated to 3 channels); projections are scaled each on its own, with grey at zero.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from zfnet_jax.data import preprocess
from zfnet_jax.interpret import topk


def to_display(images: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """Network inputs `[..., C]` back to RGB pixels in [0, 1] (grey repeated to 3 channels)."""
  channels = images.shape[-1]
  mean = np.asarray(preprocess.IMAGENET_MEAN if channels == 3 else [np.mean(preprocess.IMAGENET_MEAN)])
  std = np.asarray(preprocess.IMAGENET_STD if channels == 3 else [np.mean(preprocess.IMAGENET_STD)])
  pixels = images * std + mean if config.input.normalization == 'mean_std' else images + mean
  return _rgb(np.clip(pixels / 255.0, 0.0, 1.0))


def reconstruction_display(recon: np.ndarray) -> np.ndarray:
  """Reconstructions `[..., H, W, C]` to RGB in [0, 1], each scaled on its own: grey is zero."""
  scale = np.abs(recon).max(axis=(-3, -2, -1), keepdims=True)
  return _rgb(0.5 + recon / (2 * np.where(scale > 0, scale, 1.0)))


def _rgb(x: np.ndarray) -> np.ndarray:
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1, background: float = 1.0) -> np.ndarray:
  """`[N, h, w, 3]` tiles -> one `[rows*(h+gap)-gap, columns*(w+gap)-gap, 3]` image, row by row."""
  n, h, w, _ = tiles.shape
  rows = -(-n // columns)
  out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), background, np.float32)
  for i, tile in enumerate(tiles):
    r, c = divmod(i, columns)
    out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
  return out


class Writer:
  """Writes figures and arrays into the output folder and prints each path."""

  def __init__(self, out: str):
    self.out = out
    os.makedirs(out, exist_ok=True)

  def path(self, name: str) -> str:
    path = os.path.join(self.out, name)
    print(path)
    return path

  def arrays(self, name: str, **arrays: Any) -> None:
    np.savez(self.path(name), **{k: np.asarray(v) for k, v in arrays.items()})

  def figure(self, name: str, fig: Any) -> None:
    fig.savefig(self.path(name), dpi=fig.dpi, bbox_inches='tight')
    pyplot().close(fig)


def pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def image_figure(image: np.ndarray, title: str, pixels_per_inch: float = 100.0):
  """A figure showing an `[H, W, 3]` image at one figure pixel per image pixel (at least 4 inches wide)."""
  plt = pyplot()
  h, w = image.shape[:2]
  scale = max(1.0, 400.0 / w)
  fig = plt.figure(figsize=(w * scale / pixels_per_inch, h * scale / pixels_per_inch + 0.4), dpi=pixels_per_inch)
  ax = fig.add_axes((0, 0, 1, h * scale / (h * scale + 40)))
  ax.imshow(image, interpolation='nearest')
  ax.set_axis_off()
  fig.suptitle(title, fontsize=10)
  return fig, ax


def topk_figure(result: topk.TopKProjections, config, title: str):
  """Fig. 2 for one layer: per feature map, its k reconstructions (left) beside their image patches (right)."""
  m, k = result.top.value.shape
  side = int(np.ceil(np.sqrt(k)))
  zoom = max(1, 48 // result.patch.shape[2])  # small patches (low layers) enlarged to be visible
  big = lambda tiles: tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)  # noqa: E731
  cells = [np.concatenate([mosaic(big(reconstruction_display(result.reconstruction[i])), side),
                           np.ones((side * (result.patch.shape[2] * zoom + 1) - 1, 4, 3), np.float32),
                           mosaic(big(to_display(result.patch[i], config)), side)], axis=1) for i in range(m)]
  columns = int(np.ceil(np.sqrt(m)))
  grid = mosaic(np.stack(cells), columns, gap=max(6, cells[0].shape[0] // 12))
  fig, ax = image_figure(grid, title)
  h, w = cells[0].shape[:2]
  gap = max(6, h // 12)
  for i, channel in enumerate(result.channel):
    r, c = divmod(i, columns)
    ax.text(c * (w + gap), r * (h + gap), f'map {channel}', fontsize=7, color='yellow', va='top',
            bbox={'facecolor': 'black', 'alpha': 0.6, 'pad': 1, 'linewidth': 0})
  return fig
