"""The train and eval steps as pure functions, and their jitted, sharded forms over a device mesh.

Data parallelism with `jax.jit`: the global batch is sharded over the `data` axis of a 1-D mesh of
every device of every host; parameters and optimiser state are replicated. Losses are means over the
global batch, so XLA's all-reduce averages gradients over all devices.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zfnet_jax.model import network
from zfnet_jax.training import optim

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# XLA's CPU backend (jax 0.10) hands convolutions to YNNPACK by default, which runs them on one thread and
# computes this network's strided convolutions and their weight gradients 2-5x slower than XLA's own
# (Eigen) convolutions; docs/PERFORMANCE.md. Dots and reductions stay with YNNPACK, where they are faster.
_CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
  """XLA options for jitting the network over `mesh`: on CPU, convolutions by Eigen rather than YNNPACK."""
  return dict(_CPU_COMPILER_OPTIONS) if mesh.devices.flat[0].platform == 'cpu' else None


def one_step_in_flight() -> bool:
  """Whether loops must wait for each step before dispatching the next: on several CPU devices.

  XLA's CPU client runs every device's part of a step on one shared thread pool; steps queued ahead
  (async dispatch) can hold its threads while a collective of an earlier step waits for participants
  that never get one, and the process hangs (seen with 8 host-platform devices on 2 cores).
  Accelerators keep the queue.
  """
  return jax.local_device_count() > 1 and jax.local_devices()[0].platform == 'cpu'


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def global_batch(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> Batch:
  """Assembles the hosts' local batches into global arrays sharded over the `data` axis."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[B, K]` logits, `[B]` int labels -> `[B]` losses."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """`[B]` 1.0 where the label is among the `k` highest logits."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # rank = number of classes strictly above the label; ties count in the label's favour
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def train_step(state: TrainState, batch: Batch, *, model: network.ConvNet, tx: optax.GradientTransformation,
               dropout_key: jax.Array, filter_rms_radius: float, inputs: Callable,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on `batch` (`image` uint8 squares `[B, R, R, C]`, `label` `[B]`); returns metrics as batch
  means. `inputs(images, step)` turns the squares into network inputs (`augment.train_inputs_fn`).

  With `skip_nonfinite`, a batch whose loss or gradients are not finite leaves the parameters and
  optimiser state as they were (the step still counts); its metrics are zero and `skipped` is 1.
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
  if skip_nonfinite:
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


def create_state(model: network.ConvNet, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  params = network.init_params(model, rng)
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def jit_steps(mesh: Mesh, model: network.ConvNet, tx: optax.GradientTransformation, seed: int,
              filter_rms_radius: float, skip_nonfinite: bool = False, *,
              inputs: Callable) -> tuple[Callable, Callable]:
  """`(init, train)` jitted with explicit shardings; `train` donates the state it is given. `inputs`:
  `augment.train_inputs_fn(config, pixel_mean)`.

  `init(rng) -> state` (replicated); `train(state, batch) -> (state, metrics)`. The eval step is
  `evaluation.jit_eval_step`.
  """
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  options = compiler_options(mesh)
  init = jax.jit(functools.partial(create_state, model, tx), out_shardings=replicated)
  train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, dropout_key=jax.random.key(seed),
                        filter_rms_radius=filter_rms_radius, inputs=inputs, skip_nonfinite=skip_nonfinite),
      in_shardings=(replicated, data), out_shardings=(replicated, replicated), donate_argnums=0,
      compiler_options=options)
  return init, train
