"""predict: image files and preprocessed .npy arrays give the checkpoint's logits; class names; clear errors."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from zfnet_jax import predict
from zfnet_jax.data import augment, inputs, pipeline, sources
from zfnet_jax.training import checkpointing, evaluation


def test_image_files_and_npy_inputs_give_the_checkpoints_logits(trained_digits, tmp_path):
  config, workdir = trained_digits
  source = tfds.builder('sklearn_digits', data_dir=config.dataset.data_dir).as_dataset(split='test',
                                                                                      shuffle_files=False)
  examples = list(tfds.as_numpy(source.take(3)))
  paths = []
  for i, ex in enumerate(examples):
    paths.append(str(tmp_path / f'digit{i}.png'))
    Image.fromarray(ex['image'][..., 0]).save(paths[-1])
  square = pipeline.open_split(config, 'test').example(0)['image']  # the prepared square of examples[0]
  preprocessed = np.asarray(augment.center_crops(square[None], config, None)[0])
  np.save(tmp_path / 'digit0.npy', preprocessed)
  paths.append(str(tmp_path / 'digit0.npy'))

  logits, step = evaluation.predict_files(config, workdir, paths)
  model, params, latest = checkpointing.load_params(config, workdir)
  assert logits.shape == (4, 10) and step == latest
  np.testing.assert_allclose(logits[0], model.apply({'params': params}, preprocessed[None])[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(logits[0], logits[3])  # the PNG, decoded and preprocessed, is the .npy input

  names = sources.class_names(config)
  assert names == [str(d) for d in range(10)]
  lines = predict.top_k_lines(logits[1], names)
  probs = np.exp(logits[1] - logits[1].max()) / np.exp(logits[1] - logits[1].max()).sum()
  best = int(np.argmax(probs))
  assert len(lines) == 5 and lines[0] == f'  1. {probs[best]:.4f}  {best:4d}  {best}'


def test_bad_inputs_fail_clearly(trained_digits, tmp_path):
  config, _ = trained_digits
  np.save(tmp_path / 'rgb.npy', np.zeros((64, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r'a preprocessed input for this config is float32 \[64, 64, 1\]'):
    inputs.load_input(str(tmp_path / 'rgb.npy'), config)
  (tmp_path / 'notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match='neither a .npy array nor an image file'):
    inputs.load_input(str(tmp_path / 'notes.txt'), config)
  with pytest.raises(FileNotFoundError, match='no image file'):
    inputs.load_input(str(tmp_path / 'missing.png'), config)
