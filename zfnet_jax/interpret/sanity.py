"""The published sanity checks for the way down, on any checkpoint.

- Adebayo et al. 2018: cascading randomisation (re-initialise with the config's own initialisers from the logits
  down, one layer more at each step), independent randomisation (one layer at a time), data randomisation (a
  network trained on permuted labels, `config.dataset.permute_labels_seed`); similarity of each map to the
  original as they define it: Spearman rank correlation of |map| and of the signed map, SSIM of the maps
  scaled to [0, 1], Spearman of the maps' HOG features (`pixels_per_cell=16`).
- Nie et al. 2018: the map for the predicted class against the map for a random other class.
- Mahendran & Vedaldi 2016: neuron selectivity (a unit's strongest activation projected; a random other channel
  at the same place; |N(0, 1)| noise over all channels there), per unit and over the 2^3 cube of rules.
A method passes a randomisation test when its maps change (similarity falls); a class-sensitivity test when the
two classes' maps differ. Metrics use scipy and scikit-image.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from skimage import feature, filters, metrics

from zfnet_jax.interpret import attribution
from zfnet_jax.model import network

METRICS = ('spearman_abs', 'spearman_signed', 'ssim', 'hog_spearman')
DEFAULT_METHODS = ('deconvnet', 'guided_backprop', 'gradient', 'gradient_x_input', 'integrated_gradients',
                   'smoothgrad', 'gradcam')


def _grey(m: np.ndarray) -> np.ndarray:
  """`[H, W, C]` -> `[H, W]`: the channels summed (a grey map)."""
  return np.asarray(m, np.float64).sum(axis=-1)


def _unit(m: np.ndarray) -> np.ndarray:
  """Scaled to [0, 1] by its range (constant maps to zeros)."""
  span = m.max() - m.min()
  return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float(np.all(a == b))  # a constant map ranks all ties: equal only to itself
  return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """Adebayo et al.'s four similarities of two maps `[H, W, C]` (channels summed to grey first)."""
  a, b = _grey(a), _grey(b)
  hog = functools.partial(feature.hog, pixels_per_cell=(16, 16), cells_per_block=(1, 1), feature_vector=True)
  return {'spearman_abs': _spearman(np.abs(a), np.abs(b)), 'spearman_signed': _spearman(a, b),
          'ssim': float(metrics.structural_similarity(_unit(a), _unit(b), data_range=1.0)),
          'hog_spearman': _spearman(hog(_unit(a)), hog(_unit(b)))}


def _mean_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  rows = [similarity(x, y) for x, y in zip(a, b)]
  return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def randomised(model: network.ConvNet, params: Any, names: tuple[str, ...], seed: int, fresh: Any = None) -> Any:
  """`params` with the layers `names` (e.g. `('fc8', 'conv5')`) re-initialised by the model's own initialisers
  (`fresh`: those drawn already, `network.init_params(model, key(seed))`), each placed as the layer it replaces
  (so a jitted map of them compiles once, whichever layers are fresh)."""
  fresh = network.init_params(model, jax.random.key(seed)) if fresh is None else fresh
  like = lambda new, old: jax.device_put(new, old.sharding) if getattr(old, 'committed', False) else new  # noqa: E731
  return {k: (jax.tree_util.tree_map(like, fresh[k], v) if k in names else v) for k, v in params.items()}


def top_down(arch: network.Architecture) -> tuple[str, ...]:
  """Parameter layers from the logits down: `('fc8', 'fc7', 'fc6', 'conv5', ..., 'conv1')` where present."""
  return ('fc8', *(f'fc{n}' for n, _ in reversed(arch.fcs)), *(c.name for c in reversed(arch.convs)))


@functools.lru_cache(maxsize=None)
def mapper(arch: network.Architecture, steps: int = 16, samples: int = 8) -> Callable[..., np.ndarray]:
  """`maps(params, images, classes, method) -> [B, S, S, C]` numpy maps of the class logits, jitted per method
  (Grad-CAM at `attribution.gradcam_layer`, resized to the image for comparison); one per (arch, steps, samples),
  so every test of a run shares its compiled maps."""
  @functools.partial(jax.jit, static_argnums=3)
  def maps(params, images, classes, method):
    zeros = jnp.zeros_like(classes)
    out = attribution.attribute(arch, params, images, attribution.Targets(classes, zeros, zeros), 'logits', method,
                                steps=steps, samples=samples)
    if method == 'gradcam':
      out = jax.image.resize(out, (*images.shape[:3], 1), 'bilinear')
    return out
  return lambda params, images, classes, method: np.asarray(maps(params, images, jnp.asarray(classes), method))


