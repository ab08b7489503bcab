"""The deconvnet: filtering as the conv's transpose, projection against the vjp formulation
(deconv_reference.py), linearity."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deconv_reference
from conftest import LAYOUTS, record, small_net
from zfnet_jax.interpret import deconvnet
from zfnet_jax.model import receptive_field

pytestmark = pytest.mark.usefixtures('quick_compile')


@pytest.mark.parametrize('kernel,stride,channels_in', [(5, 2, 8), (7, 2, 1), (3, 1, 8), (11, 4, 16), (4, 3, 8)])
def test_filter_down_is_the_transpose_of_the_conv(kernel, stride, channels_in):
  """Flipping, channel swap and stride remainders: `filter_down` of a window equals the vjp of the forward
  conv (valid, strided) over the rows the window reads, in both of its code paths (few / many channels)."""
  rng = np.random.default_rng(kernel)
  n = 4
  size = (n - 1) * stride + kernel
  w = jnp.asarray(rng.normal(size=(kernel, kernel, channels_in, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(2, n, n, 6)), jnp.float32)
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (stride, stride), 'VALID',  # noqa: E731
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = jax.vjp(conv, jnp.zeros((2, size + stride - 1, size + stride - 1, channels_in)))[1](y)[0]
  got = jax.jit(deconvnet.filter_down, static_argnums=2)(y, w, stride)
  assert got.shape == (2, size, size, channels_in)
  np.testing.assert_allclose(got, expected[:, :size, :size], rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(expected[:, size:])) and not np.any(np.asarray(expected[:, :, size:]))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _reference(arch, params, images, layer, seeds):
  """The reference formulation: layer `layer`'s output `[B, H, W, C]` and each seed's projection by vjp."""
  one = lambda s: deconv_reference.project_by_vjp(arch, params, images[s.image], layer, s.channel, s.y, s.x, s.value)
  return deconv_reference.forward_with_deconv_rules(arch, params, images, layer), jax.vmap(one)(seeds)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _project(arch, params, switches, layer, seeds):
  return deconvnet.project(arch, params, switches, layer, seeds, chunk=4)


def _seeds(recording: deconvnet.Recording, layer: int, rng: np.random.Generator, count: int = 8) -> deconvnet.Seeds:
  """Corners and random positions of random maps of both images, at their recorded values."""
  act = np.asarray(recording.layers[f'layer{layer}'])
  n = act.shape[1]
  y = np.r_[0, n - 1, 0, n - 1, rng.integers(0, n, count - 4)]
  x = np.r_[0, n - 1, n - 1, 0, rng.integers(0, n, count - 4)]
  image, channel = rng.integers(0, 2, count), rng.integers(0, act.shape[-1], count)
  value = act[image, y, x, channel] + 0.5  # never zero: every seed must project to something
  return deconvnet.Seeds(*(jnp.asarray(v, jnp.int32) for v in (image, channel, y, x)), jnp.asarray(value, jnp.float32))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_project_equals_the_vjp_formulation_for_every_layer(layout):
  model, params = small_net(layout)
  arch = model.arch
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, arch.image_size, arch.image_size, 1)), jnp.float32)
  recording = record(model, params, images)
  rng = np.random.default_rng(0)
  for layer in range(1, 6):
    seeds = _seeds(recording, layer, rng)
    forward, expected = map(np.asarray, _reference(arch, params, images, layer, seeds))
    # The cross-check's forward pass is the model's.
    np.testing.assert_allclose(forward, recording.layers[f'layer{layer}'], rtol=1e-5, atol=1e-5)
    projected = np.asarray(_project(arch, params, recording.switches, layer, seeds))
    assert np.all(np.abs(expected).max(axis=(1, 2, 3)) > 0), 'a seed projected to nothing: the test is vacuous'
    scale = np.abs(expected).max()
    np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-5 * scale, err_msg=f'layer {layer}')
    # Nothing outside the seed's exact receptive field.
    top, left, bottom, right = receptive_field.receptive_field(arch, layer, np.asarray(seeds.y), np.asarray(seeds.x))
    for i in range(len(top)):
      outside = np.ones(projected.shape[1:3], bool)
      outside[top[i]:bottom[i], left[i]:right[i]] = False
      assert not np.any(projected[i][outside])


def test_projection_is_linear_in_the_seed_value():
  model, params = small_net('ceil_lrn')
  arch = model.arch
  images = jnp.asarray(np.random.default_rng(2).normal(size=(2, arch.image_size, arch.image_size, 1)), jnp.float32)
  recording = record(model, params, images)
  for layer in (2, 5):
    seeds = deconvnet.strongest(recording, layer, image=1)
    base = np.asarray(_project(arch, params, recording.switches, layer, seeds))
    assert np.abs(base).max() > 0
    for factor in (0.25, 3.0):
      scaled = _project(arch, params, recording.switches, layer, seeds._replace(value=seeds.value * factor))
      np.testing.assert_allclose(scaled, factor * base, rtol=1e-5, atol=1e-6 * np.abs(base).max())
    zero = _project(arch, params, recording.switches, layer, seeds._replace(value=jnp.zeros_like(seeds.value)))
    assert not np.any(np.asarray(zero))
