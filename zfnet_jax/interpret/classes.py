"""What each unit responds to, by class (as OpenAI Microscope shows): per unit, its mean activation over the
images of each class, its class selectivity, and the classes of its strongest images.

An image's activation of a unit is its strongest position in the unit's feature map (what the top-k keeps).
`class_update` adds a batch to the per-class sums inside the top-k pass (`topk.stream_topk`); the rest reads
the sums on the host.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ClassStats(NamedTuple):
  """Per-class sums of one layer's units over a stream: `sum` `[C, N]` float32, `count` `[N]` images per class."""
  sum: jax.Array
  count: jax.Array


def class_empty(channels: int, num_classes: int) -> ClassStats:
  return ClassStats(jnp.zeros((channels, num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))


def class_update(stats: ClassStats, activations: jax.Array, labels: jax.Array, mask: jax.Array) -> ClassStats:
  """Adds a batch: `activations` `[B, H, W, C]`, int `labels` `[B]`, `mask` `[B]` (0: padding, left out)."""
  b, h, w, c = activations.shape
  value = jnp.max(activations.reshape(b, h * w, c).astype(jnp.float32), axis=1)  # [B, C]
  onehot = (labels[:, None] == jnp.arange(stats.count.shape[0])[None, :]) & (mask[:, None] > 0)
  onehot = onehot.astype(jnp.float32)  # [B, N]
  return ClassStats(stats.sum + jnp.einsum('bc,bn->cn', value, onehot, precision='highest'),
                    stats.count + jnp.sum(onehot, axis=0))


def class_means(stats: ClassStats) -> np.ndarray:
  """`[C, N]` each unit's mean activation over each class's images; NaN for classes with no image."""
  total, count = np.asarray(stats.sum, np.float64), np.asarray(stats.count, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def selectivity(means: np.ndarray) -> np.ndarray:
  """`[C]` class selectivity index (Morcos et al. 2018): `(mu_max - mu_rest) / (mu_max + mu_rest)`, `mu_max` the
  unit's largest class mean, `mu_rest` the mean of the other classes' means (classes with images only); 0 for
  a unit silent on every class. 1: fires for one class only; 0: the same for all."""
  out = np.zeros(len(means))
  for u, row in enumerate(means):
    row = row[np.isfinite(row)]
    if len(row) < 2:
      continue
    best = int(np.argmax(row))
    top, rest = row[best], np.mean(np.delete(row, best))
    out[u] = (top - rest) / (top + rest) if top + rest > 0 else 0.0
  return out


def top_classes(means: np.ndarray, top_labels: np.ndarray, count: int = 5) -> list[dict]:
  """Per unit: its `count` classes of highest mean activation (`by_mean`: `[[class, mean], ...]`) and the most
  frequent classes among its strongest images (`top_labels` int `[C, K]`, -1 for empty slots; `in_top`:
  `[[class, images], ...]`, most first, ties by class)."""
  out = []
  for row, labels in zip(means, top_labels):
    finite = np.where(np.isfinite(row), row, -np.inf)
    order = np.argsort(-finite, kind='stable')[:count]
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    frequent = np.lexsort((classes, -counts))[:count]
    out.append({'by_mean': [[int(c), round(float(row[c]), 4)] for c in order if np.isfinite(row[c])],
                'in_top': [[int(classes[i]), int(counts[i])] for i in frequent]})
  return out
