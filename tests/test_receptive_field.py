"""Receptive fields: exact over drawn layouts against an independent NumPy model of which pixels each unit reads,
and exact on real networks against perturbing each pixel; the default network's sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from conftest import config_path, random_params, small_config
from zfnet_jax import config_lib
from zfnet_jax.model import network, receptive_field

pytestmark = pytest.mark.usefixtures('quick_compile')


@st.composite
def architectures(draw):
  """One to four conv stages, each optionally pooled; strides at most the kernel (no unread gaps, as in real nets)."""
  convs = []
  for layer in range(1, draw(st.integers(1, 4)) + 1):
    kernel = draw(st.integers(1, 7))
    convs.append(network.ConvSpec(layer=layer, features=2, kernel=kernel, stride=draw(st.integers(1, min(4, kernel))),
                                 padding=draw(st.integers(0, kernel - 1)), pool=draw(st.booleans()), lrn=False))
  arch = network.Architecture(convs=tuple(convs), fcs=(), num_classes=2, image_size=draw(st.integers(11, 48)),
                             in_channels=1, pool_window=draw(st.integers(2, 3)), pool_stride=2,
                             pool_ceil=draw(st.booleans()))
  try:
    arch.map_sizes()
  except ValueError:
    assume(False)
  return arch


def real_layout(layout: str) -> network.Architecture:
  """A 5-conv-layer `LAYOUTS` net (LRN off: a bump must pass every layer unchanged in sign)."""
  return network.Architecture.from_config(small_config(layout, **{'model.lrn': False}).model)


# Kernel 1, stride 3 with padding 2, ceil-mode 3x3 pools with partial last windows.
ODD = network.Architecture(
    convs=(network.ConvSpec(1, 2, 3, 3, 2, True, False), network.ConvSpec(2, 2, 1, 1, 0, True, False),
           network.ConvSpec(3, 2, 2, 1, 1, False, False)),
    fcs=(), num_classes=2, image_size=23, in_channels=1, pool_window=3, pool_stride=2, pool_ceil=True)
REAL = {'floor': real_layout('floor'), 'ceil': real_layout('ceil_lrn'), 'odd': ODD}


def reads(n_in: int, size: int, stride: int, padding: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` bool: output row `o` of a conv or pool reads input rows `o*stride - padding + [0, size)`."""
  o, i = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
  return (i >= o * stride - padding) & (i < o * stride - padding + size)


def pixels_read(arch: network.Architecture) -> dict[int, np.ndarray]:
  """`{layer: [rows, image rows] bool}`: which image rows each row of each conv layer's output depends on,
  by chaining every conv's and pool's row reads (rows and columns alike)."""
  sizes, out = arch.map_sizes(), {}
  depends, n = np.eye(arch.image_size, dtype=int), arch.image_size
  for c in arch.convs:
    conv_out, pooled = sizes[c.name]
    depends = reads(n, c.kernel, c.stride, c.padding, conv_out).astype(int) @ depends
    if c.pool:
      depends = reads(conv_out, arch.pool_window, arch.pool_stride, 0, pooled).astype(int) @ depends
    n, out[c.layer] = pooled, depends > 0
  return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(architectures())
@example(REAL['floor'])
@example(REAL['ceil'])
@example(ODD)
def test_receptive_fields_are_the_pixels_each_unit_reads(arch):
  pixel = np.arange(arch.image_size)
  for layer, expected in pixels_read(arch).items():
    units = np.arange(len(expected))
    top, left, bottom, right = receptive_field.receptive_field(arch, layer, units, units)
    np.testing.assert_array_equal((pixel >= top[:, None]) & (pixel < bottom[:, None]), expected, f'layer {layer}')
    np.testing.assert_array_equal((left, right), (top, bottom))


@pytest.mark.parametrize('name', sorted(REAL))
def test_receptive_fields_match_perturbing_each_pixel(name):
  """With positive weights and inputs, a large enough bump of a pixel changes exactly the units of every conv
  layer that see it. Fields are rectangles whose rows and columns follow the same intervals, so bumping the
  pixels of the diagonal checks both."""
  arch = REAL[name]
  model = network.ConvNet(arch)
  params = jax.tree_util.tree_map(lambda p: jnp.abs(p) + 0.1, random_params(model))
  n, c = arch.image_size, arch.in_channels
  base = np.random.default_rng(0).uniform(0.1, 1.0, size=(n, n, c)).astype(np.float32)
  bumped = np.repeat(base[None], n, axis=0)
  bumped[np.arange(n), np.arange(n), np.arange(n)] += 1e3
  images = np.concatenate([base[None], bumped])
  layers_out = jax.jit(lambda x: network.forward(model, params, x).layers)(images)
  for spec in arch.convs:
    out = np.asarray(layers_out[f'layer{spec.layer}'])[..., 0]
    changed = out[1:] != out[:1]  # [pixel, y, x]
    size = out.shape[1]
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
    top, left, bottom, right = receptive_field.receptive_field(arch, spec.layer, ys, xs)
    p = np.arange(n)[:, None, None]
    inside = (p >= top) & (p < bottom) & (p >= left) & (p < right)
    np.testing.assert_array_equal(changed, inside, err_msg=f'layer {spec.layer}')


def test_receptive_field_sizes_of_the_default_network():
  arch = network.Architecture.from_config(config_lib.load(config_path('default')).model)
  assert [receptive_field.nominal(arch, n)[:2] for n in range(1, 6)] == [
      (11, 4), (43, 16), (75, 16), (107, 16), (171, 32)]
