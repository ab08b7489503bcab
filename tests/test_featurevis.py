"""Feature visualisation: the Fourier parametrisation, the transforms, determinism, sharding, a unit whose pattern
is known, and the trained digits network against its dataset."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path, random_params
from zfnet_jax import config_lib, parallel
from zfnet_jax.interpret import featurevis
from zfnet_jax.model import network

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
  """11 units over 8 devices (padded to 16) against 1 device taking 2 units at a time: the same images, bit for bit,
  and a unit's images depend on the unit alone. Without the transforms: their FFTs round differently by batch size,
  and Adam's first steps (about lr * sign(gradient)) can grow such last-bit differences."""
  assert jax.device_count() == 8
  units = (0, 1, 2, 3, 4, 5, 6, 7, 2, 1, 0)
  eight = _run(units=units, mesh=parallel.make_mesh(), strength=0.0)
  one = _run(units=units, mesh=parallel.make_mesh(jax.devices()[:1]), chunk=2, strength=0.0)
  np.testing.assert_array_equal(eight.pixels, one.pixels)
  np.testing.assert_array_equal(eight.activation, one.activation)
  np.testing.assert_array_equal(eight.pixels[0], eight.pixels[10])
