"""The input: squares prepared once, on-device crops, and ImageNet-format archives through the real tfds
builder, trained, killed, resumed and evaluated. (Train and eval batches over drawn batch sizes, hosts,
steps and class subsets: test_properties.py.)"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO, TINY_IMAGENET, config_path, digits_config
from zfnet_jax import config_lib
from zfnet_jax.data import augment, pipeline, preprocess, sources, squares
from zfnet_jax.training import checkpointing, evaluation, loop


def test_squares_are_the_source_images_resized_and_cropped_with_their_mean(tfds_dir):
  config = digits_config(tfds_dir)
  b = squares.prepare(config)
  source = tfds.builder('sklearn_digits', data_dir=tfds_dir).as_dataset(split='train', shuffle_files=False)
  records = pipeline.open_split(config, 'train')
  for k, ex in enumerate(tfds.as_numpy(source.take(5))):
    expected = preprocess.square(Image.fromarray(ex['image'][..., 0]), 72)
    np.testing.assert_array_equal(records.example(k)['image'], expected)
    assert records.labels[k] == ex['label']
  everything = np.stack([records.example(k)['image'] for k in range(len(records))]).astype(np.float64)
  np.testing.assert_allclose(squares.split_file(b, 'mean', 'train'), everything.mean(0), rtol=1e-5)


def test_other_processes_wait_for_process_0_and_then_say_what_to_do(tfds_dir):
  config = digits_config(tfds_dir, input__resize_size=70, input__prepare_timeout_s=0.5)  # never prepared
  start = time.time()
  with pytest.raises(TimeoutError, match='process 1 waited 0.5s for process 0 to prepare the squares') as e:
    squares.prepare(config, process_index=1)
  assert time.time() - start >= 0.5 and 'raise config.input.prepare_timeout_s' in str(e.value)
  assert not squares.builder(config).is_prepared()


def test_on_device_crops_flips_and_normalisation():
  train_inputs = jax.jit(augment.train_inputs, static_argnames=('seed', 'size', 'crop', 'flip', 'normalization'))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 12, 12, 3), np.uint8)
  kw = dict(seed=0, size=8, crop='paper', flip=True, normalization='mean')
  out = np.asarray(train_inputs(images, jnp.int32(3), **kw))
  normalised = np.asarray(augment.normalize(images, 'mean'))
  np.testing.assert_allclose(normalised, images - augment.channel_stats(3)[0])
  windows = []
  for i in range(6):  # each output is one 8x8 window of its own square, maybe mirrored
    views = [v for y in range(5) for x in range(5) for v in (normalised[i, y:y + 8, x:x + 8],
                                                             normalised[i, y:y + 8, x:x + 8][:, ::-1])]
    match = [j for j, v in enumerate(views) if np.array_equal(v, out[i])]
    assert match, i
    windows.append(match[0])
  assert len(set(windows)) > 1
  # an example's crop depends on (seed, step, its index in the global batch) only
  np.testing.assert_array_equal(np.asarray(train_inputs(images[:3], jnp.int32(3), **kw)), out[:3])
  assert not np.array_equal(np.asarray(train_inputs(images, jnp.int32(4), **kw)), out)
  mean = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(augment.normalize(images, 'pixel_mean', mean)), images - mean, rtol=1e-6)
  inception = train_inputs(images, jnp.int32(3), **{**kw, 'crop': 'inception', 'normalization': 'pixel_mean'},
                                   pixel_mean=mean)
  assert inception.shape == (6, 8, 8, 3) and np.all(np.abs(np.asarray(inception)) <= 255)


def test_missing_imagenet_names_the_archives_and_the_command(tmp_path):
  config = config_lib.load(config_path('default'), {'dataset.data_dir': str(tmp_path)})
  with pytest.raises(sources.DatasetNotFoundError) as e:
    pipeline.train_batches(config)
  msg = str(e.value)
  manual = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert 'ILSVRC2012_img_train.tar' in msg and 'ILSVRC2012_img_val.tar' in msg and manual in msg
  assert f'python scripts/prepare_imagenet.py --manual_dir {manual} --data_dir {tmp_path}' in msg


def test_corrupt_image_in_a_folder_dataset_is_named(tmp_path):
  root = tmp_path / 'images'
  for split in ('train', 'test'):
    for label in ('a', 'b'):
      (root / split / label).mkdir(parents=True)
      for i in range(3):
        Image.fromarray(np.full((10, 12, 3), i * 40, np.uint8)).save(root / split / label / f'{i}.png')
  bad = root / 'test' / 'b' / 'broken.png'
  bad.write_bytes(b'not an image at all')
  config = config_lib.load(config_path('digits'), {'dataset.name': f'folder:{root}', 'model.num_classes': 2,
                                                   'dataset.data_dir': str(tmp_path / 'tfds'), 'eval_batch_size': 8})
  with pytest.raises(ValueError, match='corrupt or unreadable image file .*broken.png'):
    pipeline.eval_batches(config)
  assert not squares.builder(config).is_prepared()  # nothing half-written is taken for prepared
  bad.unlink()
  batches, _, n = pipeline.eval_batches(config)
  assert n == 6 and sum(int(b['mask'].sum()) for b in batches) == 6


# ImageNet-format archives -> `scripts/prepare_imagenet.py` (tfds's imagenet2012 builder, then the squares; the
# `imagenet` fixture, conftest.py) -> a tiny ZFNet trained, killed with SIGKILL, resumed, evaluated with 10 crops.
TRAIN = [*TINY_IMAGENET, '--config.batch_size=8', '--config.eval_batch_size=8', '--config.num_train_steps=6',
         '--config.checkpoint_every_steps=2', '--config.log_every_steps=1', '--config.eval_every_epochs=100',
         '--config.input.normalization=pixel_mean']


def tiny_imagenet_config(data_dir: str, args=TINY_IMAGENET):
  return config_lib.from_args(config_path('default'), [*args, f'--config.dataset.data_dir={data_dir}'])


def test_imagenet_format_archives_reach_the_squares_in_every_colour_mode(imagenet):
  config = tiny_imagenet_config(imagenet.data_dir)
  source = tfds.builder('imagenet2012', data_dir=imagenet.data_dir).as_dataset(
      split='train', shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
  records = pipeline.open_split(config, 'train')
  names = [ex['file_name'].decode() for ex in tfds.as_numpy(source)]
  assert {'n01739381_1309.JPEG', 'n02105855_2933.JPEG'} <= set(names)  # the CMYK and the PNG file
  for k, name in enumerate(names):
    square = records.example(k)['image'].astype(int)
    assert square.shape == (112, 112, 3) and square.std() > 5, name  # a picture, not a blank
    grey = int(name.split('_')[1].split('.')[0]) % 5 == 0  # the generator's every fifth image
    assert (np.abs(square - square[..., :1]).max() <= 2) == grey, name
  val = pipeline.open_split(config, 'validation')
  bundled = open(os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012',
                              'validation_labels.txt')).read().split()[:8]
  synsets = open(os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')).read().split()
  assert sorted(val.labels.tolist()) == sorted(synsets.index(s) for s in bundled)  # the CMYK and PNG ones too


def train(workdir, data_dir, wait=True):
  """`python -m zfnet_jax.train` with `TRAIN` (the session's 8 devices and persistent XLA cache: conftest)."""
  args = [sys.executable, '-m', 'zfnet_jax.train', '--config', config_path('default'), '--workdir', str(workdir),
          *TRAIN, f'--config.dataset.data_dir={data_dir}']
  env = {**os.environ, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  return out


def test_imagenet_run_killed_and_resumed_ends_bit_exact_and_evaluates_every_example(imagenet, tmp_path):
  config = tiny_imagenet_config(imagenet.data_dir, TRAIN)
  # the uninterrupted reference in this process: the same devices and program as the command line's (and it
  # compiles the steps into the persistent cache for the launches)
  loop.train_and_evaluate(config, str(tmp_path / 'reference'))
  proc = train(tmp_path / 'killed', imagenet.data_dir, wait=False)
  ckpts, deadline = tmp_path / 'killed' / 'checkpoints', time.time() + 240
  while not (ckpts.exists() and any(d.isdigit() and int(d) >= 2 for d in os.listdir(ckpts))):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  stopped_at = checkpointing.manager(str(tmp_path / 'killed')).latest_step()
  assert stopped_at is not None and stopped_at < 6
  out = train(tmp_path / 'killed', imagenet.data_dir)
  assert f'Resuming from the checkpoint at step {stopped_at}' in out
  finals = [checkpointing.load_params(config, str(tmp_path / run))[1] for run in ('reference', 'killed')]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), *finals)
  record = evaluation.evaluate_checkpoint(config, str(tmp_path / 'killed'), num_crops=10)
  assert record['num_examples'] == 8 and record['crops'] == 10 and record['checkpoint_step'] == 6
  with open(tmp_path / 'killed' / 'eval.json') as f:
    assert json.load(f) == record
