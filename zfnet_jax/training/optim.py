"""The optimiser: SGD with momentum, learning-rate schedules, weight decay, filter RMS renormalisation."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('piecewise', 'cosine', 'constant')


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """A span in epochs as whole steps, to the nearest step: the one epoch -> step conversion of a run."""
  return int(round(epochs * steps_per_epoch))


def learning_rate_schedule(o: ml_collections.ConfigDict, steps_per_epoch: int, num_steps: int) -> optax.Schedule:
  """`config.optim`'s schedule over `num_steps` steps, with optional linear warm-up from 0."""
  if o.schedule not in SCHEDULES:
    raise ValueError(f'config.optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}')
  warmup = epochs_to_steps(o.warmup_epochs, steps_per_epoch)
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, max(num_steps, warmup + 1))
  if o.schedule == 'piecewise':
    main = optax.piecewise_constant_schedule(
        o.learning_rate, {epochs_to_steps(e, steps_per_epoch) - warmup: 0.1 for e in o.decay_epochs})
  else:
    main = optax.constant_schedule(o.learning_rate)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), main], [warmup])


def create_optimizer(o: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum (the paper: 0.9), plus L2 weight decay on kernels when `weight_decay > 0`."""
  sgd = optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov)
  if not o.weight_decay:
    return sgd
  kernels_only = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == 'kernel', params)
  return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=kernels_only), sgd)


def renormalize_filters(params: Any, radius: float) -> Any:
  """Rescales every conv filter whose RMS exceeds `radius` to RMS `radius` (the paper, Section 3).

  A filter is one output channel of a conv kernel `[kH, kW, in, out]`: RMS over `kH, kW, in`.
  Fully connected layers are left alone.
  """
  def renorm(path, p):
    if p.ndim != 4 or path[-1].key != 'kernel':
      return p
    rms = jnp.sqrt(jnp.mean(jnp.square(p), axis=(0, 1, 2), keepdims=True))
    return p * jnp.minimum(1.0, radius / jnp.maximum(rms, 1e-12))
  return jax.tree_util.tree_map_with_path(renorm, params)