def predicted(model: network.ConvNet, params: Any, images: jax.Array) -> np.ndarray:
  return np.asarray(jnp.argmax(network.forward(model, params, images).logits, axis=-1))


def randomisation(model: network.ConvNet, params: Any, images: np.ndarray, methods: tuple[str, ...] = DEFAULT_METHODS,
                  seed: int = 0, steps: int = 16) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
  """Cascading and independent randomisation for `methods` on `[B, S, S, C]` images (maps of the predicted class).

  Returns:
    `(rows, cascade)`: rows `{'test', 'method', 'layers', *METRICS}`, the mean similarity to the original maps
    ('cascading': every layer from the logits down to `layers`; 'independent': `layers` alone); `cascade`
    `{method: {'original' or top layer randomised: [B, S, S, C] maps}}` for the figure.
  """
  maps = mapper(model.arch, steps)
  images = jnp.asarray(images)
  classes = predicted(model, params, images)
  order = top_down(model.arch)
  cascade = {m: {'original': maps(params, images, classes, m)} for m in methods}
  rows = []
  for i, name in enumerate(order):  # each layer's fresh weights drawn once, for every method
    fresh = network.init_params(model, jax.random.key(seed + i))
    for test, names in (('cascading', order[:i + 1]), ('independent', (name,))):
      changed_params = randomised(model, params, names, seed + i, fresh)
      for method in methods:
        changed = maps(changed_params, images, classes, method)
        rows.append({'test': test, 'method': method, 'layers': name,
                     **_mean_similarity(cascade[method]['original'], changed)})
        if test == 'cascading':
          cascade[method][name] = changed
  return sorted(rows, key=lambda r: methods.index(r['method'])), cascade


def random_class(model: network.ConvNet, params: Any, images: np.ndarray, methods: tuple[str, ...] = DEFAULT_METHODS,
                 seed: int = 0, steps: int = 16) -> list[dict]:
  """Nie et al.: each method's map of the predicted class against its map of a random other class."""
  maps = mapper(model.arch, steps)
  images = jnp.asarray(images)
  classes = predicted(model, params, images)
  shift = np.random.default_rng(seed).integers(1, model.arch.num_classes, len(classes))
  other = (classes + shift) % model.arch.num_classes
  return [{'test': 'random_class', 'method': m, 'layers': '',
           **_mean_similarity(maps(params, images, classes, m), maps(params, images, other, m))} for m in methods]


def data_randomisation(model: network.ConvNet, params: Any, permuted: Any, images: np.ndarray,
                       methods: tuple[str, ...] = DEFAULT_METHODS, steps: int = 16) -> list[dict]:
  """Adebayo et al.'s data randomisation: maps of the true-label network against the permuted-label network's
  (each for its own predicted class)."""
  maps = mapper(model.arch, steps)
  images = jnp.asarray(images)
  true, perm = predicted(model, params, images), predicted(model, permuted, images)
  return [{'test': 'data_randomisation', 'method': m, 'layers': '',
           **_mean_similarity(maps(params, images, true, m), maps(permuted, images, perm, m))} for m in methods]


def image_recovery(model: network.ConvNet, params: Any, images: np.ndarray, methods: tuple[str, ...] = DEFAULT_METHODS,
                   steps: int = 16) -> list[dict]:
  """Nie et al.'s partial image recovery: Spearman of each method's |map| (predicted class) with the image's edges
  (Sobel magnitude of the grey image), mean over images; high with random weights means the map draws the input."""
  maps = mapper(model.arch, steps)
  classes = predicted(model, params, jnp.asarray(images))
  edges = [filters.sobel(_grey(i)) for i in images]
  rows = []
  for m in methods:
    out = maps(params, jnp.asarray(images), classes, m)
    rows.append({'test': 'image_recovery', 'method': m, 'layers': '',
                 'edges_spearman_abs': float(np.mean([_spearman(np.abs(_grey(o)), e) for o, e in zip(out, edges)]))})
  return rows


