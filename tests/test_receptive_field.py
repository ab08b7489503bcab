"""Receptive fields: exact against perturbing each pixel, on random and real layouts; the default network's sizes."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, example, given, settings, strategies as st

from conftest import config_path, small_config
from zfnet_jax import config_lib
from zfnet_jax.model import network, receptive_field


@st.composite
def architectures(draw):
  """Two conv stages, each optionally pooled; strides at most the kernel (no unread gaps, as in real nets)."""
  convs = []
  for layer in (1, 2):
    kernel = draw(st.integers(1, 5))
    convs.append(network.ConvSpec(layer=layer, features=2, kernel=kernel, stride=draw(st.integers(1, min(3, kernel))),
                                 padding=draw(st.integers(0, kernel - 1)), pool=draw(st.booleans()), lrn=False))
  arch = network.Architecture(convs=tuple(convs), fcs=(), num_classes=2, image_size=draw(st.integers(11, 19)),
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


@settings(max_examples=12, deadline=None, derandomize=True)
@given(architectures())
@example(real_layout('floor'))
@example(real_layout('ceil_lrn'))
def test_receptive_fields_match_perturbing_each_pixel(arch):
  """With positive weights and inputs, a large enough bump of a pixel changes exactly the units of every conv
  layer that see it. Fields are rectangles whose rows and columns follow the same intervals, so bumping the
  pixels of the diagonal checks both."""
  model = network.ConvNet(arch)
  params = jax.tree_util.tree_map(lambda p: jnp.abs(p) + 0.1, network.init_params(model, jax.random.key(0)))
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
