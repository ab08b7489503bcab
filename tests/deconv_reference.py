"""The deconvnet's independent cross-check, for tests/test_deconvnet.py: a projection as a vector-Jacobian product.

`project_by_vjp` is the gradient of one seed's activation through a forward pass whose backward rules are
the deconvnet's: every ReLU's backward is ReLU(upstream gradient), max-pool's routes to the argmax (by a
gather, not `layers`' strided views) and LRN's is the identity. `deconvnet.project` computes the same
thing window by window, by unpooling, rectifying and transposed convolutions; the two share only the
architecture, `layers.pool_output_size` and the LRN forward.
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfnet_jax.model import layers, network


@jax.custom_vjp
def rectify(x: jax.Array) -> jax.Array:
  """ReLU forward; backward ReLU(upstream gradient), whatever the forward input was."""
  return jax.nn.relu(x)


rectify.defvjp(lambda x: (jax.nn.relu(x), None), lambda _, g: (jax.nn.relu(g),))


def max_pool_by_gather(x: jax.Array, window: int, stride: int, ceil_mode: bool) -> jax.Array:
  """Max-pool `[B, H, W, C] -> [B, Ho, Wo, C]` as a gather of each window and a pick of its first argmax.

  Written independently of `layers.max_pool_with_switches` (an index table instead of strided views);
  its gradient flows only to the picked element, i.e. to the switch.
  """
  b, h, w, c = x.shape
  ho, wo = (layers.pool_output_size(n, window, stride, ceil_mode) for n in (h, w))
  rows = (np.arange(ho)[:, None] * stride + np.arange(window))[:, None, :, None]  # [Ho, 1, k, 1]
  cols = (np.arange(wo)[:, None] * stride + np.arange(window))[None, :, None, :]  # [1, Wo, 1, k]
  index = np.where((rows < h) & (cols < w), rows * w + cols, h * w).reshape(-1)  # h * w: outside the map
  flat = jnp.concatenate([x.reshape(b, h * w, c), jnp.full((b, 1, c), -jnp.inf, x.dtype)], axis=1)
  windows = flat[:, index].reshape(b, ho, wo, window * window, c)
  picked = lax.stop_gradient(jnp.argmax(windows, axis=3))[:, :, :, None]
  return jnp.take_along_axis(windows, picked, axis=3)[:, :, :, 0]


def lrn_passing_gradients(arch: network.Architecture, x: jax.Array) -> jax.Array:
  """Local response normalisation forward, identity backward."""
  normalised = layers.local_response_norm(x, arch.lrn_size, arch.lrn_k, arch.lrn_alpha, arch.lrn_beta)
  return x + lax.stop_gradient(normalised - x)


def forward_with_deconv_rules(arch: network.Architecture, params: Any, images: jax.Array, layer: int) -> jax.Array:
  """Conv layer `layer`'s output `[B, H, W, C]` for `[B, S, S, C_in]` images, differentiable with the
  deconvnet's backward rules (same forward values as `network.ConvNet`)."""
  x = images
  for c in arch.convs:
    p = params[c.name]
    x = lax.conv_general_dilated(x, p['kernel'], (c.stride, c.stride), [(c.padding, c.padding)] * 2,
                                 dimension_numbers=network.CONV_DIMS) + p['bias']
    x = rectify(x)
    if c.lrn and arch.lrn_position == 'before_pool':
      x = lrn_passing_gradients(arch, x)
    if c.pool:
      x = max_pool_by_gather(x, arch.pool_window, arch.pool_stride, arch.pool_ceil)
    if c.lrn and arch.lrn_position == 'after_pool':
      x = lrn_passing_gradients(arch, x)
    if c.layer == layer:
      return x
  raise ValueError(f'layer {layer} is not a conv layer of this network: {[c.layer for c in arch.convs]}')


def project_by_vjp(arch: network.Architecture, params: Any, image: jax.Array, layer: int, channel: int, y: int,
                   x: int, value: float | jax.Array) -> jax.Array:
  """The projection of one seed as the vjp of its activation: `[H, W, C_in]` for an `[H, W, C_in]` image."""
  output, vjp = jax.vjp(lambda v: forward_with_deconv_rules(arch, params, v[None], layer)[0], image)
  return vjp(jnp.zeros_like(output).at[y, x, channel].set(value))[0]
