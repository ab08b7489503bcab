"""Evaluation: the one eval step (1 or 10 crops) and the one loop over a split, every example counted once.

`--crops 1` scores the centre crop; `10` the paper's ten test crops (the four corners and the centre of
the square, each also mirrored), averaging the ten softmaxes. Batches hold the prepared uint8 squares
(`pipeline.eval_batches(..., squares_only=True)`): normalisation and crops run on the device, so ten
crops cost ten forward passes but no extra host work.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh

from zfnet_jax import parallel, paths
from zfnet_jax.data import augment, inputs, pipeline, sources, squares
from zfnet_jax.model import inference, network
from zfnet_jax.training import checkpointing, steps

CROP_MODES = (1, 10)


def crops(squares: jax.Array, size: int, num_crops: int) -> jax.Array:
  """`[B, R, R, C]` images -> `[num_crops, B, size, size, C]` crops.

  1: the centre crop, at offset `(R - size) // 2` as `augment.center_crops` cuts it (the image itself
  when `R == size`). 10: the centre and the four corners, then the same five mirrored left-right.
  """
  if num_crops not in CROP_MODES:
    raise ValueError(f'crops must be one of {CROP_MODES}, got {num_crops}')
  r = squares.shape[1]
  centre, end = (r - size) // 2, r - size
  offsets = [(centre, centre)] + ([(0, 0), (0, end), (end, 0), (end, end)] if num_crops == 10 else [])
  views = [squares[:, y:y + size, x:x + size] for y, x in offsets]
  if num_crops == 10:
    views += [v[:, :, ::-1] for v in views]
  return jnp.stack(views)


def mean_log_probs(params: Any, squares: jax.Array, *, model: network.ConvNet, num_crops: int) -> jax.Array:
  """`[B, R, R, C]` images -> `[B, K]` float32 log of the softmax averaged over each image's crops."""
  forward = lambda x: jax.nn.log_softmax(model.apply({'params': params}, x).astype(jnp.float32))  # noqa: E731
  log_probs = jax.lax.map(forward, crops(squares, model.arch.image_size, num_crops))  # one crop at a time
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(num_crops)


def eval_step(params: Any, batch: parallel.Batch, *, model: network.ConvNet, normalize: Callable,
              num_crops: int = 1) -> dict[str, jax.Array]:
  """Sums over the `mask == 1` images of `batch` (`image` uint8 squares `[B, R, R, C]`, `label`, `mask`
  `[B]`): loss, top-1 and top-5 correct, count. `normalize`: `augment.normalize_fn(config, pixel_mean)`."""
  scores = mean_log_probs(params, normalize(batch['image']), model=model, num_crops=num_crops)
  mask = batch['mask'].astype(jnp.float32)
  loss = -jnp.take_along_axis(scores, batch['label'][:, None], axis=-1)[:, 0]
  return {'loss': jnp.sum(loss * mask),
          'top1': jnp.sum(steps.topk_correct(scores, batch['label'], 1) * mask),
          'top5': jnp.sum(steps.topk_correct(scores, batch['label'], 5) * mask),
          'count': jnp.sum(mask)}


def jit_eval_step(mesh: Mesh, model: network.ConvNet, normalize: Callable, num_crops: int = 1) -> Callable:
  """`eval_step` jitted over `mesh`: `(params replicated, batch sharded over data) -> sums (replicated)`."""
  return jax.jit(functools.partial(eval_step, model=model, normalize=normalize, num_crops=num_crops),
                 in_shardings=(parallel.replicated(mesh), parallel.sharded(mesh)),
                 out_shardings=parallel.replicated(mesh), compiler_options=parallel.compiler_options(mesh))


