"""Training: a real step of default ZFNet, golden first steps, sharding invariance, checkpoints, evaluation, errors.
(The input: test_data.py, test_properties.py.)"""
import glob
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, TRAINED_DIGITS, config_path, digits_config, small_net
from zfnet_jax import config_lib, parallel
from zfnet_jax.data import augment, pipeline
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, evaluation, loop, metric_writer, optim, steps


def make_steps(config, devices=None, steps_per_epoch=10, inputs=None):
  """`(model, mesh, (init, train, eval))` for `config`; `inputs` replaces the on-device augmentation."""
  model = network.create_model(config)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, 10 * steps_per_epoch)
  tx = optim.create_optimizer(config.optim, schedule)
  mesh = parallel.make_mesh(devices)
  init, train = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                config.skip_nonfinite_steps, inputs=inputs or augment.train_inputs_fn(config, None))
  return model, mesh, (init, train, evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, None)))


def test_one_train_step_of_default_zfnet_on_imagenet_sized_squares():
  config = config_lib.load(config_path('default'), {'batch_size': 8})
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 256, 256, 3), np.uint8), 'label': rng.integers(0, 1000, 8, np.int32)}
  model, mesh, (init, train_step, _) = make_steps(config, jax.devices()[:1])
  state = init(jax.random.key(0))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, metrics = train_step(state, parallel.global_batch(mesh, batch))
  # N(0, 0.01^2) weights give near-zero logits: the loss is within 2% of a uniform guess over 1000 classes
  # (random uint8 squares, all high-frequency, move it ~0.06 above log 1000; a trained or broken net is far off)
  assert abs(float(metrics['loss']) - math.log(1000)) < 0.02 * math.log(1000)
  assert int(state.step) == 1
  for name in ('conv1', 'fc6', 'fc8'):
    assert not np.allclose(before[name]['kernel'], state.params[name]['kernel']), name


# Golden numbers (nanodo's habit) of the first two steps of the shared digits run (conftest.TRAINED_DIGITS: the
# digits config at a constant learning rate 0.02 with no warm-up, so the first update is not zero), from `loop.set_up`
# in a fresh workdir on the session's 8 CPU devices: loss, top-1, top-5 of step 1, the same of step 2, then the norm of
# the parameters after step 2 and of what the two steps moved them (float64 sums). Produced once by this test's code
# printing `got` (jax 0.10.2, CPU); 1 and 2 devices give the same numbers, `jax_disable_most_optimizations` the same to
# 1e-7. Another seed (initialisation, data order, crops, dropout) moves each by 0.1% (parameter norm) to 45%; a 0.5%
# larger learning rate moves the step-2 loss by 6e-4 and the update by 1e-3; momentum 0.85 the update by 7e-3.
GOLDEN_FIRST_STEPS = (9.883411407470703, 0.09375, 0.546875, 2.5264124870300293, 0.078125, 0.578125,
                      41.312034675059294, 4.56217406965655)


def test_first_two_steps_of_the_digits_run_give_the_stored_numbers(tfds_dir, tmp_path):
  run = loop.set_up(digits_config(tfds_dir, **TRAINED_DIGITS), str(tmp_path))
  initial = jax.device_get(run.state.params)
  got = []
  for _ in range(2):
    run.state, metrics = run.train_fn(run.state, parallel.global_batch(run.mesh, next(run.batches)))
    got += [float(jax.device_get(metrics[k])) for k in ('loss', 'top1', 'top5')]
  run.mngr.close()
  params = jax.device_get(run.state.params)
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))  # noqa: E731
                                        for x in jax.tree_util.tree_leaves(tree))))
  got += [norm(params), norm(jax.tree_util.tree_map(lambda a, b: a - b, params, initial))]
  assert got == pytest.approx(GOLDEN_FIRST_STEPS, rel=2e-5)


def test_sharded_step_equals_single_device_step(tfds_dir):
  config = digits_config(tfds_dir, batch_size=16)
  batches, _ = pipeline.train_batches(config)
  host_batches = [next(batches) for _ in range(2)]
  finals = []
  for devices in (jax.devices()[:1], jax.devices()):
    _, mesh, (init, train_step, _) = make_steps(config, devices)
    state = init(jax.random.key(0))
    for b in host_batches:
      state, _ = train_step(state, parallel.global_batch(mesh, b))
    finals.append(jax.tree_util.tree_map(np.asarray, state.params))
  assert len(jax.devices()) == 8
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *finals)


def test_checkpoint_save_restore_is_identical_and_checks_architecture(tfds_dir, tmp_path):
  config = digits_config(tfds_dir, batch_size=16)
  model, mesh, (init, train_step, _) = make_steps(config)
  batches, _ = pipeline.train_batches(config)
  state, _ = train_step(init(jax.random.key(0)), parallel.global_batch(mesh, next(batches)))
  mngr = checkpointing.manager(str(tmp_path))
  checkpointing.save(mngr, 1, state, model.arch)
  mngr.wait_until_finished()
  restored = checkpointing.restore(mngr, 1, jax.eval_shape(init, jax.random.key(1)), model.arch)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  assert len(leaves) == len(jax.tree_util.tree_leaves(restored)) > 10
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, restored)
  other = digits_config(tfds_dir, model__fc_features=(128, 128))
  with pytest.raises(checkpointing.ArchitectureMismatchError, match=r'fcs: saved \[\[6, 256\], \[7, 256\]\]'):
    checkpointing.load_params(other, str(tmp_path))


