"""One activation of one image projected to pixel space (Section 2.1), as `visualize project` and Fig. 7 (c) show it."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfnet_jax.interpret import deconvnet
from zfnet_jax.model import network, receptive_field


class Projection(NamedTuple):
  """One seed's projection and where it sits in the image."""
  reconstruction: np.ndarray  # [S, S, C_in] the projection, zero outside its window
  channel: int  # the feature map
  position: tuple[int, int]  # (y, x) in the layer's output map
  value: float  # the activation sent down
  window: tuple[int, int]  # (top, left) of the computed window, `size` pixels square
  size: int
  receptive_field: tuple[int, int, int, int]  # exact (top, left, bottom, right), half-open


_record = jax.jit(deconvnet.record, static_argnums=0)
_project = jax.jit(deconvnet.project_patches, static_argnums=(0, 3))


def project_activation(model: network.ConvNet, params: Any, image: np.ndarray, layer: int,
                       channel: int | None = None, position: tuple[int, int] | None = None) -> Projection:
  """The activation of conv layer `layer`, map `channel` (default: the map with the image's strongest
  activation), at `position` (default: that map's strongest) in the `[S, S, C_in]` network input `image`,
  projected through the deconvnet."""
  arch = model.arch
  convs = [c.layer for c in arch.convs]
  if layer not in convs:
    raise ValueError(f'the layer must be a conv layer of this network, {convs}; got {layer}')
  recording = _record(model, params, jnp.asarray(image)[None])
  act = np.asarray(recording.layers[f'layer{layer}'][0])  # [H, W, C]
  channel = int(np.argmax(act.max(axis=(0, 1)))) if channel is None else channel
  if not 0 <= channel < act.shape[-1]:
    raise ValueError(f'the channel must be in 0..{act.shape[-1] - 1} for layer {layer}, got {channel}')
  if position is None:
    position = np.unravel_index(np.argmax(act[..., channel]), act.shape[:2])
  y, x = (int(v) for v in position)
  if not (0 <= y < act.shape[0] and 0 <= x < act.shape[1]):
    raise ValueError(f'the position must lie in the {act.shape[0]}x{act.shape[1]} map of layer {layer}, got {(y, x)}')
  value = float(act[y, x, channel])
  seeds = deconvnet.Seeds(*(jnp.asarray([v], jnp.int32) for v in (0, channel, y, x)), jnp.asarray([value]))
  proj = _project(arch, params, recording.switches, layer, seeds)
  reconstruction = np.asarray(deconvnet.paste(proj, arch.image_size)[0])
  box = tuple(int(v) for v in receptive_field.receptive_field(arch, layer, y, x))
  return Projection(reconstruction, channel, (y, x), value, (int(proj.top[0]), int(proj.left[0])),
                    int(proj.patches.shape[1]), box)
