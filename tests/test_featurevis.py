"""Feature visualisation: the Fourier parametrisation, the transforms, determinism, sharding, a unit whose pattern
is known, and the trained digits network against its dataset."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path, random_params
from zfnet_jax import config_lib, parallel, visualize
from zfnet_jax.data import pipeline
from zfnet_jax.interpret import featurevis
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing

TINY = {'model.conv_features': (8, 6, 8, 8, 6), 'model.fc_features': (16, 16)}  # the digits layout at 64 px
STEPS = 8


@functools.lru_cache(maxsize=None)
def _tiny():
  config = config_lib.load(config_path('digits'), TINY)
  model = network.create_model(config)
  return config, model, random_params(model)


@pytest.mark.parametrize('channels', [1, 3])
def test_fourier_parametrisation_round_trips_a_known_image(channels):
  rng = np.random.default_rng(0)
  images = rng.uniform(0.02, 0.98, (2, 33, 33, channels)) * np.linspace(0.5, 1, 33)[:, None, None]
  params = featurevis.from_unit(images)
  assert params.shape == (2, *featurevis.param_shape(33, channels))
  back = np.asarray(featurevis.to_unit(jnp.asarray(params, jnp.float32), 33))
  np.testing.assert_allclose(back, images, atol=2e-6)


def test_one_over_f_scaling_gives_low_frequencies_the_larger_share():
  scale = featurevis.frequency_scale(64, 64)
  assert scale[0, 0] == scale.max() and scale[0, 1] == pytest.approx(scale[0, 0])  # floored at one cycle per image
  assert scale[0, 32] == pytest.approx(scale[0, 1] / 32, rel=1e-5)  # 1/f: the highest frequency 32x weaker


def test_transforms_keep_the_shape_are_the_identity_at_zero_strength_and_move_at_full():
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 40, 40, 3)), jnp.float32)
  key = jax.random.key(0)
  same = featurevis.transform(key, images, 0.0)
  assert same.shape == images.shape
  np.testing.assert_array_equal(np.asarray(same), np.asarray(images))
  moved = np.asarray(featurevis.transform(key, images, 1.0))
  assert moved.shape == images.shape and np.abs(moved - np.asarray(images)).mean() > 0.05
  again = np.asarray(featurevis.transform(jax.random.key(1), images, 1.0))
  assert np.abs(again - moved).mean() > 0.01  # other randomness, other transforms
  assert 0.0 <= moved.min() and moved.max() <= 1.0  # a blend of pixels and the grey pad


def _run(seed=0, units=(0, 3, 5), mesh=None, **kwargs):
  config, model, params = _tiny()
  return featurevis.optimise(model, params, config, 3, units, steps=STEPS, seed=seed, mesh=mesh, **kwargs)


def test_same_seed_same_images_other_seed_other_images_and_the_stated_shapes():
  a, b, c = _run(0), _run(0), _run(1)
  assert a.pixels.shape == a.inputs.shape == (3, 1, 64, 64, 1) and a.activation.shape == (3, 1)
  assert a.pixels.dtype == np.float32 and 0 <= a.pixels.min() and a.pixels.max() <= 255
  np.testing.assert_array_equal(a.pixels, b.pixels)
  np.testing.assert_array_equal(a.activation, b.activation)
  assert np.abs(a.pixels - c.pixels).mean() > 1.0
  config, _, _ = _tiny()
  offset, scale = featurevis.input_affine(config, 1)
  np.testing.assert_allclose(a.inputs, (a.pixels - offset) / scale, rtol=1e-5, atol=1e-5)


def test_sharded_over_8_devices_equals_1_device_in_chunks_with_units_not_dividing_them():
  """11 units over 8 devices (padded to 16) against 1 device taking 2 units at a time: the same images up to float
  rounding (measured: 6e-5 of 255), and a unit's images depend on the unit alone. Without the transforms: their
  FFTs round differently by batch, and Adam's first steps (about lr * sign(gradient)) can grow such differences."""
  assert jax.device_count() == 8
  units = (0, 1, 2, 3, 4, 5, 6, 7, 2, 1, 0)
  eight = _run(units=units, mesh=parallel.make_mesh(), strength=0.0)
  one = _run(units=units, mesh=parallel.make_mesh(jax.devices()[:1]), chunk=2, strength=0.0)
  np.testing.assert_allclose(eight.pixels, one.pixels, atol=1e-3)
  np.testing.assert_allclose(eight.activation, one.activation, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(eight.pixels[0], eight.pixels[10])


def test_warp_is_the_bilinear_resampling_it_describes():
  """Scale and jitters are exactly scipy's bilinear resampling of the map they describe; with the rotation (three
  band-limited shears), close to it on a smooth image."""
  from scipy import ndimage
  size = 48
  yy, xx = np.mgrid[:size, :size]
  image = (0.5 + 0.4 * np.sin(yy / 5.0) * np.cos(xx / 7.0 + 0.3)).astype(np.float32)
  t1, t2, s = np.asarray([[1.3, -0.7]]), np.asarray([[0.4, 0.6]]), np.asarray([1.07])
  c = (size - 1) / 2
  for alpha, atol in ((0.0, 1e-5), (np.deg2rad(8.0), 0.02), (np.deg2rad(-9.0), 0.02)):
    out = featurevis.warp(*(jnp.asarray(a, jnp.float32) for a in (image[None, :, :, None], t1, t2, s, [alpha])))
    rotation = np.asarray([[np.cos(alpha), -np.sin(alpha)], [np.sin(alpha), np.cos(alpha)]])
    source = np.einsum('ij,jyx->iyx', rotation, np.stack([yy - c, xx - c]) + t2[0][:, None, None])
    expected = ndimage.map_coordinates(image, source / s[0] + t1[0][:, None, None] + c, order=1, cval=0.5)
    np.testing.assert_allclose(np.asarray(out)[0, 6:-6, 6:-6, 0], expected[6:-6, 6:-6], atol=atol)


def test_a_vertical_edge_unit_asks_for_a_vertical_edge():
  """Layer 1 without its pool, unit 0 a hand-made vertical-edge filter: the centre neuron's optimised receptive
  field correlates with the filter and not with its transpose (a horizontal edge)."""
  config = config_lib.load(config_path('digits'), {**TINY, 'model.pool_layers': (2, 5)})
  model = network.create_model(config)
  edge = np.zeros((7, 7), np.float32)
  edge[:, :3], edge[:, 4:] = -1, 1
  kernel = np.zeros((7, 7, 1, 8), np.float32)
  kernel[:, :, 0, 0] = edge / np.abs(edge).sum()
  params = {**random_params(model), 'conv1': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(8)}}
  result = featurevis.optimise(model, params, config, 1, [0], objective='neuron', steps=16)
  centre = model.arch.map_sizes()['conv1'][0] // 2 * 2 - 3  # stride 2, padding 3: the window's first row
  window = result.inputs[0, 0, centre:centre + 7, centre:centre + 7, 0]
  corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
  assert corr(window, edge) > 0.9 and abs(corr(window, edge.T)) < 0.2


