"""Data parallelism over every device of every host: the mesh, shardings, global batches, named random streams.

`jax.jit` with explicit shardings over a 1-D `data` mesh: batches are split over the `data` axis,
parameters and optimiser state are replicated. Every random number of a run comes from one of the named
`STREAMS` of `config.seed`, so dropout, crops and initialisation never share a key.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

Batch = dict[str, jax.Array]

STREAMS = ('init', 'dropout', 'crops')  # the named random streams of a run, each `stream_key(seed, name)`

# XLA's CPU backend (jax 0.10) hands convolutions to YNNPACK by default, which runs them on one thread and
# computes this network's strided convolutions and their weight gradients 2-5x slower than XLA's own
# (Eigen) convolutions; docs/PERFORMANCE.md. Dots and reductions stay with YNNPACK, where they are faster.
_CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def platform(mesh: Mesh | AbstractMesh) -> str | None:
  """The platform of `mesh`'s devices (`cpu`, `gpu`/`cuda`, `rocm`, `tpu`). An `AbstractMesh` names it in its
  `abstract_device` (how a step is built for a platform this process has no devices of: tests/test_lowering.py);
  None if it names none."""
  abstract = mesh if isinstance(mesh, AbstractMesh) else mesh.abstract_mesh
  return abstract.abstract_device.platform if abstract.abstract_device is not None else None


def compiler_options(mesh: Mesh | AbstractMesh) -> dict[str, str] | None:
  """XLA options for jitting the network over `mesh`: on CPU, convolutions by Eigen rather than YNNPACK; on every
  other platform none (`jax.jit` keeps its options whatever platform it is lowered for, so they follow the mesh)."""
  return dict(_CPU_COMPILER_OPTIONS) if platform(mesh) == 'cpu' else None


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


def sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: the leading axis split over the `data` axis of `mesh`."""
  return NamedSharding(mesh, P('data'))


def check_batch_size(field: str, value: int, devices: int | None = None) -> None:
  """Raises a `ValueError` naming `config.FIELD` unless `value` is a positive multiple of the devices."""
  n_dev = jax.device_count() if devices is None else devices
  if value < 1 or value % n_dev:
    raise ValueError(f'config.{field}={value} must be a positive multiple of the {n_dev} devices '
                     f'({jax.process_count()} process(es)): e.g. --config.{field}={max(1, value // n_dev) * n_dev}')


def stream_key(seed: int, stream: str) -> jax.Array:
  """The key of the named random `stream` (one of `STREAMS`) of a run with `seed`; traceable inside jit."""
  if stream not in STREAMS:
    raise ValueError(f'unknown random stream {stream!r}; the streams are {STREAMS}')
  return jax.random.fold_in(jax.random.key(seed), STREAMS.index(stream))


def device_stream_key(seed: int, stream: str, mesh: Mesh) -> jax.Array:
  """`stream_key(seed, stream)` made on the devices of `mesh` (replicated): no host-to-device transfer."""
  return jax.jit(stream_key, static_argnums=(0, 1), out_shardings=replicated(mesh))(seed, stream)


def global_batch(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> Batch:
  """Assembles the hosts' local batches into global arrays sharded over the `data` axis.

  Each local device gets its rows by an explicit `jax.device_put` (what `JAX_TRANSFER_GUARD=disallow`
  allows; `jax.make_array_from_process_local_data` counts as implicit there). This process's devices
  hold a contiguous block of the global batch, as on a `make_mesh` mesh.
  """
  sharding = sharded(mesh)
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
