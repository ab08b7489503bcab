"""evaluate: 10 crops average the ten single-crop softmaxes; 1 crop is training's evaluation; every example once."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import digits_config
from zfnet_jax import parallel
from zfnet_jax.data import augment, pipeline
from zfnet_jax.training import checkpointing, evaluation


def ten_crops(square: np.ndarray, size: int) -> list[np.ndarray]:
  """The paper's test crops of one `[R, R, C]` square, cut directly: centre, 4 corners, and their mirrors."""
  centre, end = (square.shape[0] - size) // 2, square.shape[0] - size
  five = [square[y:y + size, x:x + size] for y, x in ((centre, centre), (0, 0), (0, end), (end, 0), (end, end))]
  return five + [v[:, ::-1] for v in five]


def test_ten_crops_equal_the_mean_of_ten_single_crop_softmaxes(trained_digits):
  config, workdir = trained_digits
  record = evaluation.evaluate_checkpoint(config, workdir, num_crops=10)

  model, params, step = checkpointing.load_params(config, workdir)
  size = config.model.image_size
  records = pipeline.open_split(config, config.dataset.eval_split)
  mean, std = augment.channel_stats(1)  # grey digits, mean_std
  crops, labels = [], records.labels
  for k in range(len(records)):
    crops += ten_crops((records.example(k)['image'].astype(np.float32) - mean) / std, size)
  forward = jax.jit(lambda x: model.apply({'params': params}, x))
  logits = np.concatenate([forward(np.stack(crops[i:i + 400])) for i in range(0, len(crops), 400)])
  logits = logits.astype(np.float64).reshape(len(labels), 10, -1)
  softmaxes = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (softmaxes / softmaxes.sum(-1, keepdims=True)).mean(axis=1)
  label_prob = probs[np.arange(len(labels)), labels]
  rank = (probs > label_prob[:, None]).sum(-1)

  assert record['num_examples'] == len(labels) == 360
  assert record['crops'] == 10 and record['checkpoint_step'] == step
  assert record['top1'] == pytest.approx(np.mean(rank < 1), abs=1e-9)
  assert record['top5'] == pytest.approx(np.mean(rank < 5), abs=1e-9)
  assert record['loss'] == pytest.approx(np.mean(-np.log(label_prob)), rel=1e-4)
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f) == record


def test_one_crop_equals_training_evaluation_and_bad_modes_fail(trained_digits):
  config, workdir = trained_digits
  record = evaluation.evaluate_checkpoint(config, workdir, num_crops=1)
  model, params, _ = checkpointing.load_params(config, workdir)
  params = jax.tree_util.tree_map(np.asarray, params)  # host arrays: jit places them beside the sharded batch
  mesh = parallel.make_mesh()
  eval_fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, None))
  expected = evaluation.evaluate(eval_fn, params, config, mesh)
  assert record['crops'] == 1 and record['num_examples'] == expected['num_examples'] == 360
  assert record['top1'] == expected['top1'] and record['top5'] == expected['top5']
  assert record['loss'] == pytest.approx(expected['loss'], rel=1e-5)
  with pytest.raises(ValueError, match='must be one of'):
    evaluation.evaluate_checkpoint(config, workdir, num_crops=5)
  odd = digits_config(config.dataset.data_dir, eval_batch_size=12)
  with pytest.raises(ValueError, match=r'eval_batch_size=12 must be a positive multiple of the 8 devices '
                     r'\(1 process\(es\)\): e.g. --config.eval_batch_size=8'):
    evaluation.evaluate_checkpoint(odd, workdir)
