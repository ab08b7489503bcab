"""The paper's analyses as functions of (model, params, images): top-k, occlusion, correspondence, invariance.

- Top-k (Fig. 2, Fig. 4): `stream_topk` keeps, for every feature map of the chosen layers, the k
  strongest activations over a stream of batches (one per image: an image's strongest position in
  that map), merged batch by batch with `topk_merge`; `project_topk` re-reads the stream and projects
  each kept activation with the deconvnet.
- Occlusion (Fig. 7): `occlusion` slides a grey square over an image, batched over positions, and
  recomputes only what the square can change (see its docstring).
- Correspondence (Table 1): `correspondence` and `random_boxes` for its random-mask baseline.
- Invariance (Fig. 5): `transform` and `invariance`.
"Grey" is 0 in the network's input space, i.e. the dataset's mean pixel under both of
`input_pipeline`'s normalisations.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfnet_jax import deconvnet, layers, models, receptive_field, steps
from zfnet_jax.receptive_field import Step

_DIMS = ('NHWC', 'HWIO', 'NHWC')


# ---------------------------------------------------------------------------------------------------- top-k

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


def stream_topk(model: models.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]],
                layer_numbers: Iterable[int], k: int = 9, mesh: jax.sharding.Mesh | None = None) -> dict[int, TopK]:
  """One pass over `batches` (`image`, `mask`, as `input_pipeline.eval_batches` yields them): the top `k`
  of every feature map of each layer. Images are numbered in stream order. Batches are sharded over
  `mesh` (default: every local device) and merged on the way, so the result is the top-k of the whole
  stream."""
  layer_numbers = tuple(layer_numbers)
  mesh = mesh or steps.make_mesh(jax.local_devices())
  channels = {c.layer: c.features for c in model.arch.convs}
  update = _jitted_topk_update(model, layer_numbers)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)
  states, seen = jax.device_put({n: topk_empty(channels[n], k) for n in layer_numbers}, replicated), 0
  for batch in batches:
    size = len(batch['mask'])
    ids = np.arange(seen, seen + size, dtype=np.int32)
    placed = steps.global_batch(mesh, {'image': batch['image'], 'ids': ids, 'mask': batch['mask']})
    states = update(states, params, placed['image'], placed['ids'], placed['mask'])
    seen += size
  return states


@functools.lru_cache(maxsize=None)
def _jitted_topk_update(model: models.ConvNet, layer_numbers: tuple[int, ...]) -> Callable:
  """One compiled step per (model, layers), shared by every pass (and every checkpoint of a run)."""
  def update(states, params, images, ids, mask):
    _, state = model.apply({'params': params}, images, mutable=['intermediates'])
    return {n: topk_update(states[n], state['intermediates'][f'layer{n}'][0], ids, mask) for n in layer_numbers}
  return jax.jit(update)


@functools.lru_cache(maxsize=None)
def _jitted_record(model: models.ConvNet) -> Callable:
  return jax.jit(functools.partial(deconvnet.record, model))


@functools.lru_cache(maxsize=None)
def _jitted_project(arch: models.Architecture, layer: int, chunk: int) -> Callable:
  return jax.jit(functools.partial(deconvnet.project_patches, arch, layer=layer, chunk=chunk))


class TopKProjections(NamedTuple):
  """What Fig. 2 draws for one layer: `M` feature maps, each with its `k` strongest activations."""
  channel: np.ndarray  # [M]
  top: TopK  # fields [M, k]
  reconstruction: np.ndarray  # [M, k, R, R, C_in] the deconvnet projections, cropped to ...
  patch: np.ndarray  # [M, k, R, R, C_in] ... the same image windows (network input values)
  window: np.ndarray  # [M, k, 2] (top, left) of each window in its image
  receptive_field: np.ndarray  # [M, k, 4] exact receptive field (top, left, bottom, right), half-open


def project_topk(model: models.ConvNet, params: Any, batches: Iterable[dict[str, np.ndarray]], tops: dict[int, TopK],
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


# ----------------------------------------------------------------------------------------------- occlusion

class OcclusionMaps(NamedTuple):
  """Fig. 7's maps, one entry per position of the square; `[Ny, Nx]` each."""
  activity: jax.Array  # total activation of feature map `feature` of the top conv layer
  probability: jax.Array  # softmax probability of the true class
  top_class: jax.Array  # int32 most probable class
  feature: jax.Array  # int32 the strongest map of the top conv layer on the unoccluded image
  rows: np.ndarray  # [Ny] top rows of the square
  cols: np.ndarray  # [Nx] left columns