def _send_down(arch, params, image, layer, rules, position, signal):
  """One image's map for `signal` `[C]` placed at `position` (y, x) of conv `layer`'s output."""
  out, vjp = jax.vjp(lambda v: attribution.run(arch, params, v[None], rules, stop=layer)[0], image)
  at = (jnp.arange(out.shape[0])[:, None, None] == position[0]) & (jnp.arange(out.shape[1])[None, :, None] ==
                                                                     position[1])
  return vjp(jnp.where(at, signal, 0).astype(out.dtype))[0]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def selectivity_maps(arch, params, images, layer, rules, units, key):
  """For each unit's strongest activation over `images`: the projections of (unit, random other channel,
  |noise| over all channels) at its place, `3 x [U, S, S, C]`, and the unit's strongest value `[U]`."""
  acts = attribution.run(arch, params, images, attribution.CUBE['gradient'], stop=layer)  # [B, H, W, C]
  b, h, w, c = acts.shape
  flat = acts[..., units].transpose(3, 0, 1, 2).reshape(len(units), -1)
  best = jnp.argmax(flat, axis=1)
  image, y, x = best // (h * w), (best // w) % h, best % w
  k1, k2 = jax.random.split(key)
  other = (units + jax.random.randint(k1, units.shape, 1, c)) % c
  noise = jnp.abs(jax.random.normal(k2, (len(units), c)))
  down = functools.partial(_send_down, arch, params, layer=layer, rules=rules)
  one = lambda i, pos, s: down(images[i], position=pos, signal=s)  # noqa: E731
  pos = jnp.stack([y, x], axis=1)
  return (jax.vmap(one)(image, pos, jax.nn.one_hot(units, c)), jax.vmap(one)(image, pos, jax.nn.one_hot(other, c)),
          jax.vmap(one)(image, pos, noise), jnp.max(flat, axis=1))


def selectivity(arch: network.Architecture, params: Any, images: np.ndarray, layer: int,
                rules: attribution.Rules = attribution.CUBE['deconvnet'], units: np.ndarray | None = None,
                seed: int = 0) -> list[dict]:
  """Mahendran & Vedaldi's neuron selectivity at conv `layer`: per unit, the Spearman |map| similarity of its
  projection to a random other channel's (`other`) and to noise's (`noise`), and `selectivity = 1 - other`
  (0: the picture does not depend on the unit; units that never fire get NaN)."""
  c = {s.layer: s.features for s in arch.convs}[layer]
  units = np.arange(c) if units is None else np.asarray(units)
  unit, other, noise, value = map(np.asarray, selectivity_maps(arch, params, jnp.asarray(images), f'layer{layer}',
                                                                rules, jnp.asarray(units), jax.random.key(seed)))
  rows = []
  for i, u in enumerate(units):
    fired = value[i] > 0
    s_other = similarity(unit[i], other[i])['spearman_abs'] if fired else float('nan')
    s_noise = similarity(unit[i], noise[i])['spearman_abs'] if fired else float('nan')
    rows.append({'layer': layer, 'unit': int(u), 'rules': rules.name, 'other': s_other, 'noise': s_noise,
                 'selectivity': 1 - s_other})
  return rows


def bottleneck_table(arch: network.Architecture, params: Any, images: np.ndarray, layer: int, units: int = 16,
                     seed: int = 0) -> list[dict]:
  """The 2^3 cube at conv `layer`: for each point, the mean similarity of a unit's projection to a random other
  channel's and to noise's over the first `units` units, and the mean selectivity."""
  channels, out = {s.layer: s.features for s in arch.convs}[layer], []
  for rules in attribution.all_rules():
    rows = [r for r in selectivity(arch, params, images, layer, rules, np.arange(min(units, channels)), seed)
            if not np.isnan(r['other'])]
    out.append({'layer': layer, 'rules': rules.name, 'mask': rules.mask, 'switches': rules.switches,
                'rectify': rules.rectify, **{k: float(np.mean([r[k] for r in rows])) if rows else float('nan')
                                             for k in ('other', 'noise', 'selectivity')}})
  return out