def test_topk_counts_no_tie_for_the_label_and_bf16_logits_are_float32():
  logits = np.array([[3., 1., 1., 1.], [0., 0., 0., 0.], [1., 2., 0., 0.]], np.float32)
  labels = np.array([1, 2, 0])
  # independent: the label is in the top k if fewer than k other classes have a logit >= its own
  for k in (1, 2, 3, 4):
    expected = [float(np.sum(np.delete(row, y) >= row[y]) < k) for row, y in zip(logits, labels)]
    assert steps.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k).tolist() == expected
  assert steps.topk_correct(jnp.asarray(logits), jnp.asarray(labels), 1).tolist() == [0, 0, 0]
  # a bf16 network computes fc8, and so the logits and the loss, in float32
  model, params = small_net('floor', dtype='bfloat16')
  images = np.random.default_rng(0).normal(size=(4, 99, 99, 1)).astype(np.float32)
  out = model.apply({'params': params}, images)
  assert out.dtype == jnp.float32
  assert np.any(np.asarray(out) != np.asarray(out.astype(jnp.bfloat16).astype(jnp.float32)))
  assert steps.cross_entropy(out.astype(jnp.bfloat16), jnp.zeros(4, jnp.int32)).dtype == jnp.float32


def test_workdir_files_go_through_tf_file_systems(tmp_path):
  # TensorFlow's in-memory file system stands in for gs://: not a local path, same code
  workdir = f'ram://{tmp_path}/run'
  loop.check_workdir(workdir)
  writer = metric_writer.MetricWriter(workdir)
  for step in range(1, 6):
    writer.write(step, 'train', {'loss': float(step)})
  writer.drop_after(3)
  with tf.io.gfile.GFile(f'{workdir}/metrics.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [1, 2, 3]
  [events] = tf.io.gfile.glob(f'{workdir}/tensorboard/train/*tfevents*')
  steps_logged = [tf.compat.v1.Event.FromString(r).step for r in tf.data.TFRecordDataset(events).as_numpy_iterator()]
  assert steps_logged[1:] == [1, 2, 3]  # after the file-version record
  assert not os.path.exists('ram:')  # nothing went to a local directory named after the scheme
  assert checkpointing.directory('gs://bucket/run/') == 'gs://bucket/run/checkpoints'
  assert checkpointing.directory('run') == os.path.join(os.getcwd(), 'run', 'checkpoints')


def test_evaluation_counts_every_example_exactly_once(tfds_dir):
  config = digits_config(tfds_dir, eval_batch_size=64)  # 360 test examples = 5 x 64 + 40
  model, mesh, (init, _, eval_fn) = make_steps(config)
  params = init(jax.random.key(3)).params
  got = evaluation.evaluate(eval_fn, params, config, mesh)
  # independent: every test square centre-cropped and normalised in NumPy, one forward over the whole split
  records = pipeline.open_split(config, 'test')
  off, size = (config.input.resize_size - config.model.image_size) // 2, config.model.image_size
  mean, std = augment.channel_stats(1)  # grey digits, mean_std
  images = [(records.example(k)['image'][off:off + size, off:off + size].astype(np.float32) - mean) / std
            for k in range(len(records))]
  labels = records.labels
  logits = np.asarray(model.apply({'params': params}, np.stack(images)))
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True)) \
      - logits.max(1, keepdims=True)
  assert got['num_examples'] == len(labels) == 360
  np.testing.assert_allclose(got['loss'], -np.mean(log_probs[np.arange(360), labels]), rtol=1e-4)
  assert got['top1'] == pytest.approx(np.mean(np.argmax(logits, 1) == labels))
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert got['top5'] == pytest.approx(np.mean(np.any(top5 == labels[:, None], axis=1)))


def test_learning_rate_schedules():
  config = config_lib.load(config_path('default'))
  schedule = optim.learning_rate_schedule(config.optim, 100, 7000)
  assert [float(schedule(s)) for s in (0, 2999, 3000, 4999, 5000, 6500)] == pytest.approx(
      [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-5])
  config = config_lib.load(config_path('digits'))
  schedule = optim.learning_rate_schedule(config.optim, 10, 100)
  assert float(schedule(0)) == 0 and float(schedule(10)) == pytest.approx(0.02)
  assert float(schedule(100)) == pytest.approx(0, abs=1e-9)


def test_unknown_config_field_on_the_command_line_fails_clearly(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'zfnet_jax.train', '--config', config_path('digits'),
                        '--workdir', str(tmp_path / 'run'), '--config.batch_sz=32'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'unknown config field config.batch_sz: did you mean config.batch_size' in out.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_digits_run_logs_and_resumes_instead_of_retraining(trained_digits):
  config, workdir = trained_digits
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [r for r in records if r['split'] == 'eval']
  assert evals[-1]['step'] == 88 and evals[-1]['num_examples'] == 360
  assert {'loss', 'top1', 'top5'} <= set(evals[-1]) and evals[-1]['top1'] > 0.2
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'train', 'events.out.tfevents.*'))
  again = loop.train_and_evaluate(config, workdir)
  assert again['top1'] == pytest.approx(evals[-1]['top1'])
  records_after = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r for r in records_after if r['split'] == 'train'] == [r for r in records if r['split'] == 'train']
  assert checkpointing.manager(workdir).latest_step() == 88
