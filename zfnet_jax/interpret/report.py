"""The report's data: every unit of every conv layer with its top-k projections, tiled into sprite PNGs.

`build` reads one checkpoint and writes, into the output folder, what `site.write_site` turns into
pages: per layer `layerN.json` (values, images, positions of each unit's top k) and sprite sheets
`layerN_S.png` (each unit's k projections beside its k image patches, one unit per row, 64 units per
sheet), the layer-1 filters, occlusion maps, invariance curves and, when the run kept several
checkpoints, feature evolution. One `stream_topk` pass over the images covers every layer; one
`project_topk` pass projects every unit's top k, `chunk` seeds at a time.

Re-running reuses what is built: `manifest.json` holds the options each part was built with (the
checkpoint step, the images, k, the config) and a part whose options match is not rebuilt.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from zfnet_jax.data import pipeline
from zfnet_jax.interpret import figures, invariance, occlusion, topk
from zfnet_jax.model import network, receptive_field
from zfnet_jax.training import checkpointing

UNITS_PER_SHEET = 64
MAX_TILE = 48  # px: larger windows (high layers) are shrunk to this, keeping a 384-unit page light
MIN_TILE = 24  # px: smaller windows (layer 1) are enlarged to at least this, pixel for pixel
EVOLUTION_MAPS = 8  # feature maps per layer in the evolution figure


class Progress:
  """One line per finished piece of work on stderr: what, done/total, elapsed and ETA."""

  def __init__(self, total: float, stream=sys.stderr):
    self.total, self.done, self.start, self.stream = total, 0.0, time.time(), stream

  def add(self, total: float) -> None:
    self.total += total

  def step(self, what: str, amount: float = 1.0) -> None:
    self.done += amount
    elapsed = time.time() - self.start
    eta = elapsed / self.done * max(self.total - self.done, 0.0) if self.done else float('nan')
    print(f'report: {what} | {100 * self.done / max(self.total, 1e-9):3.0f}% | {elapsed:5.1f}s elapsed, '
          f'ETA {eta:5.1f}s', file=self.stream, flush=True)


def tile_size(window: int) -> int:
  """Display side in px of a `window`-px patch: enlarged by an integer factor, or shrunk to `MAX_TILE`."""
  if window >= MAX_TILE:
    return MAX_TILE
  return window * max(1, -(-MIN_TILE // window))


def resize(tiles: np.ndarray, side: int) -> np.ndarray:
  """`[N, h, h, 3]` in [0, 1] -> `[N, side, side, 3]` uint8 (nearest up, area-averaged down)."""
  out = []
  for tile in np.clip(np.nan_to_num(tiles) * 255 + 0.5, 0, 255).astype(np.uint8):
    image = Image.fromarray(tile)
    if tile.shape[0] != side:
      image = image.resize((side, side), Image.NEAREST if side > tile.shape[0] else Image.BOX)
    out.append(np.asarray(image))
  return np.stack(out)


def unit_cell(projections: np.ndarray, patches: np.ndarray, side: int, gap: int) -> np.ndarray:
  """One unit's row of a sheet: `[k, side, side, 3]` projections, a gap, then the k patches."""
  k = len(projections)
  row = np.full((side, 2 * k * (side + 1) + gap, 3), 255, np.uint8)
  for i, tile in enumerate(projections):
    row[:, i * (side + 1):i * (side + 1) + side] = tile
  start = k * (side + 1) + gap
  for i, tile in enumerate(patches):
    row[:, start + i * (side + 1):start + i * (side + 1) + side] = tile
  return row


