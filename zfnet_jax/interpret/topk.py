"""Top-k over a dataset (Fig. 2, Fig. 4): the k strongest activations of every feature map, projected.

`stream_topk` keeps, for every feature map of the chosen layers, the k strongest activations over a
stream of batches (one per image: an image's strongest position in that map), merged batch by batch
with `topk_merge`; `project_topk` re-reads the stream and projects each kept activation with the
deconvnet.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfnet_jax import parallel
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


def stream_topk(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                layer_numbers: Iterable[int], k: int = 9, mesh: jax.sharding.Mesh | None = None) -> dict[int, TopK]:
  """One pass over `batches` (`image`, `mask`, as `pipeline.eval_batches` yields them): the top `k`
  of every feature map of each layer. Images are numbered in stream order. Batches are sharded over
  `mesh` (default: every local device) and merged on the way, so the result is the top-k of the whole
  stream."""
  layer_numbers = tuple(layer_numbers)
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  channels = {c.layer: c.features for c in model.arch.convs}
  update = _jitted_topk_update(model, layer_numbers)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)
  states, seen = jax.device_put({n: topk_empty(channels[n], k) for n in layer_numbers}, replicated), 0
  for batch in batches:
    size = len(batch['mask'])
    ids = np.arange(seen, seen + size, dtype=np.int32)
    placed = parallel.global_batch(mesh, {'image': batch['image'], 'ids': ids, 'mask': batch['mask']})
    states = update(states, params, placed['image'], placed['ids'], placed['mask'])
    seen += size
  return states


@functools.lru_cache(maxsize=None)
def _jitted_topk_update(model: network.ConvNet, layer_numbers: tuple[int, ...]) -> Callable:
  """One compiled step per (model, layers), shared by every pass (and every checkpoint of a run)."""
  def update(states, params, images, ids, mask):
    outputs = network.forward(model, params, images).layers
    return {n: topk_update(states[n], outputs[f'layer{n}'], ids, mask) for n in layer_numbers}
  return jax.jit(update)


@functools.lru_cache(maxsize=None)
def _jitted_record(model: network.ConvNet) -> Callable:
  return jax.jit(functools.partial(deconvnet.record, model))


@functools.lru_cache(maxsize=None)
def _jitted_project(arch: network.Architecture, layer: int, chunk: int) -> Callable:
  return jax.jit(functools.partial(deconvnet.project_patches, arch, layer=layer, chunk=chunk))


class TopKProjections(NamedTuple):
  """What Fig. 2 draws for one layer: `M` feature maps, each with its `k` strongest activations."""
  channel: np.ndarray  # [M]
  top: TopK  # fields [M, k]
  reconstruction: np.ndarray  # [M, k, R, R, C_in] the deconvnet projections, cropped to ...
  patch: np.ndarray  # [M, k, R, R, C_in] ... the same image windows (network input values)
  window: np.ndarray  # [M, k, 2] (top, left) of each window in its image
  receptive_field: np.ndarray  # [M, k, 4] exact receptive field (top, left, bottom, right), half-open


def project_topk(model: network.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]], tops: dict[int, TopK],
                 channels: dict[int, np.ndarray], chunk: int = 16) -> dict[int, TopKProjections]:
  """Re-reads the stream `stream_topk` read and projects the kept activations of the `channels` of each layer.

  Each batch with kept images is recorded once; their seeds are projected `chunk` at a time (the last
  chunk padded with zero seeds). Empty slots (value -inf) stay zero.
  """
  arch = model.arch
  rec = _jitted_record(model)
  project = {n: _jitted_project(arch, n, chunk) for n in tops}
  out = {}
  for n, top in tops.items():
    picked = TopK(*(np.asarray(f)[channels[n]] for f in top))
    size = receptive_field.clamp(0, receptive_field.nominal(arch, n)[0], arch.image_size)[1]
    m, k = picked.value.shape
    box = np.stack(receptive_field.receptive_field(arch, n, picked.y, picked.x), axis=-1)
    empty = lambda: np.zeros((m, k, size, size, arch.in_channels), np.float32)  # noqa: E731
    out[n] = TopKProjections(np.asarray(channels[n]), picked, empty(), empty(), np.zeros((m, k, 2), np.int32), box)
  seen = 0
  for batch in batches:
    recording = None
    for n, result in out.items():
      rows, cols = np.nonzero((result.top.image >= seen) & (result.top.image < seen + len(batch['mask']))
                              & np.isfinite(result.top.value))
      if recording is None and len(rows):
        recording = rec(params, batch['image'])
      for i in range(0, len(rows), chunk):
        r, c = rows[i:i + chunk], cols[i:i + chunk]
        fill = lambda a, dtype: np.pad(np.asarray(a, dtype), (0, chunk - len(r)))  # noqa: E731
        seeds = deconvnet.Seeds(fill(result.top.image[r, c] - seen, np.int32), fill(result.channel[r], np.int32),
                                fill(result.top.y[r, c], np.int32), fill(result.top.x[r, c], np.int32),
                                fill(result.top.value[r, c], np.float32))
        proj = jax.device_get(project[n](params, recording.switches, seeds=seeds))
        size = proj.patches.shape[1]
        for j in range(len(r)):
          top, left = int(proj.top[j]), int(proj.left[j])
          result.reconstruction[r[j], c[j]] = proj.patches[j]
          result.patch[r[j], c[j]] = batch['image'][seeds.image[j], top:top + size, left:left + size]
          result.window[r[j], c[j]] = (top, left)
    seen += len(batch['mask'])
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
