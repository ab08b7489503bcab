"""What Flax lacks: max-pooling with argmax switches, unpooling, local response normalisation.

All functions take and return NHWC arrays `[B, H, W, C]`.

Max-pooling is written as the elementwise maximum of the `window * window` strided views of the
(padded) input. The same strided views give the switches (which view held the maximum) and
unpooling (each value back through its switch). `max_pool` is differentiated through its switches:
each window's gradient goes to its first maximum, as with `lax.reduce_window` and PyTorch. On CPU
that backward pass is one fused loop, several times faster than both `reduce_window`'s
`select_and_scatter` and the derivative of the chain of `jnp.maximum`s (which splits ties and which
XLA fuses into a slow loop behind a ReLU); measured in `docs/PERFORMANCE.md`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def pool_output_size(size: int, window: int, stride: int, ceil_mode: bool) -> int:
  """Output length of a 1-D pooling of `size` inputs (no explicit padding), floor or ceil mode.

  Ceil mode keeps the last, partial window as long as it starts inside the input (PyTorch's rule).
  """
  if size < window:
    return 0
  if not ceil_mode:
    return (size - window) // stride + 1
  out = math.ceil((size - window) / stride) + 1
  if (out - 1) * stride >= size:
    out -= 1
  return out


def _pool_pad(size: int, window: int, stride: int, ceil_mode: bool) -> int:
  """Padding at the high end that makes every output window lie inside the padded input."""
  out = pool_output_size(size, window, stride, ceil_mode)
  return max(0, (out - 1) * stride + window - size)


def _windows(x: jax.Array, window: int, stride: int, ceil_mode: bool,
             pad_value: float = -jnp.inf) -> list[jax.Array]:
  """The `window**2` strided views of `x`; view `dy * window + dx` holds element (dy, dx) of each window.

  Args:
    x: `[B, H, W, C]`.
    pad_value: fills the part of a ceil-mode window that lies outside `x`.
  Returns:
    A list of `window**2` arrays `[B, Ho, Wo, C]`.
  """
  _, h, w, _ = x.shape
  ho, wo = (pool_output_size(n, window, stride, ceil_mode) for n in (h, w))
  if ho < 1 or wo < 1:
    raise ValueError(f'max-pool window {window} is larger than its {h}x{w} input map')
  ph, pw = _pool_pad(h, window, stride, ceil_mode), _pool_pad(w, window, stride, ceil_mode)
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=pad_value)
  return [x[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]
          for dy in range(window) for dx in range(window)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, ceil_mode: bool = False) -> jax.Array:
  """Max-pooling `[B, H, W, C] -> [B, Ho, Wo, C]` in floor or ceil mode.

  Its tangent is the tangent of each window's first maximum, so its gradient is the upstream
  gradient unpooled through the switches.
  """
  views = _windows(x, window, stride, ceil_mode)
  out = views[0]
  for v in views[1:]:
    out = jnp.maximum(out, v)
  return out


def max_pool_with_switches(x: jax.Array, window: int, stride: int,
                           ceil_mode: bool = False) -> tuple[jax.Array, jax.Array]:
  """Max-pooling that also returns its switches.

  Args:
    x: `[B, H, W, C]`.
  Returns:
    `(pooled, switches)`, both `[B, Ho, Wo, C]`; `switches` (int32) holds `dy * window + dx`, the
    position of the maximum inside each window (the first one on ties).
  """
  views = _windows(x, window, stride, ceil_mode)
  pooled, switches = views[0], jnp.zeros(views[0].shape, jnp.int32)
  for k, v in enumerate(views[1:], 1):
    larger = v > pooled
    pooled, switches = jnp.where(larger, v, pooled), jnp.where(larger, k, switches)
  return pooled, switches


@max_pool.defjvp
def _max_pool_jvp(window: int, stride: int, ceil_mode: bool, primals: tuple[jax.Array],
                  tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
  (x,), (x_dot,) = primals, tangents
  _, switches = max_pool_with_switches(x, window, stride, ceil_mode)
  views = _windows(x_dot, window, stride, ceil_mode, pad_value=0)
  pooled_dot = jnp.where(switches == 0, views[0], 0)
  for k, v in enumerate(views[1:], 1):
    pooled_dot += jnp.where(switches == k, v, 0)
  return max_pool(x, window, stride, ceil_mode), pooled_dot


def unpool(y: jax.Array, switches: jax.Array, input_hw: tuple[int, int], window: int, stride: int,
           ceil_mode: bool = False) -> jax.Array:
  """Places each pooled value back at its switch position; everything else is zero.

  Where windows overlap and two of them chose the same input, their values add (the transpose of
  pooling through the switches, i.e. exactly max-pool's gradient routing).

  Written as one elementwise pass over the output instead of a scatter (it compiles and runs several
  times faster under `vmap`): input row `P * stride + r` can only have been chosen by the windows
  `P - q` (`q < ceil(window / stride)`), at window offset `q * stride + r`.

  Args:
    y: `[B, Ho, Wo, C]` values to unpool.
    switches: `[B, Ho, Wo, C]` from `max_pool_with_switches` on the forward pass.
    input_hw: `(H, W)` of the map that was pooled (in `ceil_mode` or not) into `Ho x Wo`.
  Returns:
    `[B, H, W, C]`.
  """
  h, w = input_hw
  b, ho, wo, c = y.shape
  if (ho, wo) != tuple(pool_output_size(n, window, stride, ceil_mode) for n in (h, w)):
    raise ValueError(f'{ho}x{wo} switches do not come from pooling a {h}x{w} map (window {window}, stride '
                     f'{stride}, ceil_mode={ceil_mode})')
  shifts = -(-window // stride)
  offsets = np.arange(stride)
  out = jnp.zeros((b, ho + shifts - 1, stride, wo + shifts - 1, stride, c), y.dtype)
  for qy in range(shifts):
    for qx in range(shifts):
      dy, dx = (qy * stride + offsets)[:, None], (qx * stride + offsets)[None, :]
      code = np.where((dy < window) & (dx < window), dy * window + dx, -1)[None, None, :, None, :, None]
      pad = ((0, 0), (qy, shifts - 1 - qy), (qx, shifts - 1 - qx), (0, 0))
      values = jnp.pad(y, pad)[:, :, None, :, None, :]
      chosen = jnp.pad(switches, pad, constant_values=-1)[:, :, None, :, None, :]
      out = out + jnp.where(chosen == code, values, jnp.zeros((), y.dtype))
  out = out.reshape(b, (ho + shifts - 1) * stride, (wo + shifts - 1) * stride, c)
  out = jnp.pad(out, ((0, 0), (0, max(0, h - out.shape[1])), (0, max(0, w - out.shape[2])), (0, 0)))
  return out[:, :h, :w, :]


def local_response_norm(x: jax.Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75) -> jax.Array:
  """Local response (contrast) normalisation across channels, in PyTorch's convention.

  `b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta`, the window covering
  `size` channels centred on `c` (`size // 2` before, `(size - 1) // 2` after, zero beyond the ends).
  PyTorch (and pytorchcv's ZFNet) divide `alpha` by `size`; Krizhevsky et al. do not, so their
  alpha = 1e-4 is `alpha=5e-4` here.

  Args:
    x: `[B, H, W, C]`.
  Returns:
    `[B, H, W, C]`.
  """
  sq = jnp.square(x.astype(jnp.float32))
  summed = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                 ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
  return (x / jnp.power(k + alpha / size * summed, beta)).astype(x.dtype)