def _forward_steps(arch: models.Architecture) -> list[Step]:
  """Every conv and pool of the network, image first."""
  return receptive_field.steps_down(arch, arch.convs[-1].layer)[::-1]


def _apply_step(arch: models.Architecture, params: Any, step: Step, x: jax.Array, whole: bool = True) -> jax.Array:
  """One step as `models.ConvNet` computes it: conv -> ReLU (-> LRN), or max-pool (-> LRN), on `[B, n, n, C]`.

  `whole=False` treats `x` as a region already cut (with padding) from the step's input map: a valid conv,
  or floor-mode pooling over exactly it.
  """
  spec = {c.layer: c for c in arch.convs}[step.layer]
  if step.kind == 'conv':
    p = params[spec.name]
    pad = step.padding if whole else 0
    x = lax.conv_general_dilated(x, p['kernel'], (step.stride,) * 2, [(pad, pad)] * 2,
                                 dimension_numbers=_DIMS) + p['bias']
    x = jax.nn.relu(x)
    lrn = spec.lrn and (arch.lrn_position == 'before_pool' or not spec.pool)
  else:
    x = layers.max_pool(x, step.size, step.stride, arch.pool_ceil and whole)
    lrn = spec.lrn and arch.lrn_position == 'after_pool'
  if lrn:
    x = layers.local_response_norm(x, arch.lrn_size, arch.lrn_k, arch.lrn_alpha, arch.lrn_beta)
  return x


def _head(arch: models.Architecture, params: Any, x: jax.Array) -> jax.Array:
  """Fully connected layers 6-8 (no dropout): top conv map `[B, n, n, C]` -> logits `[B, classes]`."""
  x = x.reshape(x.shape[0], -1)
  for n, _ in arch.fcs:
    x = jax.nn.relu(x @ params[f'fc{n}']['kernel'] + params[f'fc{n}']['bias'])
  return x @ params['fc8']['kernel'] + params['fc8']['bias']


class _LocalStep(NamedTuple):
  step: Step
  size_in: int  # rows of the changed window of the step's input
  size_out: int  # rows of the window of its output that can change
  region: int  # rows of input the output window reads
  pad: tuple[int, int]  # zeros around the input window before the region is sliced from it
  base_pad: tuple[int, int]  # padding of the unoccluded input map (conv zeros / pool -inf)


def _occlusion_plan(arch: models.Architecture, size: int, rows: np.ndarray,
                    local_fraction: float) -> list[_LocalStep]:
  """The steps done on windows, in order; the rest run on whole maps. Static, from every square position."""
  start, n, plan = rows, size, []
  for step in _forward_steps(arch):
    out_start, q = receptive_field.reached(step, start, n)
    if q * q > local_fraction * step.out_size ** 2:
      break
    region_start, region = receptive_field.reads(step, out_start, q)
    pad = (max(0, int(np.max(start - region_start))), max(0, int(np.max(region_start + region - start - n))))
    high = max(0, (step.out_size - 1) * step.stride - step.padding + step.size - step.in_size)
    plan.append(_LocalStep(step, n, q, region, pad, (step.padding, high)))
    start, n = out_start, q
  return plan


