"""Figures of the deconvnet and the analyses: inputs and projections as pixels, mosaics, one figure per
visualize command (a function of the arrays it computed, returning a matplotlib Figure), the writer.

Display conventions: network inputs go back to RGB pixels in [0, 1] (the config's normalisation undone,
grey repeated to 3 channels); projections are scaled each on its own, with grey at zero.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from zfnet_jax.data import augment
from zfnet_jax.interpret import occlusion, projection, topk


def to_display(images: np.ndarray, config: ml_collections.ConfigDict,
               pixel_mean: np.ndarray | None = None) -> np.ndarray:
  """Network inputs `[..., C]` back to RGB pixels in [0, 1] (grey repeated to 3 channels), the config's
  normalisation undone with `augment.channel_stats`.

  Under `pixel_mean` normalisation the caller passes the mean image `[R, R, C]` (`squares.pixel_mean`). A
  patch's place in the square is not known here, so the mean image's per-channel average is added back:
  exact up to the mean image's spatial variation.
  """
  normalization = config.input.normalization
  mean, std = augment.channel_stats(images.shape[-1])
  if normalization == 'pixel_mean':
    if pixel_mean is None:
      raise ValueError('inputs normalised by the mean image: pass it, pixel_mean=squares.pixel_mean(config)')
    mean = np.asarray(pixel_mean, np.float32).mean(axis=(0, 1))
  images = np.asarray(images, np.float32)  # float32 throughout: these arrays can be large (report sprites)
  pixels = images * std + mean if normalization == 'mean_std' else images + mean
  pixels *= np.float32(1 / 255)  # in place: report sprites pass thousands of windows at once
  return _rgb(np.clip(pixels, 0.0, 1.0, out=pixels))


def reconstruction_display(recon: np.ndarray) -> np.ndarray:
  """Reconstructions `[..., H, W, C]` to RGB in [0, 1], each scaled on its own: grey is zero."""
  recon = np.asarray(recon, np.float32)
  scale = np.abs(recon).max(axis=(-3, -2, -1), keepdims=True)
  return _rgb(np.float32(0.5) + recon / (2 * np.where(scale > 0, scale, np.float32(1.0))))


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


def featurevis_grid(pixels: np.ndarray, min_tile: int = 96) -> np.ndarray:
  """Feature visualisations `[U, K, H, W, C]` (pixels in [0, 255]) as one RGB image in [0, 1]: a unit's K images
  per row when K > 1, else the units in a square grid; tiles enlarged pixel for pixel to at least `min_tile` px."""
  u, k, h = pixels.shape[:3]
  tiles = _rgb(np.asarray(pixels, np.float32).reshape(u * k, h, h, -1) / 255)
  factor = max(1, -(-min_tile // h))
  tiles = np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)
  return mosaic(tiles, k if k > 1 else int(np.ceil(np.sqrt(u))), gap=2)


def featurevis_beside_topk(pixels: np.ndarray, result: topk.TopKProjections, config: ml_collections.ConfigDict,
                           pixel_mean: np.ndarray | None = None) -> np.ndarray:
  """One row per unit: its feature visualisations (`[U, K, S, S, C]` pixels in [0, 255]), then its top k
  deconvnet projections (each on its own scale, grey at zero) and the image patches they come from (`result`, the
  same units), the patches enlarged pixel for pixel towards `S`: an RGB image in [0, 1]."""
  u, count, size = pixels.shape[:3]
  patch = result.patch.shape[2]
  zoom = max(1, size // patch)
  tile = lambda x: np.pad(np.repeat(np.repeat(x, zoom, axis=-3), zoom, axis=-2),  # noqa: E731
                          [(0, 0)] * (x.ndim - 3) + [(0, size - patch * zoom), (0, size - patch * zoom), (0, 0)],
                          constant_values=1.0)
  gap = np.ones((size, 8, 3), np.float32)
  rows = []
  for i in range(u):
    parts = [mosaic(_rgb(pixels[i] / 255), count, gap=1), gap,
             mosaic(tile(reconstruction_display(result.reconstruction[i])), len(result.patch[i]), gap=1), gap,
             mosaic(tile(to_display(result.patch[i], config, pixel_mean)), len(result.patch[i]), gap=1)]
    rows.append(np.concatenate(parts, axis=1))
  return mosaic(np.stack(rows), 1, gap=6)


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
  """matplotlib's pyplot, off screen, drawing every text literally: class and file names such as `$\\foo$`
  would otherwise start mathtext (which fails on them), and no figure here uses mathtext."""
  import matplotlib
  matplotlib.use('Agg')
  matplotlib.rcParams['text.parse_math'] = False
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


def topk_figure(result: topk.TopKProjections, config: ml_collections.ConfigDict, title: str,
                pixel_mean: np.ndarray | None = None):
  """Fig. 2 for one layer: per feature map, its k reconstructions (left) beside their image patches (right)."""
  m, k = result.top.value.shape
  side = int(np.ceil(np.sqrt(k)))
  zoom = max(1, 48 // result.patch.shape[2])  # small patches (low layers) enlarged to be visible
  big = lambda tiles: tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)  # noqa: E731
  cells = [np.concatenate([mosaic(big(reconstruction_display(result.reconstruction[i])), side),
                           np.ones((side * (result.patch.shape[2] * zoom + 1) - 1, 4, 3), np.float32),
                           mosaic(big(to_display(result.patch[i], config, pixel_mean)), side)], axis=1)
           for i in range(m)]
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


def project_figure(image: np.ndarray, proj: projection.Projection, config: ml_collections.ConfigDict, source: str,
                   layer: int, pixel_mean: np.ndarray | None = None):
  """Section 2.1 for one activation of conv `layer`: the image `[S, S, C]` with the unit's receptive field,
  the image patch of the projection's window, and the projection cropped to it."""
  plt = pyplot()
  (top, left), size, box = proj.window, proj.size, proj.receptive_field
  fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
  axes[0].imshow(to_display(image, config, pixel_mean))
  axes[0].add_patch(plt.Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1], box[2] - box[0], fill=False,
                                  edgecolor='red', linewidth=1.5))
  axes[0].set_title(f'{source}\nreceptive field (red)', fontsize=9)
  axes[1].imshow(to_display(image[top:top + size, left:left + size], config, pixel_mean), interpolation='nearest')
  axes[1].set_title('image patch', fontsize=9)
  axes[2].imshow(reconstruction_display(proj.reconstruction[top:top + size, left:left + size]),
                 interpolation='nearest')
  axes[2].set_title(f'projection of layer {layer}, map {proj.channel}\nat {proj.position}, activation '
                    f'{proj.value:.3g}', fontsize=9)
  for ax in axes:
    ax.set_axis_off()
  return fig


