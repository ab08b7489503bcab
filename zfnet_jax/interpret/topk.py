"""Top-k over a dataset (Fig. 2, Fig. 4): the k strongest activations of every feature map, projected.

`stream_topk` keeps, for every feature map of the chosen layers, the k strongest activations over a
stream of batches (one per image: an image's strongest position in that map), merged batch by batch
with `topk_merge`; `project_topk` re-reads the stream and projects each kept activation with the
deconvnet.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils

from zfnet_jax import parallel
from zfnet_jax.interpret import classes as classes_lib
from zfnet_jax.interpret import deconvnet
from zfnet_jax.model import network, receptive_field


class TopK(NamedTuple):
  """The k strongest activations of every feature map, one per image, strongest first; all `[C, k]`."""
  value: jax.Array  # float32; -inf in slots no image has filled yet
  image: jax.Array  # int32 index of the image in the stream; -1 in empty slots
  y: jax.Array  # int32 position in the layer's output map
  x: jax.Array


def topk_empty(channels: int, k: int) -> TopK:
  full = lambda v, dtype: jnp.full((channels, k), v, dtype)  # noqa: E731
  return TopK(full(-jnp.inf, jnp.float32), full(-1, jnp.int32), full(0, jnp.int32), full(0, jnp.int32))


def topk_merge(a: TopK, b: TopK, k: int | None = None) -> TopK:
  """The `k` (default: `a`'s k) strongest of both; on equal values `a`'s entries come first."""
  k = a.value.shape[1] if k is None else k
  both = TopK(*(jnp.concatenate([u, v], axis=1) for u, v in zip(a, b)))
  _, order = lax.top_k(both.value, k)
  return TopK(*(jnp.take_along_axis(field, order, axis=1) for field in both))


def topk_update(state: TopK, activations: jax.Array, image_ids: jax.Array, mask: jax.Array) -> TopK:
  """Merges a batch into `state`.

  Args:
    activations: `[B, H, W, C]` one layer's output.
    image_ids: int `[B]` the images' indices in the stream.
    mask: `[B]` 0 for padding examples, which never enter.
  """
  b, h, w, c = activations.shape
  flat = activations.reshape(b, h * w, c).astype(jnp.float32)
  where = jnp.argmax(flat, axis=1)  # [B, C]
  value = jnp.where(mask[:, None] > 0, jnp.max(flat, axis=1), -jnp.inf)
  batch = TopK(value.T, jnp.broadcast_to(image_ids[None, :], (c, b)).astype(jnp.int32),
               (where // w).T.astype(jnp.int32), (where % w).T.astype(jnp.int32))
  return topk_merge(state, batch)


class Stream(NamedTuple):
  """What one pass over a stream gathers (`stream_units`)."""
  tops: dict[int, TopK]  # per layer, every feature map's top k
  classes: dict[int, classes_lib.ClassStats] | None  # per layer, per-class sums (None unless asked for)
  labels: np.ndarray  # int32 [n]: the label of each image index of the stream, -1 for indices it did not hold


def stream_units(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                 layer_numbers: Iterable[int], k: int = 9, mesh: jax.sharding.Mesh | None = None,
                 num_classes: int | None = None) -> Stream:
  """One pass over `batches` (`image`, `mask`, `label`, and `index` as `pipeline.split_batches` yields them: each
  row's index in the split, the same on every process; without `index`, rows are numbered in stream order):
  the top `k` of every feature map of each layer and, with `num_classes`, each unit's per-class sums.

  Data-parallel over `mesh` (default: every device of every process, each process passing its own rows of
  each global batch, `pipeline.split_batches(..., process_index, process_count)`): each step's top-k is
  taken over the whole global batch and merged into replicated state, so the result is the same as one
  device's (exact: values, images, positions). Every process gets the whole result.
  """
  layer_numbers = tuple(layer_numbers)
  mesh = mesh or parallel.make_mesh()
  channels = {c.layer: c.features for c in model.arch.convs}
  update = _jitted_update(model, layer_numbers, num_classes)
  replicated = parallel.replicated(mesh)
  params = jax.device_put(jax.device_get(params), replicated)
  state = {'top': {n: topk_empty(channels[n], k) for n in layer_numbers}}
  if num_classes:
    state['classes'] = {n: classes_lib.class_empty(channels[n], num_classes) for n in layer_numbers}
  state, seen, labels = jax.device_put(state, replicated), 0, {}
  wait = parallel.one_step_in_flight()
  for batch in batches:
    size = len(batch['mask'])
    ids = np.asarray(batch['index'], np.int32) if 'index' in batch else np.arange(seen, seen + size, dtype=np.int32)
    label = np.asarray(batch.get('label', np.zeros(size)), np.int32)
    labels.update((int(i), int(v)) for i, v, m in zip(ids, label, batch['mask']) if m > 0)
    placed = parallel.global_batch(mesh, {'image': batch['image'], 'ids': ids, 'mask': batch['mask'], 'label': label})
    state = update(state, params, placed['image'], placed['ids'], placed['mask'], placed['label'])
    if wait:
      jax.block_until_ready(state)
    seen += size
  return Stream(state['top'], state.get('classes'), _gather_labels(labels))


def stream_topk(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                layer_numbers: Iterable[int], k: int = 9, mesh: jax.sharding.Mesh | None = None) -> dict[int, TopK]:
  """`stream_units`' top-k alone: the top `k` of every feature map of each layer over `batches`."""
  return stream_units(model, params, batches, layer_numbers, k, mesh).tops


def _gather_labels(labels: dict[int, int]) -> np.ndarray:
  """The `{index: label}` each process saw, as one int32 array over all processes (-1 where none saw it)."""
  size = max(labels, default=-1) + 1
  if jax.process_count() > 1:
    size = int(np.max(multihost_utils.process_allgather(np.int32(size))))
  out = np.full(size, -1, np.int32)
  out[list(labels)] = list(labels.values())
  if jax.process_count() > 1:
    out = np.max(multihost_utils.process_allgather(out), axis=0)
  return out


@functools.lru_cache(maxsize=None)
def _jitted_update(model: network.ConvNet, layer_numbers: tuple[int, ...], num_classes: int | None) -> Callable:
  """One compiled step per (model, layers, classes), shared by every pass (and every checkpoint of a run)."""
  def update(state, params, images, ids, mask, labels):
    outputs = network.forward(model, params, images).layers
    new = {'top': {n: topk_update(state['top'][n], outputs[f'layer{n}'], ids, mask) for n in layer_numbers}}
    if num_classes:
      new['classes'] = {n: classes_lib.class_update(state['classes'][n], outputs[f'layer{n}'], labels, mask)
                        for n in layer_numbers}
    return new
  return jax.jit(update)


@functools.lru_cache(maxsize=None)
def _jitted_record(model: network.ConvNet) -> Callable:
  return jax.jit(functools.partial(deconvnet.record, model))


@functools.lru_cache(maxsize=None)
def _jitted_project(arch: network.Architecture, layer: int, chunk: int, draw: Callable | None = None) -> Callable:
  """`(params, switches, images, seeds) -> ((reconstructions, patches), top, left)`: `deconvnet.project_patches`
  and the image windows the projections cover, cut from `images` `[B, S, S, C]`; with `draw`, the pair goes
  through `draw` in the same compiled step."""
  def step(params, switches, images, seeds):
    proj = deconvnet.project_patches(arch, params, switches, layer, seeds, chunk)
    side = proj.patches.shape[1]
    cut = lambda i, t, left: lax.dynamic_slice(images[i], (t, left, 0), (side, side, images.shape[-1]))  # noqa: E731
    pair = (proj.patches, jax.vmap(cut)(seeds.image, proj.top, proj.left))
    return (pair if draw is None else draw(*pair)), proj.top, proj.left
  return jax.jit(step)


class TopKProjections(NamedTuple):
  """What Fig. 2 draws for one layer: `M` feature maps, each with its `k` strongest activations."""
  channel: np.ndarray  # [M]
  top: TopK  # fields [M, k]
  reconstruction: np.ndarray  # [M, k, R, R, C_in] the deconvnet projections, cropped to ...
  patch: np.ndarray  # [M, k, R, R, C_in] ... the same image windows (network input values)
  window: np.ndarray  # [M, k, 2] (top, left) of each window in its image
  receptive_field: np.ndarray  # [M, k, 4] exact receptive field (top, left, bottom, right), half-open


class ProjectedChunk(NamedTuple):
  """Up to `chunk` projected entries of one layer's kept activations (`projected_chunks`)."""
  layer: int
  row: np.ndarray  # [j] index into the layer's `channels`
  slot: np.ndarray  # [j] which of the unit's k
  reconstruction: np.ndarray  # [j, R, R, C_in] (or what `draw` makes of them)
  patch: np.ndarray  # [j, R, R, C_in] the image windows the reconstructions cover (or what `draw` makes of them)
  window: np.ndarray  # [j, 2] (top, left)


def projected_chunks(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                     tops: dict[int, TopK], channels: dict[int, np.ndarray], chunk: int = 16,
                     draw: dict[int, Callable] | None = None) -> Iterator[ProjectedChunk]:
  """Re-reads the stream `stream_units` read (batches with `index`, or numbered in stream order) and projects
  the kept activations of the `channels` of each layer whose images this process holds, `chunk` at a time.

  Each batch with kept images is recorded once; seeds go `chunk` at a time (the last chunk padded with zero
  seeds), the image windows cut in the same compiled step. With `draw` (per layer, a jittable and hashable
  `(reconstructions, patches) -> (a, b)`, e.g. display tiles), each chunk is drawn there too, and only what
  `draw` returns leaves the device. Empty slots (value -inf) are never yielded. Memory: one batch's
  recording and one chunk.
  """
  rec = _jitted_record(model)
  project = {n: _jitted_project(model.arch, n, chunk, (draw or {}).get(n)) for n in tops}
  picked = {n: TopK(*(np.asarray(f)[channels[n]] for f in top)) for n, top in tops.items()}
  seen = 0
  for batch in batches:
    size = len(batch['mask'])
    start = int(batch['index'][0]) if 'index' in batch else seen
    images = recording = None
    for n, top in picked.items():
      rows, cols = np.nonzero((top.image >= start) & (top.image < start + size) & np.isfinite(top.value))
      if recording is None and len(rows):
        images = jax.device_put(batch['image'])
        recording = rec(params, images)
      for i in range(0, len(rows), chunk):
        r, c = rows[i:i + chunk], cols[i:i + chunk]
        fill = lambda a, dtype: np.pad(np.asarray(a, dtype), (0, chunk - len(r)))  # noqa: E731
        seeds = deconvnet.Seeds(fill(top.image[r, c] - start, np.int32), fill(np.asarray(channels[n])[r], np.int32),
                                fill(top.y[r, c], np.int32), fill(top.x[r, c], np.int32),
                                fill(top.value[r, c], np.float32))
        (recon, patch), t, left = jax.device_get(project[n](params, recording.switches, images, seeds))
        window = np.stack([t[:len(r)], left[:len(r)]], axis=-1).astype(np.int32)
        yield ProjectedChunk(n, r, c, recon[:len(r)], patch[:len(r)], window)
    seen += size


def project_topk(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]], tops: dict[int, TopK],
                 channels: dict[int, np.ndarray], chunk: int = 16) -> dict[int, TopKProjections]:
  """Re-reads the stream `stream_topk` read and projects the kept activations of the `channels` of each layer
  (`projected_chunks`), all held at once: for a few maps (`visualize topk`); the report draws each chunk as
  it comes instead. Empty slots (value -inf) stay zero."""
  arch = model.arch
  out = {}
  for n, top in tops.items():
    picked = TopK(*(np.asarray(f)[channels[n]] for f in top))
    size = receptive_field.clamp(0, receptive_field.nominal(arch, n)[0], arch.image_size)[1]
    m, k = picked.value.shape
    box = np.stack(receptive_field.receptive_field(arch, n, picked.y, picked.x), axis=-1)
    empty = lambda: np.zeros((m, k, size, size, arch.in_channels), np.float32)  # noqa: E731
    out[n] = TopKProjections(np.asarray(channels[n]), picked, empty(), empty(), np.zeros((m, k, 2), np.int32), box)
  for part in projected_chunks(model, params, batches, tops, channels, chunk):
    result = out[part.layer]
    result.reconstruction[part.row, part.slot] = part.reconstruction
    result.patch[part.row, part.slot] = part.patch
    result.window[part.row, part.slot] = part.window
  return out


def choose_maps(top: TopK, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` feature maps of `top` (0: all), at random among those that fire at all, in index order."""
  value = np.asarray(top.value)[:, 0]
  if count <= 0 or count >= len(value):
    return np.arange(len(value))
  alive, dead = np.flatnonzero(value > 0), np.flatnonzero(value <= 0)
  picked = rng.choice(alive, min(count, len(alive)), replace=False)
  return np.sort(np.concatenate([picked, dead[:count - len(picked)]]))


def top_projections(model: network.ConvNet, params: Any, batches: Callable[[], Iterable[dict[str, np.ndarray]]],
                    layer_numbers: Iterable[int], k: int, maps: int,
                    rng: np.random.Generator) -> tuple[dict[int, TopK], dict[int, TopKProjections]]:
  """Fig. 2: `(the top k of every map of each layer, the projections of `maps` of them per layer)` over the
  stream `batches()` returns (read twice), the maps chosen by `choose_maps`."""
  layer_numbers = tuple(layer_numbers)
  tops = stream_topk(model, params, batches(), layer_numbers, k=k)
  channels = {n: choose_maps(tops[n], maps, rng) for n in layer_numbers}
  return tops, project_topk(model, params, batches(), tops, channels)