def write_layer(out: str, layer: int, result: topk.TopKProjections, config: ml_collections.ConfigDict,
                images: int) -> dict[str, Any]:
  """Sprite sheets and `layerN.json` for one layer's `TopKProjections` of all its units."""
  m, k = result.top.value.shape
  side, gap = tile_size(result.patch.shape[2]), 8
  filled = np.isfinite(result.top.value)
  recon = figures.reconstruction_display(result.reconstruction.reshape(m * k, *result.reconstruction.shape[2:]))
  patch = figures.to_display(result.patch.reshape(m * k, *result.patch.shape[2:]), config)
  recon, patch = resize(recon, side).reshape(m, k, side, side, 3), resize(patch, side).reshape(m, k, side, side, 3)
  recon[~filled], patch[~filled] = 255, 255
  rows = np.stack([unit_cell(recon[i], patch[i], side, gap) for i in range(m)])
  sheets = []
  for s in range(0, m, UNITS_PER_SHEET):
    name = f'layer{layer}_{s // UNITS_PER_SHEET}.png'
    Image.fromarray(np.concatenate(list(rows[s:s + UNITS_PER_SHEET]), axis=0)).save(os.path.join(out, name))
    sheets.append(name)
  value = np.where(filled, result.top.value, np.nan)
  data = {'layer': layer, 'units': m, 'k': k, 'images': images, 'tile': side, 'gap': gap,
          'cell_width': int(rows.shape[2]), 'units_per_sheet': UNITS_PER_SHEET, 'sheets': sheets,
          'window': int(result.patch.shape[2]),
          'value': [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in value],
          'image': np.asarray(result.top.image).tolist(), 'y': np.asarray(result.top.y).tolist(),
          'x': np.asarray(result.top.x).tolist(),
          'dead': [bool(not (v[0] > 0)) for v in value]}
  with open(os.path.join(out, f'layer{layer}.json'), 'w') as f:
    json.dump(data, f)
  return data


def architecture_table(model: network.ConvNet, params: Any) -> list[dict[str, Any]]:
  """One row per layer present: kind, shape, output map size, receptive field and parameter count."""
  arch, rows = model.arch, []
  sizes = arch.map_sizes()
  for c in arch.convs:
    conv_out, pooled = sizes[c.name]
    size, stride, _ = receptive_field.nominal(arch, c.layer)
    rows.append({'layer': c.layer, 'name': c.name, 'kind': 'conv', 'shape':
                 f'{c.kernel}x{c.kernel}/{c.stride}, pad {c.padding}' + (', pool' if c.pool else '') +
                 (', LRN' if c.lrn else ''), 'maps': c.features, 'map_size': f'{conv_out} -> {pooled}'
                 if c.pool else str(conv_out), 'receptive_field': f'{size} px (stride {stride})',
                 'params': network.count_params(params[c.name])})
  for n, width in arch.fcs:
    rows.append({'layer': n, 'name': f'fc{n}', 'kind': 'fc', 'shape': f'{width} units', 'maps': width,
                 'map_size': '1', 'receptive_field': 'whole image', 'params': network.count_params(params[f'fc{n}'])})
  rows.append({'layer': 8, 'name': 'fc8', 'kind': 'softmax', 'shape': f'{arch.num_classes} classes',
               'maps': arch.num_classes, 'map_size': '1', 'receptive_field': 'whole image',
               'params': network.count_params(params['fc8'])})
  return rows


def write_filters(out: str, model: network.ConvNet, params: Any) -> str:
  """The layer-1 filters (Fig. 6), each on its own scale with grey at zero, as one PNG."""
  first = model.arch.convs[0]
  kernel = np.moveaxis(np.asarray(params[first.name]['kernel']), -1, 0)  # [F, k, k, C_in]
  tiles = resize(figures.reconstruction_display(kernel), tile_size(first.kernel))
  grid = figures.mosaic(tiles.astype(np.float32) / 255, int(np.ceil(np.sqrt(len(tiles)))), gap=2)
  name = f'filters_{first.name}.png'
  Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(os.path.join(out, name))
  return name


def _colour(values: np.ndarray, side: int, cmap: str) -> np.ndarray:
  """A `[n, n]` map -> `[side, side, 3]` uint8 through a matplotlib colormap, scaled to its own range."""
  import matplotlib
  lo, hi = float(np.min(values)), float(np.max(values))
  rgb = matplotlib.colormaps[cmap]((values - lo) / (hi - lo if hi > lo else 1.0))[..., :3]
  return np.asarray(Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).resize((side, side), Image.NEAREST))