def filters_figure(kernel: np.ndarray, stride: int):
  """Fig. 6: first-layer filters `[k, k, C_in, F]`, each on its own scale with grey at zero."""
  k = kernel.shape[0]
  tiles = reconstruction_display(np.moveaxis(kernel, -1, 0))
  zoom = max(1, 48 // k)
  tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
  rms = np.sqrt(np.mean(kernel ** 2, axis=(0, 1, 2)))
  dead = int(np.sum(rms < 0.05 * np.median(rms)))
  grid = mosaic(tiles, int(np.ceil(np.sqrt(len(tiles)))), gap=2)
  fig, _ = image_figure(grid, f'layer-1 filters: {len(tiles)} of {k}x{k}, stride {stride} ({dead} with RMS '
                              f'below 5% of the median)')
  return fig


def occlusion_figure(result: occlusion.Sensitivity, image: np.ndarray, reconstruction: np.ndarray,
                     config: ml_collections.ConfigDict, names: list[str], source: str, layer: int,
                     pixel_mean: np.ndarray | None = None):
  """Fig. 7 (a)-(e) from the `occlusion.Sensitivity` of `image` `[S, S, C]` and the projection `[S, S, C]` of
  the top conv `layer`'s strongest activation of `result.maps.feature`."""
  plt = pyplot()
  maps, label, size, stride = result.maps, result.label, result.size, result.stride
  fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
  s = image.shape[0]
  extent = (maps.cols[0] + size / 2 - stride / 2, maps.cols[-1] + size / 2 + stride / 2,
            maps.rows[-1] + size / 2 + stride / 2, maps.rows[0] + size / 2 - stride / 2)  # square centres
  axes[0].imshow(to_display(image, config, pixel_mean))
  axes[0].add_patch(plt.Rectangle((-0.5, -0.5), size, size, color=(0.5, 0.5, 0.5), alpha=0.9))
  axes[0].set_title(f'(a) {source}, true class {names[label]}\ngrey square {size} px, stride {stride}', fontsize=9)
  panels = [(maps.activity, f'(b) total activity of layer-{layer} map {int(maps.feature)}', 'viridis'),
            (maps.probability, f'(d) p({names[label]})', 'magma')]
  for ax, (values, title, cmap) in zip((axes[1], axes[3]), panels):
    shown = ax.imshow(np.asarray(values), extent=extent, cmap=cmap, interpolation='nearest')
    bar = fig.colorbar(shown, ax=ax, fraction=0.046)
    bar.formatter.set_useOffset(False)
    ax.set_title(title + '\nby square position', fontsize=9)
  axes[2].imshow(reconstruction_display(np.asarray(reconstruction)))
  axes[2].set_title(f'(c) projection of map {int(maps.feature)}\'s strongest activation', fontsize=9)
  top_class = np.asarray(maps.top_class)
  present = np.unique(top_class)
  shown = axes[4].imshow(np.searchsorted(present, top_class), extent=extent, cmap='tab20',
                         vmin=-0.5, vmax=19.5, interpolation='nearest')
  axes[4].set_title('(e) most probable class\nby square position', fontsize=9)
  axes[4].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=shown.cmap(shown.norm(i)))
                          for i in range(min(len(present), 20))],
                 labels=[names[c] for c in present[:20]], fontsize=7, loc='upper left', bbox_to_anchor=(1, 1))
  for ax in axes:
    ax.set_xlim(-0.5, s - 0.5), ax.set_ylim(s - 0.5, -0.5), ax.set_xticks([]), ax.set_yticks([])
  return fig


