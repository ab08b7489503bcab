"""The report's data: every unit of every conv layer with its top-k projections, tiled into sprite PNGs.

`build` takes a `Run` (the checkpoint's model and params, the run's checkpoint steps with a `params_at`
callable, its metrics: `visualize report` loads them, interpret/ reads no checkpoints) and writes, into
the output folder, what `site.write_site` turns into pages: per layer `layerN.json` (values, images,
positions of each unit's top k, its top classes and class selectivity) and sprite sheets `layerN_S.png`
(each unit's k projections beside its k image patches, one unit per row, 64 units per sheet), the layer-1
filters, occlusion maps, invariance curves and, when the run kept several checkpoints, feature evolution.
The layers come from `draw_layers`: one `topk.stream_units` pass over the images (every device of every
process) covers every layer, with each unit's top 100 and per-class sums (`classes`: what each unit
responds to); one `topk.projected_chunks` pass projects every unit's top k, `chunk` seeds at a time, each
chunk drawn into its display tiles at once, so memory is the tiles, not the projections. The analyses are
the library's drivers (`occlusion.sensitivity`, `invariance.all_transforms`, `evolution.evolution`), the
same that `visualize` draws.

Re-running reuses what is built: `manifest.json` holds the options each part was built with (the
checkpoint step, the images, k, the config) and a part whose options match and whose PNGs exist is not
rebuilt. JSON goes through `paths`; PNGs are written with PIL, so `out` is a local folder.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from zfnet_jax import paths
from zfnet_jax import progress as progress_lib
from zfnet_jax.data import augment, pipeline, sources, squares
from zfnet_jax.interpret import classes, evolution, featurevis, figures, invariance, occlusion, sanity, topk
from zfnet_jax.model import network, receptive_field

UNITS_PER_SHEET = 64
MAX_TILE = 48  # px: larger windows (high layers) are shrunk to this, keeping a 384-unit page light
MIN_TILE = 24  # px: smaller windows (layer 1) are enlarged to at least this, pixel for pixel
PNG_LEVEL = 1  # zlib level of the PNGs: 3x faster to write than PIL's 6 and about as small on these sheets
CLASS_TOP = 100  # the strongest images whose classes each unit card counts
ROTATION_STEP = 15.0  # degrees between the invariance curves' rotations: coarser than Fig. 5, small inline charts
FEATUREVIS_STEPS = 128  # the report's default optimisation steps per visualisation (Lucid: 512); 0: none
FEATUREVIS_TILE = 96  # px: visualisations of larger inputs are shrunk to this on the unit cards


class Run(NamedTuple):
  """What the report reads of a training run, loaded by the caller (`visualize.load_run`)."""
  workdir: str  # shown on the index page
  model: network.ConvNet
  params: Any  # at `step`
  step: int  # the checkpoint the report is of
  steps: Sequence[int]  # every kept checkpoint up to `step`, ascending (Fig. 4 when more than one)
  params_at: Callable[[int], Any]  # the params of any of `steps`
  curves: dict[str, list[dict]]  # metrics.jsonl records by split (`metric_writer.read_curves`)


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


class LayerTiles(NamedTuple):
  """One layer's units as the sheets draw them: each unit's top k and its k projection and patch tiles."""
  top: topk.TopK  # NumPy fields [M, k]
  reconstruction: np.ndarray  # uint8 [M, k, side, side, 3], white in empty slots
  patch: np.ndarray  # uint8 [M, k, side, side, 3]
  window: int  # px: the image window each tile shows


def draw_layers(model: network.ConvNet, params: Any, batches: Callable[[], Any], layers: tuple[int, ...], k: int,
                config: ml_collections.ConfigDict, pixel_mean: np.ndarray | None = None,
                num_classes: int | None = None,
                mesh: Any = None) -> tuple[dict[int, LayerTiles], dict[int, list[dict]] | None]:
  """The top-k job, drawn as it goes: one `topk.stream_units` pass over `batches()` (every device of every
  process; with `num_classes`, each unit's top `CLASS_TOP` and per-class sums too), then one
  `topk.projected_chunks` pass that shrinks each chunk of projections to display tiles at once. Memory is
  the tiles (`[units, k, side, side, 3]` uint8) and one chunk, never the full-size projections of every unit.

  Returns `(tiles per layer, per layer and unit the class summary)` (`classes.top_classes` plus `selectivity`;
  None without `num_classes`); every process gets the whole result.
  """
  stream = topk.stream_units(model, params, batches(), layers, max(k, CLASS_TOP) if num_classes else k, mesh,
                             num_classes)
  tops = {n: topk.TopK(*(np.asarray(f)[:, :k] for f in stream.tops[n])) for n in layers}
  summary = None
  if num_classes:
    summary = {}
    for n in layers:
      means = classes.class_means(stream.classes[n])
      image = np.asarray(stream.tops[n].image)
      labels = np.where(image >= 0, stream.labels[np.clip(image, 0, len(stream.labels) - 1)], -1)
      units = classes.top_classes(means, labels)
      for unit, value in zip(units, classes.selectivity(means)):
        unit['selectivity'] = round(float(value), 4)
      summary[n] = units
  tiles = {}
  for n in layers:
    m = len(tops[n].value)
    window = receptive_field.clamp(0, receptive_field.nominal(model.arch, n)[0], model.arch.image_size)[1]
    side = tile_size(window)
    blank = lambda: np.zeros((m, k, side, side, 3), np.uint8)  # noqa: E731
    tiles[n] = LayerTiles(tops[n], blank(), blank(), window)
  every_unit = {n: np.arange(len(t.value)) for n, t in tops.items()}
  offset, scale = display_affine(config, model.arch.in_channels, pixel_mean)
  for part in topk.projected_chunks(model, params, batches(), tops, every_unit):
    t = tiles[part.layer]
    draw = _jitted_tiles(t.window, t.patch.shape[2], offset, scale)
    t.reconstruction[part.row, part.slot], t.patch[part.row, part.slot] = jax.device_get(
        draw(part.reconstruction, part.patch))
  if jax.process_count() > 1:  # each slot was drawn by the one process that holds its image
    tiles = {n: t._replace(reconstruction=np.max(multihost_utils.process_allgather(t.reconstruction), axis=0),
                           patch=np.max(multihost_utils.process_allgather(t.patch), axis=0))
             for n, t in tiles.items()}
  for t in tiles.values():
    empty = ~np.isfinite(t.top.value)
    t.reconstruction[empty], t.patch[empty] = 255, 255
  return tiles, summary


def display_affine(config: ml_collections.ConfigDict, channels: int,
                   pixel_mean: np.ndarray | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """`(offset, scale)` per channel such that `input * scale + offset` is the pixel in [0, 255]: the
  normalisation `figures.to_display` undoes, as constants for `_jitted_tiles`."""
  mean, std = augment.channel_stats(channels)
  if config.input.normalization == 'pixel_mean':
    if pixel_mean is None:
      raise ValueError('inputs normalised by the mean image: pass it, pixel_mean=squares.pixel_mean(config)')
    mean = np.asarray(pixel_mean, np.float32).mean(axis=(0, 1))
  scale = std if config.input.normalization == 'mean_std' else np.ones_like(std)
  return tuple(float(v) for v in mean), tuple(float(v) for v in scale)


def shrink_weights(window: int, side: int) -> np.ndarray:
  """`[side, window]` float32: each display pixel's weights over the window's pixels along one axis, read off
  `resize`'s own filters (PIL's BOX shrinking, nearest enlarging) by resizing each unit impulse."""
  weights = np.zeros((side, window), np.float32)
  for j in range(window):
    impulse = np.zeros((1, window), np.float32)
    impulse[0, j] = 1
    weights[:, j] = np.asarray(Image.fromarray(impulse, 'F').resize(
        (side, 1), Image.NEAREST if side > window else Image.BOX))[0]
  return weights


@functools.lru_cache(maxsize=None)
def _jitted_tiles(window: int, side: int, offset: tuple[float, ...], scale: tuple[float, ...]) -> Callable:
  """`(reconstructions, patches)` `[j, window, window, C]` -> their display tiles, uint8 `[j, side, side, 3]` each,
  in one compiled step: `figures.reconstruction_display` (each on its own scale, grey at zero) and
  `figures.to_display` (`input * scale + offset`, clipped), then shrunk (`shrink_weights`) and rounded."""
  weights = jnp.asarray(shrink_weights(window, side))

  def shrink(x):
    x = jnp.einsum('ih,bhwc,jw->bijc', weights, x, weights, precision='highest')
    x = jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
    return jnp.clip(x * 255 + 0.5, 0, 255).astype(jnp.uint8)

  def tiles(recon, patch):
    peak = jnp.max(jnp.abs(recon), axis=(1, 2, 3), keepdims=True)
    recon = 0.5 + recon / (2 * jnp.where(peak > 0, peak, 1.0))
    patch = jnp.clip((patch * jnp.asarray(scale) + jnp.asarray(offset)) / 255, 0.0, 1.0)
    return shrink(recon), shrink(patch)
  return jax.jit(tiles)


def write_layer(out: str, layer: int, tiles: LayerTiles, images: int, units: list[dict] | None = None,
                names: list[str] | None = None) -> dict[str, Any]:
  """Sprite sheets and `layerN.json` for one layer's `LayerTiles`, with each unit's class summary `units`
  (`draw_layers`) by class `names` when given."""
  m, k = tiles.top.value.shape
  side, gap = tiles.patch.shape[2], 8
  rows = np.stack([unit_cell(tiles.reconstruction[i], tiles.patch[i], side, gap) for i in range(m)])
  sheets = []
  for s in range(0, m, UNITS_PER_SHEET):
    sheets.append(save_png(out, f'layer{layer}_{s // UNITS_PER_SHEET}.png',
                           np.concatenate(list(rows[s:s + UNITS_PER_SHEET]), axis=0)))
  value = np.where(np.isfinite(tiles.top.value), tiles.top.value, np.nan)
  data = {'layer': layer, 'units': m, 'k': k, 'images': images, 'tile': side, 'gap': gap,
          'cell_width': int(rows.shape[2]), 'units_per_sheet': UNITS_PER_SHEET, 'sheets': sheets,
          'window': int(tiles.window),
          'value': [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in value],
          'image': np.asarray(tiles.top.image).tolist(), 'y': np.asarray(tiles.top.y).tolist(),
          'x': np.asarray(tiles.top.x).tolist(),
          'dead': [bool(not (v[0] > 0)) for v in value]}
  if units is not None:
    name = (lambda c: names[c]) if names else str  # noqa: E731
    data['classes'] = [{'by_mean': [[c, name(c), v] for c, v in u['by_mean']],
                        'in_top': [[c, name(c), v] for c, v in u['in_top']]} for u in units]
    data['class_selectivity'] = [u['selectivity'] for u in units]
  paths.write_json(paths.join(out, f'layer{layer}.json'), data)
  return data


def save_png(out: str, name: str, pixels: np.ndarray) -> str:
  """Writes `[H, W, 3]` pixels (uint8, or float in [0, 1]) as `out/name`; returns `name`."""
  if pixels.dtype != np.uint8:
    pixels = (np.clip(pixels, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
  Image.fromarray(pixels).save(os.path.join(out, name), compress_level=PNG_LEVEL)
  return name


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
  return save_png(out, f'filters_{first.name}.png', grid)


def _colour(values: np.ndarray, side: int, cmap: str) -> np.ndarray:
  """A `[n, n]` map -> `[side, side, 3]` uint8 through a matplotlib colormap, scaled to its own range."""
  import matplotlib
  lo, hi = float(np.min(values)), float(np.max(values))
  rgb = matplotlib.colormaps[cmap]((values - lo) / (hi - lo if hi > lo else 1.0))[..., :3]
  return np.asarray(Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).resize((side, side), Image.NEAREST))


def write_occlusion(out: str, config: ml_collections.ConfigDict, model: network.ConvNet, params: Any,
                    images: np.ndarray, labels: np.ndarray, pixel_mean: np.ndarray | None = None) -> list[dict]:
  """Fig. 7 per image (`occlusion.sensitivity`, default square): the image, the top layer's strongest map's
  activity and p(true class) by square position, side by side in one PNG."""
  side = max(128, model.arch.image_size)
  gap = np.full((side, 6, 3), 255, np.uint8)
  entries = []
  for i, (image, label) in enumerate(zip(images, labels)):
    result = occlusion.sensitivity(model, params, image, int(label))
    maps, probs = result.maps, result.probabilities
    picture = resize(figures.to_display(image[None], config, pixel_mean), side)[0]
    name = save_png(out, f'occlusion_{i}.png', np.concatenate(
        [picture, gap, _colour(maps.activity, side, 'viridis'), gap, _colour(maps.probability, side, 'magma')], 1))
    entries.append({'sprite': name, 'label': int(label), 'predicted': int(np.argmax(probs)),
                    'p_true': float(probs[label]), 'feature': int(maps.feature), 'square': result.size,
                    'activity_range': [float(np.min(maps.activity)), float(np.max(maps.activity))],
                    'probability_range': [float(np.min(maps.probability)), float(np.max(maps.probability))]})
  return entries


def invariance_curves(model: network.ConvNet, params: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Fig. 5 (`invariance.all_transforms` at its default layers, the first conv and the last hidden layer
  present): per transformation, the amounts and each image's feature distances and p(true class)."""
  amounts, curves = invariance.all_transforms(model, params, images, labels, rotation_step=ROTATION_STEP)
  return {kind: {'amount': amounts[kind].tolist(), **{k: v.tolist() for k, v in curves[kind].items()}}
          for kind in curves}


