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


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of parameters, optimiser state and metrics: a full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def device_key(seed: int, mesh: Mesh) -> jax.Array:
  """`jax.random.key(seed)` made on the devices of `mesh` (replicated): no host-to-device transfer."""
  return jax.jit(jax.random.key, static_argnums=0, out_shardings=replicated(mesh))(seed)


def global_batch(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> Batch:
  """Assembles the hosts' local batches into global arrays sharded over the `data` axis.

  Each local device gets its rows by an explicit `jax.device_put` (what `JAX_TRANSFER_GUARD=disallow`
  allows; `jax.make_array_from_process_local_data` counts as implicit there). This process's devices
  hold a contiguous block of the global batch, as on a `make_mesh` mesh.
  """
  sharding = NamedSharding(mesh, P('data'))
  out = {}
  for k, v in host_batch.items():
    shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
    rows = {d: (idx[0].start or 0, idx[0].stop or shape[0]) for d, idx in
            sharding.addressable_devices_indices_map(shape).items()}
    first = min(start for start, _ in rows.values())
    if max(stop for _, stop in rows.values()) - first != v.shape[0]:
      raise ValueError(f'the {v.shape[0]} local rows of `{k}` do not match this process\'s devices on the mesh')
    shards = [jax.device_put(v[start - first:stop - first], d) for d, (start, stop) in rows.items()]
    out[k] = jax.make_array_from_single_device_arrays(shape, sharding, shards)
  return out


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
  """Running totals of `train_step` metrics on the device: sums, and the earliest `first_nonfinite_step`."""
  if sums is None:
    return metrics
  return {k: jnp.minimum(sums[k], v) if k == 'first_nonfinite_step' else sums[k] + v for k, v in metrics.items()}


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
  copies, data = replicated(mesh), NamedSharding(mesh, P('data'))
  options = compiler_options(mesh)
  init = jax.jit(functools.partial(create_state, model, tx), in_shardings=copies, out_shardings=copies)
  dropout_key = device_key(seed, mesh)
  train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, dropout_key=dropout_key,
                        filter_rms_radius=filter_rms_radius, inputs=inputs, skip_nonfinite=skip_nonfinite),
      in_shardings=(copies, data), out_shardings=(copies, copies), donate_argnums=0,
      compiler_options=options)
  return init, train
