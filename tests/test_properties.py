"""Property-based tests (hypothesis) of the layers on random shapes, windows, strides and paddings."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from zfnet_jax import layers, models, receptive_field

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def reference_pool(x, window, stride, ceil):
  """Max-pool through `lax.reduce_window` with PyTorch's output size (independent of layers.py's views)."""
  out = [layers.pool_output_size(n, window, stride, ceil) for n in x.shape[1:3]]
  pad = [(0, 0)] + [(0, max(0, (o - 1) * stride + window - n)) for o, n in zip(out, x.shape[1:3])] + [(0, 0)]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


@st.composite
def pooling_cases(draw):
  window = draw(st.integers(1, 4))
  stride = draw(st.integers(1, window))
  h, w = draw(st.integers(window, 12)), draw(st.integers(window, 12))
  seed = draw(st.integers(0, 2 ** 16))
  # a small set of values makes ties common
  x = np.random.default_rng(seed).integers(-3, 4, size=(2, h, w, 3)).astype(np.float32)
  return x, window, stride, draw(st.booleans())


@SETTINGS
@given(pooling_cases())
def test_pooling_with_switches_and_unpooling(case):
  x, window, stride, ceil = case
  expected = np.asarray(reference_pool(jnp.asarray(x), window, stride, ceil))
  np.testing.assert_array_equal(layers.max_pool(x, window, stride, ceil), expected)
  pooled, switches = layers.max_pool_with_switches(x, window, stride, ceil)
  np.testing.assert_array_equal(pooled, expected)
  # each switch points at an input inside its window holding the maximum
  b, ho, wo, c = pooled.shape
  for i, oy, ox, ch in np.ndindex(b, ho, wo, c):
    dy, dx = divmod(int(switches[i, oy, ox, ch]), window)
    y, xx = oy * stride + dy, ox * stride + dx
    assert y < x.shape[1] and xx < x.shape[2]
    assert x[i, y, xx, ch] == expected[i, oy, ox, ch]
  # unpooling a one-hot seed puts its value exactly at that switch and nowhere else
  seed = np.zeros_like(expected)
  seed[1, ho - 1, wo - 1, 2] = 5.0
  up = np.asarray(layers.unpool(jnp.asarray(seed), switches, x.shape[1:3], window, stride, ceil))
  dy, dx = divmod(int(switches[1, ho - 1, wo - 1, 2]), window)
  assert up[1, (ho - 1) * stride + dy, (wo - 1) * stride + dx, 2] == 5.0 and np.count_nonzero(up) == 1


@SETTINGS
@given(st.integers(1, 9), st.floats(0.5, 3.0), st.floats(1e-5, 1e-1), st.floats(0.25, 1.0), st.integers(1, 12),
       st.integers(0, 2 ** 16))
def test_local_response_norm_matches_the_formula(size, k, alpha, beta, channels, seed):
  x = np.random.default_rng(seed).normal(size=(2, 3, 2, channels)).astype(np.float32) * 10
  expected = np.empty_like(x)
  for c in range(channels):
    window = x[..., max(0, c - size // 2):min(channels, c + (size - 1) // 2 + 1)]
    expected[..., c] = x[..., c] / (k + alpha / size * np.sum(window ** 2, axis=-1)) ** beta
  np.testing.assert_allclose(layers.local_response_norm(jnp.asarray(x), size, k, alpha, beta), expected,
                             rtol=2e-5, atol=1e-6)


@st.composite
def architectures(draw):
  """Two conv stages, each optionally pooled; strides at most the kernel (no unread gaps, as in real nets)."""
  convs = []
  for layer in (1, 2):
    kernel = draw(st.integers(1, 5))
    convs.append(models.ConvSpec(layer=layer, features=2, kernel=kernel, stride=draw(st.integers(1, min(3, kernel))),
                                 padding=draw(st.integers(0, kernel - 1)), pool=draw(st.booleans()), lrn=False))
  arch = models.Architecture(convs=tuple(convs), fcs=(), num_classes=2, image_size=draw(st.integers(11, 19)),
                             in_channels=1, pool_window=draw(st.integers(2, 3)), pool_stride=2,
                             pool_ceil=draw(st.booleans()))
  try:
    arch.map_sizes()
  except ValueError:
    st.assume(False)
  return arch


@settings(max_examples=12, deadline=None, derandomize=True)
@given(architectures())
def test_receptive_fields_match_perturbing_each_pixel(arch):
  """With positive weights and inputs, a large enough bump of a pixel changes exactly the units that see it."""
  model = models.ConvNet(arch)
  params = jax.tree_util.tree_map(lambda p: jnp.abs(p) + 0.1, models.init_params(model, jax.random.key(0)))
  n = arch.image_size
  base = np.random.default_rng(0).uniform(0.1, 1.0, size=(n, n, 1)).astype(np.float32)
  bumped = np.repeat(base[None], n * n, axis=0)
  bumped[np.arange(n * n), np.arange(n * n) // n, np.arange(n * n) % n, 0] += 1e3
  images = np.concatenate([base[None], bumped])

  @jax.jit
  def top_layer(x):
    return model.apply({'params': params}, x, mutable=['intermediates'])[1]['intermediates']['layer2'][0]

  out = np.asarray(top_layer(images))[..., 0]
  changed = out[1:] != out[:1]  # [pixel, y, x]
  size = out.shape[1]
  ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  top, left, bottom, right = receptive_field.receptive_field(arch, 2, ys, xs)
  py, px = np.arange(n * n) // n, np.arange(n * n) % n
  inside = ((py[:, None, None] >= top) & (py[:, None, None] < bottom)
            & (px[:, None, None] >= left) & (px[:, None, None] < right))
  np.testing.assert_array_equal(changed, inside)