def occlusion(model: models.ConvNet, params: Any, image: jax.Array, label: int | jax.Array, size: int, stride: int,
              fill: float = 0.0, chunk: int = 16, local_fraction: float = 0.5) -> OcclusionMaps:
  """Fig. 7: a `size` square of value `fill` at every `stride`-th position inside the image.

  Only what the square can change is recomputed: while the window of a map that the square reaches
  (`receptive_field.reached`) covers at most `local_fraction` of it, each step runs on that window,
  read from the unoccluded map with the changed window written in; after that, whole maps. For
  `configs/default.py` and a 32 px square that is conv1-conv4 on windows, conv5 and the fc layers whole.

  Args:
    image: `[H, W, C]` network input.
  """
  arch = model.arch
  h = arch.image_size
  if image.shape != (h, h, arch.in_channels):
    raise ValueError(f'occlusion needs a {(h, h, arch.in_channels)} network input, got {image.shape}')
  if not 0 < size <= h or stride < 1:
    raise ValueError(f'the square size must be in 1..{h} and the stride positive, got {size}, {stride}')
  rows = np.arange(0, h - size + 1, stride)
  all_steps, plan = _forward_steps(arch), _occlusion_plan(arch, size, rows, local_fraction)

  base = [image[None].astype(jnp.float32)]
  for step in all_steps:
    base.append(_apply_step(arch, params, step, base[-1]))
  top_map = base[-1][0]
  feature = jnp.argmax(jnp.max(top_map, axis=(0, 1))).astype(jnp.int32)
  padded = []
  for plan_step, x in zip(plan, base):
    lo, hi = plan_step.base_pad
    pad_value = -jnp.inf if plan_step.step.kind == 'pool' else 0.0
    padded.append(jnp.pad(x[0], ((lo, hi), (lo, hi), (0, 0)), constant_values=pad_value))

  def one(position):
    start = position
    window = jnp.full((size, size, arch.in_channels), fill, jnp.float32)
    for local, base_map in zip(plan, padded):
      step = local.step
      out_start, q = receptive_field.reached(step, start, local.size_in, jnp)
      region_start = out_start * step.stride - step.padding
      region = lax.dynamic_slice(base_map, (*(region_start + local.base_pad[0]), 0),
                                 (local.region, local.region, base_map.shape[-1]))
      lo, hi = local.pad
      offset = region_start - start + lo
      changed = lambda v: lax.dynamic_slice(  # noqa: E731  (the window's values in region coordinates)
          jnp.pad(v, ((lo, hi), (lo, hi), (0, 0))), (*offset, 0), (local.region, local.region, v.shape[-1]))
      inside = changed(jnp.ones((local.size_in, local.size_in, 1), bool))
      region = jnp.where(inside, changed(window), region)
      window = _apply_step(arch, params, step, region[None], whole=False)[0]
      start = out_start
    rest = lax.dynamic_update_slice(base[len(plan)][0], window, (*start, 0))[None]
    for step in all_steps[len(plan):]:
      rest = _apply_step(arch, params, step, rest)
    probs = jax.nn.softmax(_head(arch, params, rest)[0])
    return jnp.sum(rest[0, ..., feature]), probs[label], jnp.argmax(probs).astype(jnp.int32)

  grid = jnp.stack(jnp.meshgrid(jnp.asarray(rows), jnp.asarray(rows), indexing='ij'), -1).reshape(-1, 2)
  activity, probability, top_class = lax.map(one, grid.astype(jnp.int32), batch_size=chunk)
  shape = (len(rows), len(rows))
  return OcclusionMaps(activity.reshape(shape), probability.reshape(shape), top_class.reshape(shape), feature,
                       rows, rows)


# ------------------------------------------------------------------------------------------ correspondence