def write_evolution(out: str, model: network.ConvNet, run: Run, layer_numbers: tuple[int, ...],
                    batches: Callable, progress: progress_lib.Progress) -> dict[str, Any]:
  """Fig. 4 (`evolution.evolution` over `run.steps`): one sheet per layer, a row per map, a column per
  checkpoint."""
  progress.add(2 * len(run.steps))
  result = evolution.evolution(model, run.steps, run.params_at, batches, layer_numbers, progress=progress)
  sheets = {}
  for n in layer_numbers:
    side = tile_size(result.reconstructions[n].shape[2])
    tiles = np.stack([resize(figures.reconstruction_display(r), side) for r in result.reconstructions[n]], 1)
    grid = figures.mosaic(tiles.reshape(-1, side, side, 3).astype(np.float32) / 255, len(result.steps), gap=2)
    sheets[n] = {'sprite': save_png(out, f'evolution_layer{n}.png', grid), 'channels': result.channels[n].tolist()}
  return {'steps': result.steps, 'layers': sheets}


SANITY_METHODS = ('deconvnet', 'guided_backprop', 'gradient', 'gradcam')


def sanity_part(model: network.ConvNet, params: Any, images: np.ndarray) -> dict[str, Any]:
  """The sanity page's data: cascading/independent randomisation and random-class rows (`sanity`) for
  `SANITY_METHODS` over `[B, S, S, C]` images."""
  rows, _ = sanity.randomisation(model, params, images, SANITY_METHODS)
  return {'images': len(images), 'rows': rows + sanity.random_class(model, params, images, SANITY_METHODS)}


