"""The deconvnet: switches, unpooling, projection against the vjp formulation, receptive fields."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfnet_jax import config_lib, deconvnet, layers, models, receptive_field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small nets with odd map sizes, so striding and pooling leave remainders: floor pooling (the seed's
# layout; 99 -> 50 -> 24 -> 12 -> 5 -> 5 -> 2) and ceil pooling with the paper's paddings and LRN
# (103 -> 50 -> 25 -> 11 -> 5 -> 5 -> 2, partial last windows).
LAYOUTS = {
    'floor': {'model.image_size': 99},
    'ceil_lrn': {'model.image_size': 103, 'model.pool_mode': 'ceil', 'model.conv_paddings': (1, 0, 1, 1, 1),
                 'model.lrn': True, 'model.lrn_position': 'before_pool', 'model.lrn_alpha': 0.5},
}


def random_params(model: models.ConvNet, seed: int = 0) -> dict:
  """He-scaled normal weights and small random biases, drawn with NumPy (no init program to compile)."""
  shapes = jax.eval_shape(functools.partial(models.init_params, model), jax.random.key(0))
  rng = np.random.default_rng(seed)
  def draw(leaf):
    if len(leaf.shape) == 1:
      return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
  return jax.tree_util.tree_map(draw, shapes)


def small_net(layout: str, **overrides) -> tuple[models.ConvNet, dict]:
  config = config_lib.load(os.path.join(REPO, 'configs', 'digits.py'), {
      'model.conv_features': (8, 6, 8, 8, 6), 'model.fc_features': (16, 16), **LAYOUTS[layout], **overrides})
  model = models.create_model(config)
  return model, random_params(model)


@functools.partial(jax.jit, static_argnums=0)
def _record(model, params, images):
  return deconvnet.record(model, params, images)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _pool_three_ways(x, window, stride, ceil):
  """Switches, `max_pool`, and XLA's own `reduce_window` max (padded with -inf for ceil mode)."""
  pooled, switches = layers.max_pool_with_switches(x, window, stride, ceil)
  ho, wo = pooled.shape[1:3]
  high = [max(0, (n - 1) * stride + window - size) for n, size in ((ho, x.shape[1]), (wo, x.shape[2]))]
  reference = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                    ((0, 0), (0, high[0]), (0, high[1]), (0, 0)))
  return pooled, switches, layers.max_pool(x, window, stride, ceil), reference


@pytest.mark.parametrize('size,window,stride,ceil', [(13, 3, 2, False), (14, 3, 2, True), (11, 2, 2, True),
                                                     (10, 3, 3, False)])
def test_switches_reproduce_max_pool_and_unpool_puts_values_back_at_the_argmax(size, window, stride, ceil):
  x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size + 1, 3)), jnp.float32)
  pooled, switches, plain, reference = _pool_three_ways(x, window, stride, ceil)
  np.testing.assert_array_equal(pooled, plain)
  np.testing.assert_array_equal(pooled, reference)
  ho, wo = pooled.shape[1:3]
  # The switch of every window points at an element of that window holding the window's maximum.
  rows = np.arange(ho)[None, :, None, None] * stride + np.asarray(switches) // window
  cols = np.arange(wo)[None, None, :, None] * stride + np.asarray(switches) % window
  b, c = np.arange(2)[:, None, None, None], np.arange(3)[None, None, None, :]
  np.testing.assert_array_equal(np.asarray(x)[b, rows, cols, c], pooled)
  # Unpooling puts each value back there and nowhere else (values add where windows share an argmax).
  chosen = np.zeros(x.shape)
  np.add.at(chosen, (np.broadcast_to(b, rows.shape), rows, cols, np.broadcast_to(c, rows.shape)), 1.0)
  unpool = jax.jit(jax.vmap(layers.unpool, in_axes=(0, None, None, None, None, None)), static_argnums=(2, 3, 4, 5))
  counted, values = unpool(jnp.stack([jnp.ones_like(pooled), pooled]), switches, (size, size + 1), window, stride,
                           ceil)
  np.testing.assert_array_equal(counted, chosen)
  np.testing.assert_allclose(values, chosen * np.asarray(x), rtol=1e-6)


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


_forward_with_deconv_rules = jax.jit(deconvnet.forward_with_deconv_rules, static_argnums=(0, 3))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _by_vjp(arch, params, images, layer, seeds):
  one = lambda s: deconvnet.project_by_vjp(arch, params, images[s.image], layer, s.channel, s.y, s.x, s.value)
  return jax.vmap(one)(seeds)


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
  recording = _record(model, params, images)
  rng = np.random.default_rng(0)
  for layer in range(1, 6):
    # The cross-check's forward pass is the model's.
    np.testing.assert_allclose(_forward_with_deconv_rules(arch, params, images, layer),
                               recording.layers[f'layer{layer}'], rtol=1e-5, atol=1e-5)
    seeds = _seeds(recording, layer, rng)
    projected = np.asarray(_project(arch, params, recording.switches, layer, seeds))
    expected = np.asarray(_by_vjp(arch, params, images, layer, seeds))
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
  recording = _record(model, params, images)
  for layer in (2, 5):
    seeds = deconvnet.strongest(recording, layer, image=1)
    base = np.asarray(_project(arch, params, recording.switches, layer, seeds))
    assert np.abs(base).max() > 0
    for factor in (0.25, 3.0):
      scaled = _project(arch, params, recording.switches, layer, seeds._replace(value=seeds.value * factor))
      np.testing.assert_allclose(scaled, factor * base, rtol=1e-5, atol=1e-6 * np.abs(base).max())
    zero = _project(arch, params, recording.switches, layer, seeds._replace(value=jnp.zeros_like(seeds.value)))
    assert not np.any(np.asarray(zero))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_receptive_fields_match_a_brute_force_check(layout):
  """Perturb one input pixel at a time; the units that change are exactly those whose field holds it.

  All-ones weights, zero biases and an all-ones image make every dependency visible: a huge value at
  one pixel raises every unit that depends on it above all its pooling neighbours. Pixels on the
  diagonal suffice (fields are rectangles: rows and columns follow the same intervals).
  """
  model, params = small_net(layout, **{'model.lrn': False, 'model.conv_features': (2, 2, 2, 2, 2)})
  arch = model.arch
  params = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) if p.ndim == 4 else jnp.zeros_like(p), params)
  n = arch.image_size
  base = jnp.ones((1, n, n, 1))
  diagonal = jnp.arange(n)
  images = jnp.concatenate([base, base.repeat(n, 0).at[diagonal, diagonal, diagonal, 0].set(1e9)])
  _, state = jax.jit(lambda x: model.apply({'params': params}, x, mutable=['intermediates']))(images)
  for layer in range(1, 6):
    act = np.asarray(state['intermediates'][f'layer{layer}'][0])
    changed = np.any(act[1:] != act[:1], axis=-1)  # [pixel, y, x]
    m = act.shape[1]
    y, x = np.meshgrid(np.arange(m), np.arange(m), indexing='ij')
    top, left, bottom, right = receptive_field.receptive_field(arch, layer, y, x)
    p = np.arange(n)[:, None, None]
    expected = (p >= top) & (p < bottom) & (p >= left) & (p < right)
    np.testing.assert_array_equal(changed, expected, err_msg=f'layer {layer}')


def test_receptive_field_sizes_of_the_default_network():
  arch = models.Architecture.from_config(config_lib.load(os.path.join(REPO, 'configs', 'default.py')).model)
  assert [receptive_field.nominal(arch, n)[:2] for n in range(1, 6)] == [
      (11, 4), (43, 16), (75, 16), (107, 16), (171, 32)]