def features(model: models.ConvNet, params: Any, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`(softmax probabilities [B, classes], {'layer1': ..., 'layer7': ...})` for `[B, H, W, C]` images."""
  logits, state = model.apply({'params': params}, images, mutable=['intermediates'])
  return jax.nn.softmax(logits), {k: v[0] for k, v in state['intermediates'].items() if k.startswith('layer')}


def mask_boxes(images: jax.Array, boxes: jax.Array, fill: float = 0.0) -> jax.Array:
  """`[N, H, W, C]` images with box `i` = (top, left, height, width) of image `i` set to `fill`."""
  h, w = images.shape[1:3]
  r, c = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  top, left, height, width = (boxes[:, i, None, None] for i in range(4))
  inside = (r >= top) & (r < top + height) & (c >= left) & (c < left + width)
  return jnp.where(inside[..., None], fill, images)


def sign_disagreement(eps: jax.Array) -> jax.Array:
  """Table 1's Delta for `[N, F]` feature differences: the mean over ordered pairs `i != j` of the
  normalised Hamming distance between `sign(eps_i)` and `sign(eps_j)` (0: identical signs)."""
  s = jnp.sign(eps)
  n = s.shape[0]
  differ = jnp.mean(s[:, None, :] != s[None, :, :], axis=-1)  # [N, N], zero diagonal
  return jnp.sum(differ) / (n * (n - 1))


def correspondence(model: models.ConvNet, params: Any, images: jax.Array, boxes: jax.Array,
                   layer_numbers: tuple[int, ...] = (5, 7), fill: float = 0.0) -> dict[int, jax.Array]:
  """Table 1: `{layer: Delta_l}` for `[N, H, W, C]` images with the same part masked by `boxes` `[N, 4]`
  (top, left, height, width); eps_i = features of image i minus those of its masked copy."""
  _, plain = features(model, params, images)
  _, masked = features(model, params, mask_boxes(images, boxes, fill))
  return {n: sign_disagreement((plain[f'layer{n}'] - masked[f'layer{n}']).reshape(len(images), -1))
          for n in layer_numbers}


def random_boxes(rng: np.random.Generator, boxes: np.ndarray, image_size: int) -> np.ndarray:
  """The baseline's masks: boxes of the same sizes at uniformly random positions inside the image."""
  boxes = np.array(boxes)
  for i in range(len(boxes)):
    boxes[i, 0] = rng.integers(0, image_size - boxes[i, 2] + 1)
    boxes[i, 1] = rng.integers(0, image_size - boxes[i, 3] + 1)
  return boxes


# --------------------------------------------------------------------------------------------- invariance

TRANSFORMS = ('translation', 'scale', 'rotation')


def transform(image: jax.Array, kind: str, amount: jax.Array, fill: float = 0.0) -> jax.Array:
  """An `[H, W, C]` image shifted down by `amount` pixels, scaled by `amount` about its centre, or rotated
  by `amount` degrees anticlockwise about it (bilinear; `fill` where nothing maps)."""
  h, w = image.shape[:2]
  r, c = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  cr, cc = (h - 1) / 2, (w - 1) / 2
  if kind == 'translation':
    src = (r - amount, c)
  elif kind == 'scale':
    src = (cr + (r - cr) / amount, cc + (c - cc) / amount)
  elif kind == 'rotation':
    t = jnp.deg2rad(amount)
    src = (cr + (r - cr) * jnp.cos(t) + (c - cc) * jnp.sin(t), cc - (r - cr) * jnp.sin(t) + (c - cc) * jnp.cos(t))
  else:
    raise ValueError(f'transform kind must be one of {TRANSFORMS}, got {kind!r}')
  return jnp.stack([jax.scipy.ndimage.map_coordinates(image[..., i], src, order=1, mode='constant', cval=fill)
                    for i in range(image.shape[-1])], axis=-1)


def invariance(model: models.ConvNet, params: Any, images: jax.Array, labels: jax.Array, kind: str,
               amounts: jax.Array, fill: float = 0.0) -> dict[str, jax.Array]:
  """Fig. 5 for one transformation: every `[N, H, W, C]` image transformed by every amount `[T]`.

  Returns:
    `{'layer1': [N, T], 'layer7': [N, T]}` Euclidean distances of the layer's features to those of the
    untransformed image, and `'probability'` `[N, T]` of the true class.
  """
  n, t = images.shape[0], amounts.shape[0]
  moved = jax.vmap(lambda im: jax.vmap(lambda a: transform(im, kind, a, fill))(amounts))(images)
  probs, feats = features(model, params, moved.reshape(n * t, *images.shape[1:]))
  _, ref = features(model, params, images)
  out = {}
  for name in ('layer1', 'layer7'):
    f = feats[name].reshape(n, t, -1)
    out[name] = jnp.linalg.norm(f - ref[name].reshape(n, 1, -1), axis=-1)
  out['probability'] = jnp.take_along_axis(probs.reshape(n, t, -1), labels[:, None, None], axis=-1)[..., 0]
  return out