class Manifest:
  """`manifest.json`: each built part with the options it was built with; a part is reused when they match
  and the PNGs its result names (`sheets`, `sprite`) exist."""

  def __init__(self, out: str):
    self.out, self.path = out, paths.join(out, 'manifest.json')
    self.parts: dict[str, Any] = paths.read_json(self.path) if paths.exists(self.path) else {}

  def get(self, part: str, options: dict[str, Any]) -> Any:
    """The saved result of `part` if it was built with `options` and its files exist, else None."""
    entry = self.parts.get(part)
    if not entry or entry['options'] != json_value(options):
      return None
    return entry['result'] if all(paths.exists(paths.join(self.out, f)) for f in _files(entry['result'])) else None

  def put(self, part: str, options: dict[str, Any], result: Any) -> Any:
    """Saves `result` of `part` built with `options`; returns it as the manifest holds it (JSON values)."""
    self.parts[part] = {'options': options, 'result': result}
    paths.write_json(self.path, self.parts)
    return json_value(result)

  def cached(self, part: str, options: dict[str, Any], make: Callable[[], Any]) -> Any:
    """`get`, or else `make()` saved with `put`."""
    found = self.get(part, options)
    return found if found is not None else self.put(part, options, make())


def json_value(value: Any) -> Any:
  """`value` as it comes back from JSON (tuples as lists, int keys as strings)."""
  return json.loads(json.dumps(value))