def correspondence_figure(masked: np.ndarray, sources: list[str], part: dict[int, float],
                          random: dict[int, list[float]], config: ml_collections.ConfigDict,
                          pixel_mean: np.ndarray | None = None):
  """Table 1 as a figure: the `[N, S, S, C]` masked images, and per layer the Delta of the masked part
  beside the mean +- std of the random masks' Deltas."""
  plt = pyplot()
  layer_numbers = list(part)
  fig, axes = plt.subplots(1, len(masked) + 1, figsize=(2.4 * (len(masked) + 1), 2.8))
  for ax, image, source in zip(axes, masked, sources):
    ax.imshow(to_display(image, config, pixel_mean))
    ax.set_title(source, fontsize=8)
    ax.set_axis_off()
  x = np.arange(len(layer_numbers))
  axes[-1].bar(x - 0.2, [part[n] for n in layer_numbers], 0.4, label='masked part')
  axes[-1].bar(x + 0.2, [np.mean(random[n]) for n in layer_numbers], 0.4,
               yerr=[np.std(random[n]) for n in layer_numbers], label='random masks')
  axes[-1].set_xticks(x, [f'layer {n}' for n in layer_numbers])
  axes[-1].set_title('Delta (lower: more\nconsistent change)', fontsize=8)
  axes[-1].legend(fontsize=7)
  return fig


INVARIANCE_UNITS = {'translation': 'vertical shift (pixels)', 'scale': 'scale (ratio)',
                    'rotation': 'rotation (degrees)'}


def invariance_figure(amounts: dict[str, np.ndarray], results: dict[str, dict[str, np.ndarray]],
                      curve_labels: list[str]):
  """Fig. 5: per transformation (rows) and per layer distance `'layer{n}'` and `'probability'` (columns),
  one curve `[T]` per image over the `amounts` `[T]` of that transformation."""
  plt = pyplot()
  kinds = list(results)
  keys = list(results[kinds[0]])
  fig, axes = plt.subplots(len(kinds), len(keys), figsize=(4 * len(keys), 3.3 * len(kinds)), squeeze=False)
  for row, kind in enumerate(kinds):
    for col, key in enumerate(keys):
      ax = axes[row, col]
      for i, label in enumerate(curve_labels):
        ax.plot(amounts[kind], results[kind][key][i], marker='.', label=label)
      ax.set_xlabel(INVARIANCE_UNITS[kind], fontsize=9)
      ax.set_ylabel('p(true class)' if key == 'probability' else f'layer-{key[len("layer"):]} distance', fontsize=9)
  axes[0, -1].legend(fontsize=7)
  fig.suptitle('Invariance (Fig. 5): Euclidean feature distance to the untransformed image, and the '
               'true-class probability')
  fig.tight_layout()
  return fig