def test_trained_digits_visualisations_beat_the_datasets_best_for_most_live_units(trained_digits):
  """Layer 4 of the session's short digits run, 64 steps: measured 77 of 87 live units (0.885) beat every test image
  on the map mean (2026-11-30); the bound leaves room for other CPUs' rounding."""
  config, workdir = trained_digits
  model, params, _ = checkpointing.load_params(config, workdir)
  best = featurevis.dataset_best(model, params, pipeline.split_batches(config, 'test', None), (4,))[4]
  result = featurevis.optimise(model, params, config, 4, steps=64)
  beats, live = featurevis.beats_dataset(result.activation, best)
  assert live.sum() > 40 and (beats & live).sum() / live.sum() > 0.75


def test_cli_writes_the_stated_arrays_whose_inputs_give_the_stated_activations(trained_digits, tfds_dir, tmp_path):
  config, workdir = trained_digits
  model, params, _ = checkpointing.load_params(config, workdir)
  common = ['--config', config_path('digits'), '--workdir', workdir, f'--config.dataset.data_dir={tfds_dir}',
            '--steps', '4']
  for args, layer, shape in ((['--layer', '4', '--units', '0,5,7', '--diversity', '2', '--compare'], 4, (3, 2)),
                             (['--objective', 'class', '--units', '3'], 8, (1,))):
    out = tmp_path / f'layer{layer}'
    visualize.main(['featurevis', *common, *args, '--out', str(out)])
    images, inputs = np.load(out / 'images.npy'), np.load(out / 'inputs.npy')
    assert images.shape == inputs.shape == (*shape, 64, 64, 1) and 0 <= images.min() and images.max() <= 255
    rows = json.loads((out / 'activations.json').read_text())
    forward = network.forward(model, params, inputs.reshape(-1, 64, 64, 1))
    value = forward.logits if layer == 8 else np.mean(np.asarray(forward.layers[f'layer{layer}']), axis=(1, 2))
    np.testing.assert_allclose([r['activation'] for r in rows], np.asarray(value)[np.arange(len(rows)),
                                                                                   [r['unit'] for r in rows]],
                               rtol=1e-4, atol=1e-4)
    assert (out / f'featurevis_layer{layer}.png').exists()
    if '--compare' in args:  # the split's best map mean per unit, as a forward pass over the split finds it
      split = np.concatenate([b['image'][b['mask'] > 0] for b in pipeline.split_batches(config, 'test', None)])
      best = np.max(np.mean(np.asarray(network.forward(model, params, split).layers['layer4']), axis=(1, 2)), axis=0)
      np.testing.assert_allclose([r['dataset_best'] for r in rows], best[[r['unit'] for r in rows]], rtol=1e-4)
      assert [r['beats_dataset'] for r in rows] == [r['activation'] > r['dataset_best'] for r in rows]
