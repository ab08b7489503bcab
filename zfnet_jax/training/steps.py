"""The train step as a pure function, and its jitted, sharded form over a device mesh (`parallel`).

The global batch is sharded over the `data` axis of a 1-D mesh of every device of every host;
parameters and optimiser state are replicated. Losses are means over the global batch, so XLA's
all-reduce averages gradients over all devices. The eval step is `evaluation.eval_step`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from zfnet_jax import parallel
from zfnet_jax.model import network
from zfnet_jax.training import optim

Batch = parallel.Batch


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[B, K]` logits, `[B]` int labels -> `[B]` float32 losses (computed in float32 whatever the logits)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """`[B]` 1.0 where the label is among the `k` highest logits, compared in float32.

  A tie does not count for the label: its rank is the number of other classes whose logit is at least
  the label's, so a network that outputs the same logit for every class scores 0, not 1.
  """
  logits = logits.astype(jnp.float32)
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1) - 1  # minus the label itself
  return (rank < k).astype(jnp.float32)


def all_finite(tree: Any) -> jax.Array:
  """A scalar bool: every element of every leaf of `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


NO_BAD_STEP = np.iinfo(np.int32).max  # `first_nonfinite_step` of a stretch of steps that were all finite


def train_step(state: TrainState, batch: Batch, *, model: network.ConvNet, tx: optax.GradientTransformation,
               dropout_key: jax.Array, filter_rms_radius: float, inputs: Callable,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on `batch` (`image` uint8 squares `[B, R, R, C]`, `label` `[B]`); returns metrics as batch
  means. `inputs(images, step)` turns the squares into network inputs (`augment.train_inputs_fn`).

  `first_nonfinite_step` is this step's number (1-based, as `state.step` after it) if its loss,
  gradients or updated parameters are not finite, else `NO_BAD_STEP`: a flag computed on the device,
  for the loop to combine with `accumulate` and read at its next log step.
  With `skip_nonfinite`, such a step leaves the parameters and optimiser state as they were (the step
  still counts and is not flagged); its metrics are zero and `skipped` is 1.
  """
  rng = jax.random.fold_in(dropout_key, state.step)
  images = inputs(batch['image'], state.step)  # crops, flips, normalisation on the device

  def loss_fn(params):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    return jnp.mean(cross_entropy(logits, batch['label'])), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if filter_rms_radius:
    params = optim.renormalize_filters(params, filter_rms_radius)
  metrics = {'loss': loss, 'top1': jnp.mean(topk_correct(logits, batch['label'], 1)),
             'top5': jnp.mean(topk_correct(logits, batch['label'], 5))}
  finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
    finite = jnp.asarray(True)
  metrics['first_nonfinite_step'] = jnp.where(finite, NO_BAD_STEP, state.step + 1).astype(jnp.int32)
  return TrainState(state.step + 1, params, opt_state), metrics


@jax.jit
def accumulate(sums: dict[str, jax.Array] | None, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Running totals of `train_step` metrics on the device: sums, the earliest `first_nonfinite_step`, and
  `steps`, how many were added."""
  metrics = {**metrics, 'steps': jnp.ones((), jnp.int32)}
  if sums is None:
    return metrics
  return {k: jnp.minimum(sums[k], v) if k == 'first_nonfinite_step' else sums[k] + v for k, v in metrics.items()}


def state_from_params(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 of training from `params`: a fresh optimiser state for them."""
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def create_state(model: network.ConvNet, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Step 0 of training from freshly initialised parameters."""
  return state_from_params(network.init_params(model, rng), tx)


def jit_steps(mesh: Mesh, model: network.ConvNet, tx: optax.GradientTransformation, seed: int,
              filter_rms_radius: float, skip_nonfinite: bool = False, *,
              inputs: Callable) -> tuple[Callable, Callable]:
  """`(init, train)` jitted with explicit shardings; `train` donates the state it is given. `inputs`:
  `augment.train_inputs_fn(config, pixel_mean)`.

  `init(key) -> state` (replicated; the key is `parallel.device_stream_key(seed, 'init', mesh)`);
  `train(state, batch) -> (state, metrics)`, dropout drawn from the seed's `dropout` stream (its key made inside
  the step, so building the steps runs nothing: `mesh` may be an `AbstractMesh` of another platform's devices).
  """
  copies, data = parallel.replicated(mesh), parallel.sharded(mesh)
  init = jax.jit(functools.partial(create_state, model, tx), in_shardings=copies, out_shardings=copies)

  def seeded_train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    # named for profiles: XLA calls the program jit_seeded_train_step
    return train_step(state, batch, model=model, tx=tx, dropout_key=parallel.stream_key(seed, 'dropout'),
                      filter_rms_radius=filter_rms_radius, inputs=inputs, skip_nonfinite=skip_nonfinite)
  return init, jax.jit(seeded_train_step, in_shardings=(copies, data), out_shardings=(copies, copies), donate_argnums=0,
                       compiler_options=parallel.compiler_options(mesh))