def _files(result: Any) -> list[str]:
  """The file names a part's result holds under `sheets` and `sprite` keys, at any depth."""
  if isinstance(result, list):
    return [f for r in result for f in _files(r)]
  if not isinstance(result, dict):
    return []
  return [*result.get('sheets', []), *([result['sprite']] if 'sprite' in result else []),
          *(f for k, v in result.items() if k not in ('sheets', 'sprite') for f in _files(v))]


class _Job(NamedTuple):
  """One `build`: what every part reads."""
  config: ml_collections.ConfigDict
  out: str
  run: Run
  split: str
  max_images: int | None
  manifest: Manifest
  options: dict[str, Any]  # every part's options: step, config, split, images
  progress: progress_lib.Progress
  pixel_mean: np.ndarray | None

  def batches(self):
    """This process's rows of the images the report reads (all of them without `max_images`)."""
    return pipeline.split_batches(self.config, self.split, self.max_images, jax.process_index(), jax.process_count())


def build(config: ml_collections.ConfigDict, out: str, run: Run, *, max_images: int | None = None,
          layers: tuple[int, ...] | None = None, split: str | None = None, k: int = 9,
          occlusion_images: int = 3, invariance_images: int = 3, sanity_images: int = 0,
          featurevis_steps: int = FEATUREVIS_STEPS, featurevis_diversity: int = 1, featurevis_negative: bool = False,
          featurevis_seed: int = 0) -> dict[str, Any] | None:
  """Builds every part the site shows into `out` (reusing parts built before with the same options).

  Returns the site's data: `{'config', 'step', 'split', 'workdir', 'architecture', 'curves', 'filters',
  'layers': {n: layer data}, 'occlusion', 'invariance', 'evolution', 'eval'}` (`evolution` None with a
  single checkpoint, `eval` None without an evaluation up to the step). `max_images` None: the whole split.
  With `sanity_images` > 0 also `'sanity'` (`sanity_part`) and each layer's per-unit `selectivity`
  (`sanity.selectivity`, NaN as None).

  With `featurevis_steps` > 0, each conv layer from 2 up gets its units' feature visualisations (`featurevis_parts`:
  `featurevis_diversity` images each, with `featurevis_negative` also the negative's), under `'featurevis'` in its
  layer data.

  With several processes (`jax.distributed`), every process calls `build`: the top-k job runs over all their
  devices; process 0 writes every file and gets the data, the others get None.
  """
  present = tuple(c.layer for c in run.model.arch.convs)
  layers = tuple(layers or present)
  if not set(layers) <= set(present):
    raise ValueError(f'--layers must name conv layers of this network, {list(present)}; got {list(layers)}')
  split = split or config.dataset.eval_split
  paths.makedirs(out)
  options = {'step': run.step, 'config': config.to_json(), 'split': split, 'max_images': max_images, 'version': 2}
  job = _Job(config, out, run, split, max_images, Manifest(out), options,
             progress_lib.Progress(2, what='report', unit='tasks'), squares.pixel_mean(config))
  layer_parts = _layer_parts(job, layers, k)
  visualised = (featurevis_parts(job, tuple(n for n in layers if n >= 2), featurevis_steps, featurevis_diversity,
                                 featurevis_negative, featurevis_seed) if featurevis_steps > 0 else {})
  if layer_parts is None:
    return None
  for n, part in visualised.items():
    layer_parts[n] = {**layer_parts[n], 'featurevis': part}
    paths.write_json(paths.join(out, f'layer{n}.json'), layer_parts[n])
  data = {'config': str(config), 'step': run.step, 'split': split, 'workdir': paths.absolute(run.workdir),
          'architecture': architecture_table(run.model, run.params), 'curves': run.curves,
          'filters': write_filters(out, run.model, run.params), 'layers': layer_parts}
  data.update(_analysis_parts(job, layers, occlusion_images, invariance_images))
  data['sanity'] = _sanity_parts(job, data['layers'], sanity_images) if sanity_images > 0 else None
  data['eval'] = ([r for r in run.curves.get('eval', []) if r['step'] <= run.step] or [None])[-1]
  return data