def evolution_figure(steps: list[int], channels: dict[int, np.ndarray], reconstructions: dict[int, np.ndarray]):
  """Fig. 4: per layer, each map's strongest activation projected (`reconstructions[layer]`
  `[T, M, R, R, C]`), one column per checkpoint step `[T]`."""
  plt = pyplot()
  layer_numbers = list(channels)
  rows = max(len(channels[n]) for n in layer_numbers)
  fig, axes = plt.subplots(1, len(layer_numbers), figsize=(0.9 * len(steps) * len(layer_numbers) + 1.5,
                                                          0.9 * rows + 1.2), squeeze=False, layout='constrained')
  for ax, n in zip(axes[0], layer_numbers):
    tiles = np.moveaxis(reconstruction_display(reconstructions[n]), 0, 1)  # [M, T, R, R, 3]
    gap = max(1, tiles.shape[2] // 16)
    ax.imshow(mosaic(tiles.reshape(-1, *tiles.shape[2:]), len(steps), gap=gap), interpolation='nearest')
    size = tiles.shape[2] + gap
    ax.set_yticks(np.arange(len(channels[n])) * size + size / 2, [f'map {c}' for c in channels[n]], fontsize=7)
    ax.set_xticks(np.arange(len(steps)) * size + size / 2, [str(s) for s in steps], fontsize=7, rotation=90)
    ax.set_title(f'layer {n}', fontsize=9)
    ax.set_xlabel('training step', fontsize=7)
  fig.suptitle('Feature evolution (Fig. 4): each map\'s strongest activation over the split, projected, '
               'at every checkpoint', fontsize=9)
  return fig


def attribution_figure(image: np.ndarray, maps: dict[str, np.ndarray], config: ml_collections.ConfigDict, title: str,
                       pixel_mean: np.ndarray | None = None):
  """The image `[S, S, C]` beside each method's map (`{method: [H, W, C]}`; Grad-CAM at its layer's resolution,
  stretched over the image), each scaled on its own with grey at zero."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.6), squeeze=False)
  size = image.shape[0]
  axes[0, 0].imshow(to_display(image, config, pixel_mean), interpolation='nearest')
  axes[0, 0].set_title('input', fontsize=8)
  for ax, (method, m) in zip(axes[0, 1:], maps.items()):
    ax.imshow(reconstruction_display(m), interpolation='nearest', extent=(0, size, size, 0))
    ax.set_title(method, fontsize=8)
  for ax in axes[0]:
    ax.set_axis_off()
  fig.suptitle(title, fontsize=9)
  return fig


def sanity_figure(image: np.ndarray, cascade: dict[str, dict[str, np.ndarray]], config: ml_collections.ConfigDict,
                  pixel_mean: np.ndarray | None = None):
  """Adebayo et al.'s Fig. 2: rows are methods, columns the original network then the cascade of layers
  randomised from the logits down; `cascade[method][column]` is one image's map `[S, S, C]`, |map| shown
  (white: zero)."""
  plt = pyplot()
  methods, columns = list(cascade), list(next(iter(cascade.values())))
  fig, axes = plt.subplots(len(methods), len(columns) + 1, figsize=(1.2 * (len(columns) + 1), 1.25 * len(methods)),
                           squeeze=False, layout='constrained')
  for r, method in enumerate(methods):
    axes[r, 0].imshow(to_display(image, config, pixel_mean), interpolation='nearest')
    axes[r, 0].set_ylabel(method, fontsize=7, rotation=0, ha='right', va='center')
    for c, column in enumerate(columns, 1):
      m = np.abs(np.asarray(cascade[method][column], np.float32)).sum(axis=-1)
      axes[r, c].imshow(m, cmap='gray_r', vmin=0, vmax=max(float(m.max()), 1e-12), interpolation='nearest')
      if r == 0:
        axes[r, c].set_title(column if c == 1 else f'{column}', fontsize=7, rotation=45)
  for ax in axes.ravel():
    ax.set_xticks([]), ax.set_yticks([])
  fig.suptitle('Cascading randomisation from the logits down (columns: every layer up to this one re-initialised)',
               fontsize=8)
  return fig


def similarity_curves_figure(rows: list[dict], metrics: tuple[str, ...]):
  """Adebayo et al.'s similarity curves: per test ('cascading', 'independent') and metric, the mean similarity
  to the original maps (rows of `sanity.randomisation`) against the layers randomised, one curve per method."""
  plt = pyplot()
  tests = [t for t in ('cascading', 'independent') if any(r['test'] == t for r in rows)]
  fig, axes = plt.subplots(len(tests), len(metrics), figsize=(3.4 * len(metrics), 3.0 * len(tests)), squeeze=False,
                           layout='constrained')
  for i, test in enumerate(tests):
    for j, metric in enumerate(metrics):
      ax = axes[i, j]
      for method in dict.fromkeys(r['method'] for r in rows):
        mine = [r for r in rows if r['test'] == test and r['method'] == method]
        ax.plot(['original'] + [r['layers'] for r in mine], [1.0] + [r[metric] for r in mine], marker='.',
                label=method)
      ax.set_title(f'{test}: {metric}', fontsize=8)
      ax.tick_params(labelsize=6, axis='x', rotation=90)
      ax.set_ylim(-0.5, 1.05)
  axes[0, -1].legend(fontsize=6)
  return fig