def write_occlusion(out: str, config, model, params, images: np.ndarray, labels: np.ndarray) -> list[dict]:
  """Fig. 7 per image: the image, the top layer's strongest map's activity and p(true class) by square position."""
  s = model.arch.image_size
  size, side = max(1, s // 7), max(128, s)
  occlude = jax.jit(occlusion.occlusion, static_argnums=(0, 4, 5))
  entries = []
  for i, (image, label) in enumerate(zip(images, labels)):
    maps = occlude(model, params, jnp.asarray(image), int(label), size, max(1, size // 2))
    probs = np.asarray(jax.nn.softmax(network.forward(model, params, image[None]).logits[0]))
    picture = resize(figures.to_display(image[None], config), side)[0]
    name = f'occlusion_{i}.png'
    Image.fromarray(np.concatenate([picture, np.full((side, 6, 3), 255, np.uint8),
                                    _colour(np.asarray(maps.activity), side, 'viridis'),
                                    np.full((side, 6, 3), 255, np.uint8),
                                    _colour(np.asarray(maps.probability), side, 'magma')], axis=1)
                    ).save(os.path.join(out, name))
    entries.append({'sprite': name, 'label': int(label), 'predicted': int(np.argmax(probs)),
                    'p_true': float(probs[label]), 'feature': int(maps.feature), 'square': size,
                    'activity_range': [float(np.min(maps.activity)), float(np.max(maps.activity))],
                    'probability_range': [float(np.min(maps.probability)), float(np.max(maps.probability))]})
  return entries


def invariance_curves(model, params, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Fig. 5: per transformation, the amounts and each image's feature distances (`invariance.default_layers`:
  the first conv and last hidden layer present) and p(true class)."""
  amounts = invariance.amounts(model.arch.image_size, rotation_step=15.0)  # coarser: small inline charts
  curve = jax.jit(invariance.invariance, static_argnums=(0, 4))
  result = {}
  for kind in invariance.TRANSFORMS:
    values = curve(model, params, jnp.asarray(images), jnp.asarray(labels), kind,
                   jnp.asarray(amounts[kind], jnp.float32))
    result[kind] = {'amount': amounts[kind].tolist(), **{k: np.asarray(v).tolist() for k, v in values.items()}}
  return result


def write_evolution(out: str, config, workdir: str, model, steps: list[int], layer_numbers: tuple[int, ...],
                    max_images: int, split: str, progress: Progress) -> dict[str, Any]:
  """Fig. 4: for a few maps per layer (alive at the last checkpoint), the strongest activation projected at
  every checkpoint. One sheet per layer: a row per map, a column per checkpoint."""
  per_step = []
  for step in steps:
    _, params, _ = checkpointing.load_params(config, workdir, step)
    per_step.append((params, topk.stream_topk(model, params, pipeline.split_batches(config, split, max_images), layer_numbers, k=1)))
    progress.step(f'evolution: top-1 at step {step}')
  last = per_step[-1][1]
  channels = {}
  for n in layer_numbers:
    alive = np.flatnonzero(np.asarray(last[n].value)[:, 0] > 0)
    channels[n] = alive[np.linspace(0, len(alive) - 1, min(EVOLUTION_MAPS, len(alive))).astype(int)] \
        if len(alive) else np.arange(min(EVOLUTION_MAPS, len(last[n].value)))
  columns = []
  for (params, tops), step in zip(per_step, steps):
    columns.append(topk.project_topk(model, params, pipeline.split_batches(config, split, max_images), tops, channels))
    progress.step(f'evolution: projections at step {step}')
  sheets = {}
  for n in layer_numbers:
    side = tile_size(columns[0][n].patch.shape[2])
    tiles = np.stack([resize(figures.reconstruction_display(c[n].reconstruction[:, 0]), side) for c in columns], 1)
    grid = figures.mosaic(tiles.reshape(-1, side, side, 3).astype(np.float32) / 255, len(steps), gap=2)
    name = f'evolution_layer{n}.png'
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(os.path.join(out, name))
    sheets[n] = {'sprite': name, 'channels': channels[n].tolist()}
  return {'steps': steps, 'layers': sheets}


def read_curves(workdir: str) -> dict[str, list[dict[str, float]]]:
  """`metrics.jsonl` split by `split` ('train', 'eval'): records in step order."""
  path = os.path.join(workdir, 'metrics.jsonl')
  curves: dict[str, list] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          curves.setdefault(record.get('split', 'train'), []).append(record)
  return curves


class Manifest:
  """`manifest.json`: each built part with the options it was built with; a part is reused when they match."""

  def __init__(self, out: str):
    self.path = os.path.join(out, 'manifest.json')
    self.parts: dict[str, Any] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.parts = json.load(f)

  def get(self, part: str, options: dict[str, Any]) -> Any:
    """The saved result of `part` if it was built with `options`, else None."""
    entry = self.parts.get(part)
    return entry['result'] if entry and entry['options'] == json.loads(json.dumps(options)) else None

  def put(self, part: str, options: dict[str, Any], result: Any) -> Any:
    self.parts[part] = {'options': options, 'result': result}
    with open(self.path + '.tmp', 'w') as f:
      json.dump(self.parts, f)
    os.replace(self.path + '.tmp', self.path)
    return json.loads(json.dumps(result))


def build(config: ml_collections.ConfigDict, workdir: str, out: str, *, max_images: int = 1000,
          layers: tuple[int, ...] | None = None, step: int | None = None, split: str | None = None, k: int = 9,
          occlusion_images: int = 3, invariance_images: int = 3) -> dict[str, Any]:
  """Builds every part the site shows into `out` (reusing parts built before with the same options).

  Returns the site's data: `{'config', 'step', 'architecture', 'curves', 'filters', 'layers': {n: layer
  data}, 'occlusion', 'invariance', 'evolution'}` (`invariance` None for networks without layer 7,
  `evolution` None with a single checkpoint).
  """
  os.makedirs(out, exist_ok=True)
  split = split or config.dataset.eval_split
  model, params, step = checkpointing.load_params(config, workdir, step)
  present = tuple(c.layer for c in model.arch.convs)
  layers = tuple(layers or present)
  if not set(layers) <= set(present):
    raise ValueError(f'--layers must name conv layers of this network, {list(present)}; got {list(layers)}')
  mngr = checkpointing.manager(workdir)
  all_steps = [s for s in mngr.all_steps() if s <= step]
  mngr.close()
  manifest = Manifest(out)
  base = {'step': step, 'config': config.to_json(), 'split': split, 'max_images': max_images, 'version': 1}
  wanted = {n: {**base, 'k': k} for n in layers}
  todo = [n for n in layers if manifest.get(f'layer{n}', wanted[n]) is None
          or not all(os.path.exists(os.path.join(out, s)) for s in manifest.get(f'layer{n}', wanted[n])['sheets'])]
  n_batches = -(-min(max_images, pipeline.eval_batches(config, split)[2]) // config.eval_batch_size) if todo else 0
  progress = Progress(2 * n_batches + len(todo) + 2)

  data: dict[str, Any] = {'config': str(config), 'step': step, 'split': split, 'workdir': os.path.abspath(workdir),
                          'architecture': architecture_table(model, params), 'curves': read_curves(workdir),
                          'filters': write_filters(out, model, params), 'layers': {}}
  if todo:
    seen = []
    def counted(what):
      for batch in pipeline.split_batches(config, split, max_images):
        seen.append(int(np.sum(batch['mask'] > 0)))
        yield batch
        progress.step(what)
    tops = topk.stream_topk(model, params, counted('top-k pass over all layers'), todo, k=k)
    images = sum(seen)
    channels = {n: np.arange(len(np.asarray(tops[n].value))) for n in todo}
    results = topk.project_topk(model, params, counted('projecting every unit\'s top k'), tops, channels)
    for n in todo:
      manifest.put(f'layer{n}', wanted[n], write_layer(out, n, results[n], config, images))
      progress.step(f'layer {n}: {len(channels[n])} units drawn')
    del results
  for n in layers:
    data['layers'][n] = manifest.get(f'layer{n}', wanted[n])

  picked: list = []
  def picks():  # read only when a part needs them
    if not picked:
      picked.extend(pipeline.first_images(config, split, lambda i, label: True,
                                          max(occlusion_images, invariance_images))[:2])
    return picked
  options = {**base, 'count': occlusion_images}
  data['occlusion'] = manifest.get('occlusion', options)
  if data['occlusion'] is None:
    data['occlusion'] = manifest.put('occlusion', options, write_occlusion(
        out, config, model, params, picks()[0][:occlusion_images], picks()[1][:occlusion_images]))
  progress.step('occlusion maps')
  options = {**base, 'count': invariance_images}
  data['invariance'] = manifest.get('invariance', options)
  if data['invariance'] is None:
    data['invariance'] = manifest.put('invariance', options, invariance_curves(
        model, params, picks()[0][:invariance_images], picks()[1][:invariance_images]))
  progress.step('invariance curves')
  data['evolution'] = None
  if len(all_steps) > 1:
    options = {**base, 'steps': all_steps, 'layers': list(layers)}
    data['evolution'] = manifest.get('evolution', options)
    if data['evolution'] is None:
      progress.add(2 * len(all_steps))
      data['evolution'] = manifest.put('evolution', options, write_evolution(
          out, config, workdir, model, all_steps, layers, max_images, split, progress))
  data['eval'] = ([r for r in data['curves'].get('eval', []) if r['step'] <= step] or [None])[-1]
  return data