def _sanity_parts(job: _Job, layers: dict[int, Any], count: int) -> dict[str, Any]:
  """The sanity page's data over the split's first `count` images; adds each unit's `selectivity` (NaN as None)
  to its layer's data in `layers`."""
  run, options = job.run, {**job.options, 'images': count}
  images = functools.cache(lambda: pipeline.first_images(job.config, job.split, lambda i, label: True, count)[0])
  for n in layers:
    layers[n] = {**layers[n], 'selectivity': job.manifest.cached(
        f'selectivity{n}', options, lambda n=n: [None if np.isnan(r['selectivity']) else r['selectivity']
                                                 for r in sanity.selectivity(run.model.arch, run.params, images(), n)])}
  return job.manifest.cached('sanity', options, lambda: sanity_part(run.model, run.params, images()))


def featurevis_parts(job: _Job, layers: tuple[int, ...], steps: int, diversity: int, negative: bool,
                     seed: int) -> dict[int, Any]:
  """Each of `layers`' feature visualisations (`featurevis.optimise`, channel objective, every unit): manifest part
  `featurevis{n}`, reused while its options match. The dataset's best of the same objective per unit
  (`featurevis.dataset_best`) comes from one pass over the report's images for all layers to build, on every
  process; the optimisation runs on process 0's devices, which writes `write_featurevis`'s sheets and gets the
  data (the others get `{}`)."""
  options = {**job.options, 'steps': steps, 'seed': seed, 'diversity': diversity, 'negative': negative}
  todo = tuple(n for n in layers if job.manifest.get(f'featurevis{n}', options) is None)
  writer = jax.process_index() == 0
  if todo:
    job.progress.add(1 + len(todo) * (1 + negative))
    best = featurevis.dataset_best(job.run.model, job.run.params, job.batches(), todo)
    worst = featurevis.dataset_best(job.run.model, job.run.params, job.batches(), todo, negative=True) if negative \
        else None
    job.progress.advance(1, 'the dataset\'s best map means')
    for n in todo:
      if not writer:
        continue
      results = []
      for minus in (False, True)[:1 + negative]:
        results.append(featurevis.optimise(job.run.model, job.run.params, job.config, n, steps=steps,
                                           diversity=diversity, negative=minus, seed=seed, pixel_mean=job.pixel_mean))
        job.progress.advance(1, f'layer {n}: {len(results[-1].units)} units visualised'
                                + (' (negative)' if minus else ''))
      job.manifest.put(f'featurevis{n}', options, write_featurevis(
          job.out, n, results, best[n], worst[n] if negative else None, job.config.model.image_size))
  return {n: job.manifest.get(f'featurevis{n}', options) for n in layers} if writer else {}


