"""One engine for the way down: the deconvnet, guided backprop, the gradient and every point between them.

Mahendran & Vedaldi (2016) show that these methods send a signal from a unit (or a class logit) to the pixels
through the same stages and differ at three bottlenecks only; `Rules` names them:
- `mask`: the forward ReLU mask on the way down (the gradient keeps only where the forward input was > 0);
- `switches`: max-pool routes through the recorded switches, or (off) to the centre of each pooling window;
- `rectify`: a ReLU on the backward signal at every ReLU (the deconvnet's "rectify").
| method | mask | switches | rectify |
|---|---|---|---|
| deconvnet | no | yes | yes |
| guided_backprop | yes | yes | yes |
| gradient | yes | yes | no |
Every other point of the 2^3 cube is `Rules(...)` itself. The way down is the vjp of a forward pass whose ReLU
and max-pool carry these backward rules (`jax.custom_vjp`), through the fc layers too for a class target.
LRN's backward is its true vjp where the mask is on (the gradient family) and the identity where it is off
(as in `deconvnet.project`, which the preset equals; the deconvnet's fast windowed path for conv units stays
there).

On top: `gradient_x_input`, `integrated_gradients`, `smoothgrad` (of the gradient) and `gradcam` (at a conv
layer, of any target after it). Integrated gradients and SmoothGrad send their N copies of an image down as one
batch by one vjp, from conv1's output before its bias: conv1 is linear, so the path's conv1 outputs are the path
between two of them, and the mean of N transposes is one transpose of the mean.
A target is a class logit (`layer='logits'`), one unit (a conv layer, channel, row, column; or an fc layer's
unit) or a whole conv map (`y < 0`: the map's own values sent down, as the deconvnet projects a map).
All functions are pure and jittable (`arch`, `layer`, `method` static) and vmapped over (image, target) pairs;
they compute in the images' dtype (bfloat16 images: bfloat16 maps, the classifier in float32 as `network.ConvNet`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from zfnet_jax.model import layers, network


class Rules(NamedTuple):
  """One point of the cube of backward rules (see the module docstring)."""
  mask: bool
  switches: bool
  rectify: bool

  @property
  def name(self) -> str:
    named = {v: k for k, v in CUBE.items()}
    return named.get(self, '-'.join(f'{f}' if on else f'no_{f}' for f, on in zip(self._fields, self)))


CUBE = {'deconvnet': Rules(False, True, True), 'guided_backprop': Rules(True, True, True),
        'gradient': Rules(True, True, False)}
METHODS = (*CUBE, 'gradient_x_input', 'integrated_gradients', 'smoothgrad', 'gradcam')


class Targets(NamedTuple):
  """What to attribute, one entry per image; every field is int32 `[B]`. `layer` is passed separately (static)."""
  channel: jax.Array  # class (layer 'logits'), or the unit's channel
  y: jax.Array  # row in a conv map; < 0: the whole map of `channel`
  x: jax.Array  # column (ignored for the logits and fc layers)


def all_rules() -> tuple[Rules, ...]:
  """The 2^3 points of the cube, deconvnet's corner first."""
  return tuple(Rules(m, s, r) for m in (False, True) for s in (True, False) for r in (True, False))


@functools.lru_cache(maxsize=None)
def _relu(rules: Rules) -> Callable[[jax.Array], jax.Array]:
  @jax.custom_vjp
  def relu(x):
    return jax.nn.relu(x)

  def bwd(positive, g):
    if rules.mask:
      g = jnp.where(positive, g, jnp.zeros((), g.dtype))
    return (jax.nn.relu(g) if rules.rectify else g,)
  relu.defvjp(lambda x: (jax.nn.relu(x), x > 0), bwd)
  return relu


