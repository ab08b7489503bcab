"""Evaluation of a checkpoint over a whole split: `python -m zfnet_jax.evaluate --config CFG --workdir DIR`.

`--crops 1` scores the centre crop (as training's evaluation does); `--crops 10` the paper's ten test crops,
the four corners and the centre of the resized square, each also mirrored, averaging the ten softmaxes.
Every example of `config.dataset.eval_split` counts exactly once. Prints top-1/top-5 accuracy (and error,
as the paper reports it) and the loss, and writes them to `DIR/eval.json` with the number of examples,
the crop mode and the checkpoint step (the latest of `DIR/checkpoints`).

  python -m zfnet_jax.evaluate --config configs/digits.py --workdir runs/digits --crops 10

The host pipeline sends the whole resized square (`config.input.resize_size`) to the devices, which cut
the crops, so ten crops cost ten forward passes but no extra host work.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from zfnet_jax import checkpointing, config_lib, input_pipeline, models, steps, train

CROP_MODES = (1, 10)


def crops(squares: jax.Array, size: int, num_crops: int) -> jax.Array:
  """`[B, R, R, C]` resized squares -> `[num_crops, B, size, size, C]` crops.

  1: the centre crop, at offset `(R - size) // 2` as `input_pipeline.preprocess_eval` cuts it.
  10: the centre and the four corners, then the same five mirrored left-right.
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


def mean_log_probs(params: Any, squares: jax.Array, *, model: models.ConvNet, num_crops: int) -> jax.Array:
  """`[B, R, R, C]` squares -> `[B, K]` log of the softmax averaged over each square's crops."""
  forward = lambda x: jax.nn.log_softmax(model.apply({'params': params}, x))
  log_probs = jax.lax.map(forward, crops(squares, model.arch.image_size, num_crops))  # one crop at a time
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(num_crops)


def eval_step(params: Any, batch: steps.Batch, *, model: models.ConvNet, num_crops: int) -> dict[str, jax.Array]:
  """Sums over the `mask == 1` squares of `batch`: loss, top-1 and top-5 correct, count."""
  scores = mean_log_probs(params, batch['image'], model=model, num_crops=num_crops)
  mask = batch['mask'].astype(jnp.float32)
  loss = -jnp.take_along_axis(scores, batch['label'][:, None], axis=-1)[:, 0]
  return {'loss': jnp.sum(loss * mask),
          'top1': jnp.sum(steps.topk_correct(scores, batch['label'], 1) * mask),
          'top5': jnp.sum(steps.topk_correct(scores, batch['label'], 5) * mask),
          'count': jnp.sum(mask)}


def squares_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `model.image_size = input.resize_size`: its eval batches are the whole resized squares."""
  squares = config.copy_and_resolve_references()
  squares.model.image_size = config.input.resize_size
  return squares


def evaluate(config: ml_collections.ConfigDict, workdir: str, num_crops: int = 1) -> dict[str, Any]:
  """Scores the latest checkpoint of `workdir` over the whole eval split; writes and returns `eval.json`'s record."""
  if num_crops not in CROP_MODES:
    raise ValueError(f'--crops must be one of {CROP_MODES}, got {num_crops}')
  n_dev = jax.device_count()
  if config.eval_batch_size % n_dev:
    raise ValueError(f'config.eval_batch_size={config.eval_batch_size} must be a multiple of the {n_dev} devices: '
                     f'e.g. --config.eval_batch_size={max(1, config.eval_batch_size // n_dev) * n_dev}')
  input_pipeline.hide_accelerators_from_tf()
  model, params, step = checkpointing.load_params(config, workdir)
  mesh = steps.make_mesh()
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  params = jax.device_put(params, replicated)
  step_fn = jax.jit(functools.partial(eval_step, model=model, num_crops=num_crops),
                    in_shardings=(replicated, data), out_shardings=replicated)
  split = config.dataset.eval_split
  results = train.evaluate(step_fn, params, squares_config(config), mesh, split)
  record = {**{k: results[k] for k in ('top1', 'top5', 'loss')}, 'num_examples': int(results['num_examples']),
            'crops': num_crops, 'checkpoint_step': step, 'dataset': config.dataset.name, 'split': split}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(record, f, indent=2)
  return record


def main(argv: list[str]) -> None:
  from absl import app, flags, logging
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  r = evaluate(FLAGS.config, FLAGS.workdir, int(FLAGS.crops))
  print(f'{r["dataset"]} {r["split"]}, {r["num_examples"]} examples, {r["crops"]} crop(s), checkpoint step '
        f'{r["checkpoint_step"]}: top-1 {r["top1"]:.2%} (error {1 - r["top1"]:.2%}), top-5 {r["top5"]:.2%} '
        f'(error {1 - r["top5"]:.2%}), loss {r["loss"]:.4f} -> {os.path.join(FLAGS.workdir, "eval.json")}')


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'The config the checkpoint was trained (or imported) with.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The workdir whose latest checkpoint is evaluated; eval.json goes here.',
                      required=True)
  flags.DEFINE_enum('crops', '1', ['1', '10'], 'Centre crop (1) or the paper\'s 10 crops, softmax averaged.')
  flags.mark_flag_as_required('config')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