def write_featurevis(out: str, layer: int, results: list[featurevis.Result], best: np.ndarray,
                     worst: np.ndarray | None, image_size: int) -> dict[str, Any]:
  """Sprite sheets `featurevis{layer}_{s}.png` laid out as the layer's (`UNITS_PER_SHEET` units per sheet, unit `u`
  in row `u % UNITS_PER_SHEET` of sheet `u // UNITS_PER_SHEET`), each row the unit's visualisations (`results`:
  the objective's `K`, then the negative's `K`), and their data: per unit the objective each reaches, the dataset's
  best (`best`; `worst`: the negative's), whether it beats every image, and the share of live units that do."""
  pixels = np.concatenate([r.pixels for r in results], axis=1)  # [M, T, S, S, C]
  m, count = pixels.shape[:2]
  side = min(image_size, FEATUREVIS_TILE)
  rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
  tiles = resize(rgb.reshape(m * count, *rgb.shape[2:]) / 255, side).reshape(m, count, side, side, 3)
  rows = np.full((m, side, count * (side + 1) - 1, 3), 255, np.uint8)
  for i in range(count):
    rows[:, :, i * (side + 1):i * (side + 1) + side] = tiles[:, i]
  sheets = [save_png(out, f'featurevis{layer}_{s // UNITS_PER_SHEET}.png',
                     np.concatenate(list(rows[s:s + UNITS_PER_SHEET]), axis=0)) for s in range(0, m, UNITS_PER_SHEET)]
  beats, live = featurevis.beats_dataset(results[0].activation, best)
  data = {'sheets': sheets, 'tile': side, 'count': count, 'width': int(rows.shape[2]),
          'units_per_sheet': UNITS_PER_SHEET, 'objective': 'channel', 'diversity': int(results[0].activation.shape[1]),
          'negative': len(results) > 1,
          'activation': np.round(np.concatenate([r.activation for r in results], axis=1), 4).tolist(),
          'dataset_best': [round(float(v), 4) for v in best], 'beats_dataset': beats.tolist(),
          'live': int(np.sum(live)), 'live_beating': int(np.sum(beats & live))}
  if worst is not None:
    data['dataset_best_negative'] = [round(float(v), 4) for v in worst]
  return data