@functools.lru_cache(maxsize=None)
def _pool(rules: Rules, window: int, stride: int, ceil: bool) -> Callable[[jax.Array], jax.Array]:
  centre = (window // 2) * window + window // 2

  @jax.custom_vjp
  def pool(x):
    return layers.max_pool(x, window, stride, ceil)

  def fwd(x):
    pooled, switches = layers.max_pool_with_switches(x, window, stride, ceil)
    if not rules.switches:
      switches = jnp.full_like(switches, centre)
    return pooled, (switches, jnp.zeros(x.shape[1:3], jnp.int8))

  def bwd(res, g):
    switches, hw = res
    return (layers.unpool(g, switches, hw.shape, window, stride, ceil),)
  pool.defvjp(fwd, bwd)
  return pool


def _lrn(arch: network.Architecture, rules: Rules, x: jax.Array) -> jax.Array:
  normalised = layers.local_response_norm(x, arch.lrn_size, arch.lrn_k, arch.lrn_alpha, arch.lrn_beta)
  return normalised if rules.mask else x + lax.stop_gradient(normalised - x)


def stages(arch: network.Architecture, params: Any, rules: Rules,
           relu: Callable[[jax.Array], jax.Array] | None = None) -> list[tuple[str, Callable]]:
  """The forward pass as `[(name, f)]`: 'conv1' (the first conv without its bias: the only part of the network
  that is linear in the image), 'layer1'.. (conv then fc, as `network.Forward.layers`), then 'logits'; each `f`
  maps the previous stage's output to its own (`[B, H, W, C]` / `[B, F]`) with `rules`' backward (every ReLU's
  with `relu`'s instead when given: feature visualisation's redirected ReLU). Computed in the images' dtype
  (parameters cast to it), the classifier in float32, as `network.ConvNet`."""
  relu = relu or _relu(rules)
  pool = _pool(rules, arch.pool_window, arch.pool_stride, arch.pool_ceil)
  cast = lambda p, x: jax.tree_util.tree_map(lambda v: v.astype(x.dtype), p)  # noqa: E731

  def linear(c, x):
    return lax.conv_general_dilated(x, cast(params[c.name]['kernel'], x), (c.stride, c.stride),
                                    [(c.padding, c.padding)] * 2, dimension_numbers=network.CONV_DIMS)

  def after_linear(c, x):
    x = relu(x + cast(params[c.name]['bias'], x))
    if c.lrn and (arch.lrn_position == 'before_pool' or not c.pool):
      x = _lrn(arch, rules, x)
    if c.pool:
      x = pool(x)
      if c.lrn and arch.lrn_position == 'after_pool':
        x = _lrn(arch, rules, x)
    return x

  first, *rest = arch.convs
  out = [(first.name, functools.partial(linear, first)), ('layer1', functools.partial(after_linear, first))]
  out += [(f'layer{c.layer}', lambda x, c=c: after_linear(c, linear(c, x))) for c in rest]
  for i, (n, _) in enumerate(arch.fcs):
    flatten = i == 0
    out.append((f'layer{n}', lambda x, n=n, flatten=flatten: relu(network.dense(
        cast(params[f'fc{n}'], x), x.reshape(x.shape[0], -1) if flatten else x))))
  out.append(('logits', lambda x: network.dense(params['fc8'], x.reshape(x.shape[0], -1).astype(jnp.float32))))
  return out


def run(arch: network.Architecture, params: Any, x: jax.Array, rules: Rules, start: str | None = None,
        stop: str = 'logits', relu: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """The stages after `start` (None: the images) up to and including `stop` (`relu`: as `stages`)."""
  names = [n for n, _ in stages(arch, params, rules)]
  if stop not in names:
    raise ValueError(f'no layer {stop!r} in this network: it has {names}')
  begin = 0 if start is None else names.index(start) + 1
  for _, f in stages(arch, params, rules, relu)[begin:names.index(stop) + 1]:
    x = f(x)
  return x


def _cotangent(out: jax.Array, target: Targets) -> jax.Array:
  """The signal sent down from one image's `out` (`[H, W, C]` or `[F]`): 1 at the unit, or the whole map."""
  if out.ndim == 1:
    return jax.nn.one_hot(target.channel, out.shape[0], dtype=out.dtype)
  channel = jax.nn.one_hot(target.channel, out.shape[-1], dtype=out.dtype)
  h, w = out.shape[:2]
  at = (jnp.arange(h)[:, None, None] == target.y) & (jnp.arange(w)[None, :, None] == target.x)
  return jnp.where(target.y < 0, out * channel, jnp.where(at, channel, 0))


def way_down(arch: network.Architecture, params: Any, image: jax.Array, target: Targets, layer: str,
             rules: Rules) -> jax.Array:
  """One image `[H, W, C]` and target -> the map `[H, W, C]` sent down with `rules` (a unit's or logit's
  derivative where `rules` is the gradient)."""
  out, vjp = jax.vjp(lambda v: run(arch, params, v[None], rules, stop=layer)[0], image)
  return vjp(_cotangent(out, target))[0]


def score(arch: network.Architecture, params: Any, images: jax.Array, targets: Targets, layer: str) -> jax.Array:
  """The targets' values `[B]` in the true forward pass (a whole map: half its channel's sum of squares, whose
  gradient sends the map's own values down)."""
  out = run(arch, params, images, CUBE['gradient'], stop=layer)
  return jax.vmap(lambda o, t: jnp.vdot(_cotangent(o, t), o) * jnp.where((o.ndim > 1) & (t.y < 0), 0.5, 1.0))(
      out, targets)


def _mean_gradient(arch: network.Architecture, params: Any, image: jax.Array, copies: jax.Array, target: Targets,
                   layer: str) -> jax.Array:
  """The mean over `copies` `[N, H, W, F]` (conv1's outputs before its bias, of N inputs near `image` `[S, S, C]`)
  of the target's gradient, by one vjp of the N copies as a batch, sent through conv1 to the image once: conv1
  is linear, so the mean of its transposes is the transpose of the mean (integrated gradients and SmoothGrad).
  Returns `[S, S, C]`."""
  rules = CUBE['gradient']
  out, vjp = jax.vjp(lambda z: run(arch, params, z, rules, start=arch.convs[0].name, stop=layer), copies)
  mean = jnp.mean(vjp(jax.vmap(_cotangent, (0, None))(out, target))[0], axis=0)
  conv1 = jax.linear_transpose(lambda v: run(arch, params, v[None], rules, stop=arch.convs[0].name)[0], image)
  return conv1(mean)[0]


def gradcam(arch: network.Architecture, params: Any, image: jax.Array, target: Targets, conv: str,
            layer: str = 'logits') -> jax.Array:
  """Grad-CAM (Selvaraju et al.) at conv layer `conv` (e.g. 'layer4') of a target at `layer` after it (a class at
  'logits', or a unit or whole map of a later layer): `[h, w, 1]` at `conv`'s resolution,
  ReLU(sum_c mean_hw(d target / d A_c) * A_c)."""
  rules = CUBE['gradient']
  acts = run(arch, params, image[None], rules, stop=conv)
  out, vjp = jax.vjp(lambda a: run(arch, params, a, rules, start=conv, stop=layer)[0], acts)
  grads = vjp(_cotangent(out, target))[0][0]
  return jax.nn.relu(jnp.sum(jnp.mean(grads, axis=(0, 1)) * acts[0], axis=-1, keepdims=True))


def gradcam_layer(arch: network.Architecture) -> str:
  """Grad-CAM's default layer: the last conv layer whose map has more than one position (a 1x1 map's CAM is a
  constant; the digits network's layer 5 is 1x1, so its default is layer 4)."""
  sizes = arch.map_sizes()
  spread = [c.layer for c in arch.convs if sizes[c.name][1] > 1]
  return f'layer{(spread or [arch.convs[-1].layer])[-1]}'


def attribute(arch: network.Architecture, params: Any, images: jax.Array, targets: Targets, layer: str = 'logits',
              method: str | Rules = 'gradient', steps: int = 32, baseline: float | jax.Array = 0.0,
              samples: int = 16, noise: float = 0.15, key: jax.Array | None = None,
              cam: str | None = None) -> jax.Array:
  """Maps `[B, H, W, C]` for `[B, H, W, C]` images and `[B]` targets (Grad-CAM: `[B, h, w, 1]` at conv layer
  `cam`). Raw values, before any display scaling.

  Args:
    layer: where the targets live: 'logits' (a class), 'layer{n}' (a unit or whole map).
    method: a name of `METHODS` or a point `Rules(...)` of the cube.
    steps: integrated gradients' Riemann steps (midpoints) from `baseline` (a scalar or `[H, W, C]`) to the image.
    samples, noise, key: smoothgrad's noisy copies, its noise's std as a fraction of each image's value range,
      and its random key (default `jax.random.key(0)`).
    cam: Grad-CAM's conv layer, before `layer` (default `gradcam_layer(arch)`).
  """
  if isinstance(method, Rules) or method in CUBE:
    rules = method if isinstance(method, Rules) else CUBE[method]
    return jax.vmap(lambda i, t: way_down(arch, params, i, t, layer, rules))(images, targets)
  grad = functools.partial(way_down, arch, params, layer=layer, rules=CUBE['gradient'])
  if method == 'gradient_x_input':
    return jax.vmap(grad)(images, targets) * images
  if method == 'integrated_gradients':
    alphas = (jnp.arange(steps, dtype=images.dtype) + 0.5) / steps
    def one(image, target):
      base = jnp.broadcast_to(jnp.asarray(baseline, image.dtype), image.shape)
      ends = run(arch, params, jnp.stack([base, image]), CUBE['gradient'], stop=arch.convs[0].name)
      path = ends[0] + alphas[:, None, None, None] * (ends[1] - ends[0])  # conv1 is linear: its path is the path
      return (image - base) * _mean_gradient(arch, params, image, path, target, layer)
    return jax.vmap(one)(images, targets)
  if method == 'smoothgrad':
    keys = jax.random.split(jax.random.key(0) if key is None else key, images.shape[0])
    def one(image, target, k):
      sigma = noise * (jnp.max(image) - jnp.min(image))
      noisy = image + sigma * jax.random.normal(k, (samples, *image.shape), image.dtype)
      path = run(arch, params, noisy, CUBE['gradient'], stop=arch.convs[0].name)
      return _mean_gradient(arch, params, image, path, target, layer)
    return jax.vmap(one)(images, targets, keys)
  if method == 'gradcam':
    conv = cam or gradcam_layer(arch)
    return jax.vmap(lambda i, t: gradcam(arch, params, i, t, conv, layer))(images, targets)
  raise ValueError(f'unknown attribution method {method!r}: use one of {METHODS} or a Rules(mask, switches, '
                   f'rectify) point')
