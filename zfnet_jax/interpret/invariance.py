"""Invariance (Fig. 5): feature distances and the true-class probability under translation, scale, rotation."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zfnet_jax.model import network


TRANSFORMS = ('translation', 'scale', 'rotation')


def amounts(image_size: int, rotation_step: float = 10.0) -> dict[str, np.ndarray]:
  """Fig. 5's ranges: vertical shifts up to 27% of the image either way (13), scales 1-1.8 (9), and full
  turns in `rotation_step`-degree steps."""
  return {'translation': np.linspace(-0.27 * image_size, 0.27 * image_size, 13), 'scale': np.linspace(1.0, 1.8, 9),
          'rotation': np.arange(0.0, 361.0, rotation_step)}


def transform(image: jax.Array, kind: str, amount: jax.Array, fill: float = 0.0) -> jax.Array:
  """An `[H, W, C]` image shifted down by `amount` pixels, scaled by `amount` about its centre, or rotated
  by `amount` degrees anticlockwise about it (bilinear; `fill` where nothing maps)."""
  h, w = image.shape[:2]
  r, c = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  cr, cc = (h - 1) / 2, (w - 1) / 2
  if kind == 'translation':
    src = (r - amount, c)
  elif kind == 'scale':
    src = (cr + (r - cr) / amount, cc + (c - cc) / amount)
  elif kind == 'rotation':
    t = jnp.deg2rad(amount)
    src = (cr + (r - cr) * jnp.cos(t) + (c - cc) * jnp.sin(t), cc - (r - cr) * jnp.sin(t) + (c - cc) * jnp.cos(t))
  else:
    raise ValueError(f'transform kind must be one of {TRANSFORMS}, got {kind!r}')
  return jnp.stack([jax.scipy.ndimage.map_coordinates(image[..., i], src, order=1, mode='constant', cval=fill)
                    for i in range(image.shape[-1])], axis=-1)


def default_layers(arch: network.Architecture) -> tuple[int, ...]:
  """Fig. 5's layers 1 and 7 in any network: the first conv layer and the last hidden layer present."""
  return tuple(dict.fromkeys((arch.layer_numbers[0], arch.layer_numbers[-1])))


def invariance(model: network.ConvNet, params: Any, images: jax.Array, labels: jax.Array, kind: str,
               amounts: jax.Array, fill: float = 0.0,
               layer_numbers: tuple[int, ...] | None = None) -> dict[str, jax.Array]:
  """Fig. 5 for one transformation: every `[N, H, W, C]` image transformed by every amount `[T]`.

  Returns:
    `{'layer{n}': [N, T]}` for each of `layer_numbers` (default: `default_layers`), the Euclidean
    distances of the layer's features to those of the untransformed image, and `'probability'` `[N, T]`
    of the true class.
  """
  layer_numbers = default_layers(model.arch) if layer_numbers is None else layer_numbers
  n, t = images.shape[0], amounts.shape[0]
  moved = jax.vmap(lambda im: jax.vmap(lambda a: transform(im, kind, a, fill))(amounts))(images)
  out = network.forward(model, params, moved.reshape(n * t, *images.shape[1:]))
  probs, feats = jax.nn.softmax(out.logits), out.layers
  ref = network.forward(model, params, images).layers
  out = {}
  for name in [f'layer{layer}' for layer in layer_numbers]:
    f = feats[name].reshape(n, t, -1)
    out[name] = jnp.linalg.norm(f - ref[name].reshape(n, 1, -1), axis=-1)
  out['probability'] = jnp.take_along_axis(probs.reshape(n, t, -1), labels[:, None, None], axis=-1)[..., 0]
  return out


_invariance = jax.jit(invariance, static_argnames=('model', 'kind', 'layer_numbers'))


def all_transforms(model: network.ConvNet, params: Any, images: np.ndarray, labels: np.ndarray,
                   layer_numbers: tuple[int, ...] | None = None,
                   rotation_step: float = 10.0) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
  """Fig. 5: `invariance` of `[N, H, W, C]` images with true `labels` `[N]` under every transformation of
  `TRANSFORMS`, over `amounts(image_size, rotation_step)`.

  Returns:
    `(amounts {kind: [T]}, {kind: {'layer{n}': [N, T], 'probability': [N, T]}})`.
  """
  ranges = amounts(model.arch.image_size, rotation_step)
  layer_numbers = default_layers(model.arch) if layer_numbers is None else tuple(layer_numbers)
  curves = {}
  for kind in TRANSFORMS:
    values = _invariance(model=model, params=params, images=jnp.asarray(images), labels=jnp.asarray(labels),
                         kind=kind, amounts=jnp.asarray(ranges[kind], jnp.float32), layer_numbers=layer_numbers)
    curves[kind] = {k: np.asarray(v) for k, v in values.items()}
  return ranges, curves
