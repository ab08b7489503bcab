"""Running a network over batches and collecting its outputs: the one loop behind predict, transfer probes
and feature extraction."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import numpy as np


def collect(fn: Callable[[Any, jax.Array], dict[str, jax.Array]], params: Any,
            batches: Iterable[dict[str, np.ndarray]], wanted: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Runs `fn(params, images) -> {name: [B, ...]}` over `batches` and keeps the real examples' rows.

  Args:
    fn: a jitted function of (params, `[B, H, W, C]` images).
    batches: `{'image', 'mask', ...}` as `pipeline.eval_batches` yields them; `mask == 0` rows are padding.
    wanted: sorted indices (in stream order, padding not counted) of the examples to keep; batches holding
      none of them are not computed. None keeps every example.
  Returns:
    `fn`'s outputs and the batches' other fields (`label`, ...), concatenated over the kept examples, and
    `index` `[N]`, their positions in the stream.
  """
  parts: dict[str, list[np.ndarray]] = {}
  offset = 0
  for batch in batches:
    valid = np.asarray(batch['mask']) == 1
    index = offset + np.arange(int(valid.sum()))
    offset += len(index)
    keep = np.ones(len(index), bool) if wanted is None else np.isin(index, wanted)
    if not keep.any():
      continue
    outputs = jax.device_get(fn(params, batch['image']))
    fields = {**{k: v for k, v in batch.items() if k not in ('image', 'mask')}, **outputs}
    for name, value in fields.items():
      parts.setdefault(name, []).append(np.asarray(value)[valid][keep])
    parts.setdefault('index', []).append(index[keep])
  if not parts:
    raise ValueError('no examples to collect: the batches were empty or held none of the wanted indices')
  return {name: np.concatenate(values) for name, values in parts.items()}
