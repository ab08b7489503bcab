"""The layers: max-pool (with switches) against XLA's reduce_window, unpooling, the pool's gradient, LRN.

Property-based (hypothesis) over random shapes, windows, strides and ceil/floor modes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from zfnet_jax.model import layers

pytestmark = pytest.mark.usefixtures('quick_compile')

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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def pool_and_unpool(x, window, stride, ceil):
  """Everything the test below computes with JAX for one case, as one program (one compile per case)."""
  expected = reference_pool(x, window, stride, ceil)
  pooled, switches = layers.max_pool_with_switches(x, window, stride, ceil)
  seed = jnp.zeros_like(expected).at[1, -1, -1, 2].set(5.0)  # a one-hot seed at the last position
  unpool = functools.partial(layers.unpool, switches=switches, input_hw=x.shape[1:3], window=window, stride=stride,
                             ceil_mode=ceil)
  return (expected, layers.max_pool(x, window, stride, ceil), pooled, switches, unpool(seed),
          unpool(jnp.ones_like(expected)))


@SETTINGS
@given(pooling_cases())
def test_pooling_with_switches_and_unpooling(case):
  x, window, stride, ceil = case
  expected, plain, pooled, switches, up, counted = map(np.asarray, pool_and_unpool(x, window, stride, ceil))
  np.testing.assert_array_equal(plain, expected)
  np.testing.assert_array_equal(pooled, expected)
  # each switch points at an input inside its window holding the maximum
  b, ho, wo, c = pooled.shape
  for i, oy, ox, ch in np.ndindex(b, ho, wo, c):
    dy, dx = divmod(int(switches[i, oy, ox, ch]), window)
    y, xx = oy * stride + dy, ox * stride + dx
    assert y < x.shape[1] and xx < x.shape[2]
    assert x[i, y, xx, ch] == expected[i, oy, ox, ch]
  # unpooling a one-hot seed puts its value exactly at that switch and nowhere else
  dy, dx = divmod(int(switches[1, ho - 1, wo - 1, 2]), window)
  assert up[1, (ho - 1) * stride + dy, (wo - 1) * stride + dx, 2] == 5.0 and np.count_nonzero(up) == 1
  # unpooling ones counts, at every input, the windows whose switch chose it (overlapping windows add)
  chosen = np.zeros(x.shape, np.float32)
  for i, oy, ox, ch in np.ndindex(b, ho, wo, c):
    dy, dx = divmod(int(switches[i, oy, ox, ch]), window)
    chosen[i, oy * stride + dy, ox * stride + dx, ch] += 1.0
  np.testing.assert_array_equal(counted, chosen)


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


def test_max_pool_gradient_goes_to_the_first_maximum_like_reduce_window():
  """`layers.max_pool`'s custom derivative (the fast one) equals XLA's `reduce_window` gradient, ties included."""
  x = jnp.asarray(np.random.default_rng(0).integers(-2, 3, size=(2, 9, 9, 3)), jnp.float32)  # many ties
  g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  reduce_window = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), 'VALID')
  ours = jax.vjp(lambda v: layers.max_pool(v, 3, 2), x)[1](g)[0]
  np.testing.assert_array_equal(ours, jax.vjp(reduce_window, x)[1](g)[0])
  _, switches = layers.max_pool_with_switches(x, 3, 2)
  np.testing.assert_allclose(ours, layers.unpool(g, switches, (9, 9), 3, 2), rtol=1e-6)
  # forward mode too: with the input as its own tangent, the tangent is the pooled map itself
  tangent = jax.jvp(lambda v: layers.max_pool(v, 3, 2, True), (x,), (x,))[1]
  np.testing.assert_array_equal(tangent, layers.max_pool(x, 3, 2, True))