def evaluate(eval_fn: Callable, params: Any, config: ml_collections.ConfigDict, mesh: Mesh,
             split: str | None = None) -> dict[str, float]:
  """Mean loss, top-1 and top-5 of `eval_fn` (a `jit_eval_step`) over the whole split, on every host.

  Every example counts exactly once (the last batch is padded and masked); `num_examples` says how many.
  """
  batches, _, num_examples = pipeline.eval_batches(config, split, jax.process_index(), jax.process_count(),
                                                   squares_only=True)
  sums = None
  one_step_in_flight = parallel.one_step_in_flight()
  for batch in batches:
    out = eval_fn(params, parallel.global_batch(mesh, batch))
    if one_step_in_flight:
      jax.block_until_ready(out)
    sums = out if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, out)
  sums = {k: float(v) for k, v in jax.device_get(sums).items()}  # the one read from the device
  if int(sums['count']) != num_examples:
    raise RuntimeError(f'evaluation counted {int(sums["count"])} examples, the split has {num_examples}')
  count = sums.pop('count')
  return {**{k: v / count for k, v in sums.items()}, 'num_examples': count}


def score_checkpoint(config: ml_collections.ConfigDict, workdir: str, split: str | None = None,
                     num_crops: int = 1) -> tuple[dict[str, float], int, int]:
  """`(metrics, step, parameter count)`: `evaluate` of the latest checkpoint of `workdir` over `split`."""
  if num_crops not in CROP_MODES:
    raise ValueError(f'--crops must be one of {CROP_MODES}, got {num_crops}')
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size)
  sources.hide_accelerators_from_tf()
  model, params, step = checkpointing.load_params(config, workdir)
  mesh = parallel.make_mesh()
  params = jax.device_put(params, parallel.replicated(mesh))
  eval_fn = jit_eval_step(mesh, model, augment.normalize_fn(config, squares.pixel_mean(config)), num_crops)
  return evaluate(eval_fn, params, config, mesh, split), step, network.count_params(params)


class ResultNotSavedError(PermissionError):
  """The evaluation finished but `eval.json` could not be written; `record` holds the result."""

  def __init__(self, message: str, record: dict[str, Any]):
    super().__init__(message)
    self.record = record


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, num_crops: int = 1) -> dict[str, Any]:
  """Scores the latest checkpoint of `workdir` over the whole eval split; writes and returns `eval.json`'s record.

  Raises:
    ResultNotSavedError: `eval.json` could not be written (a read-only workdir); the result is in its `record`.
  """
  split = config.dataset.eval_split
  results, step, _ = score_checkpoint(config, workdir, split, num_crops)
  record = {**{k: results[k] for k in ('top1', 'top5', 'loss')}, 'num_examples': int(results['num_examples']),
            'crops': num_crops, 'checkpoint_step': step, 'dataset': config.dataset.name, 'split': split}
  path = paths.join(workdir, 'eval.json')
  if jax.process_index() == 0:
    try:
      paths.write_json(path, record, indent=2)
    except (OSError, tf.errors.OpError) as e:
      reason = (getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)).rsplit('; ', 1)[-1]
      raise ResultNotSavedError(f'could not write {path} ({reason}), so the result is not saved: copy it from '
                                f'above, or evaluate again where the workdir is writable', record) from None
  return record


def predict_files(config: ml_collections.ConfigDict, workdir: str, files: list[str]) -> tuple[np.ndarray, int]:
  """`(logits [N, num_classes], checkpoint step)` of the latest checkpoint of `workdir` for image files or `.npy`
  network inputs (`inputs.load_input`), `eval_batch_size` at a time."""
  sources.hide_accelerators_from_tf()
  images = np.stack([inputs.load_input(f, config) for f in files])
  model, params, step = checkpointing.load_params(config, workdir)
  logits = jax.jit(lambda p, x: {'logits': model.apply({'params': p}, x)})
  n = config.eval_batch_size
  batches = ({'image': images[i:i + n], 'mask': np.ones(len(images[i:i + n]))} for i in range(0, len(images), n))
  return inference.collect(logits, params, batches)['logits'], step