def _layer_parts(job: _Job, layers: tuple[int, ...], k: int) -> dict[int, Any] | None:
  """Each layer's data, built for the layers whose saved part does not match: `draw_layers` over the images
  (every process takes part; process 0 writes; the others get None)."""
  options = {**job.options, 'k': k, 'classes': CLASS_TOP}
  todo = tuple(n for n in layers if job.manifest.get(f'layer{n}', options) is None)
  writer = jax.process_index() == 0
  if todo:
    _, _, size = pipeline.eval_batches(job.config, job.split)
    steps = -(-min(job.max_images or size, size) // job.config.eval_batch_size)
    job.progress.add(2 * steps + len(todo))
    reads: list[int] = []  # images read by this process, per pass over the images

    def batches():
      what = ('top-k pass over all layers', 'projecting every unit\'s top k')[len(reads)]
      reads.append(0)
      for batch in job.batches():
        reads[-1] += int(np.sum(batch['mask'] > 0))
        yield batch
        job.progress.advance(1, what)
    tiles, units = draw_layers(job.run.model, job.run.params, batches, todo, k, job.config, job.pixel_mean,
                               job.run.model.arch.num_classes)
    images = reads[0] if jax.process_count() == 1 else int(np.sum(multihost_utils.process_allgather(
        np.int32(reads[0]))))
    names = sources.class_names(job.config)
    for n in todo:
      if writer:
        job.manifest.put(f'layer{n}', options, write_layer(job.out, n, tiles[n], images, units[n], names))
      job.progress.advance(1, f'layer {n}: {len(tiles[n].top.value)} units drawn')
  return {n: job.manifest.get(f'layer{n}', options) for n in layers} if writer else None


def _analysis_parts(job: _Job, layers: tuple[int, ...], occlusion_images: int,
                    invariance_images: int) -> dict[str, Any]:
  """Occlusion maps and invariance curves of the split's first images, and evolution over the run's
  checkpoints when it kept several."""
  model, params, run = job.run.model, job.run.params, job.run
  picked = functools.cache(lambda: pipeline.first_images(
      job.config, job.split, lambda i, label: True, max(occlusion_images, invariance_images))[:2])
  parts = {'occlusion': job.manifest.cached('occlusion', {**job.options, 'count': occlusion_images}, lambda: (
      write_occlusion(job.out, job.config, model, params, *(a[:occlusion_images] for a in picked()),
                      pixel_mean=job.pixel_mean)))}
  job.progress.advance(1, 'occlusion maps')
  parts['invariance'] = job.manifest.cached('invariance', {**job.options, 'count': invariance_images}, lambda: (
      invariance_curves(model, params, *(a[:invariance_images] for a in picked()))))
  job.progress.advance(1, 'invariance curves')
  parts['evolution'] = None
  if len(run.steps) > 1:
    options = {**job.options, 'steps': list(run.steps), 'layers': list(layers)}
    parts['evolution'] = job.manifest.cached('evolution', options, lambda: (
        write_evolution(job.out, model, run, layers, job.batches, job.progress)))
  return parts
