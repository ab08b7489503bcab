"""Orbax checkpoints in `WORKDIR/checkpoints/`: the train state plus the architecture that made it.

Every process must call `save` and `restore` (Orbax coordinates the hosts). Saves are atomic: a
half-written step directory is never picked up by `latest_step`. The architecture is stored beside
the state as JSON so that restoring into a different network fails with the differing fields named,
instead of with a shape error deep inside Orbax.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from zfnet_jax import paths
from zfnet_jax.model import network


class ArchitectureMismatchError(ValueError):
  """The checkpoint was written by a network with a different architecture than the config's."""


def directory(workdir: str) -> str:
  """`WORKDIR/checkpoints`, absolute: Orbax takes `gs://...` as it is and wants local paths absolute."""
  return paths.join(paths.absolute(workdir), 'checkpoints')


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """The checkpoint manager of `workdir` (a local or `gs://` path), keeping the last `keep` steps."""
  path = directory(workdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  handlers = {'state': ocp.StandardCheckpointHandler(), 'architecture': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, arch: network.Architecture) -> None:
  """Starts an asynchronous save of `state` at `step`; `mngr.wait_until_finished()` blocks on it."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          architecture=ocp.args.JsonSave(arch.to_dict())))


def check_architecture(mngr: ocp.CheckpointManager, step: int, arch: network.Architecture) -> None:
  """Raises `ArchitectureMismatchError`, naming the differing fields, if `step` was saved by another network."""
  saved = mngr.restore(step, args=ocp.args.Composite(architecture=ocp.args.JsonRestore()))['architecture']
  differences = network.architecture_differences(saved, arch)
  if differences:
    raise ArchitectureMismatchError(
        f'the checkpoint at step {step} in {mngr.directory} was written by a different architecture:\n  '
        + '\n  '.join(differences) + '\nUse the config that trained it, or a fresh --workdir.')


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, arch: network.Architecture) -> Any:
  """Restores the train state saved at `step` into the shapes and shardings of `abstract_state`.

  `abstract_state` is a tree of `jax.ShapeDtypeStruct`s with shardings, e.g. `jax.eval_shape` of the
  jitted init: nothing is initialised only to be overwritten.
  """
  check_architecture(mngr, step, arch)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def load_params(config: ml_collections.ConfigDict, workdir: str,
                step: int | None = None) -> tuple[network.ConvNet, Any, int]:
  """`(model, params, step)` from `WORKDIR/checkpoints` (latest step by default), for analysis tools.

  Params come back on this process's first device, whatever devices and hosts saved them; the
  optimiser state and step are not read.
  """
  model = network.create_model(config)
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}: train first with\n'
                            f'  python -m zfnet_jax.train --config CONFIG --workdir {workdir}')
  check_architecture(mngr, step, model.arch)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = mngr.item_metadata(step)['state']['params']
  target = {'params': jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)}
  with ocp.PyTreeCheckpointer() as reader:  # reads the `params` subtree of the state alone
    params = reader.restore(mngr.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))['params']
  mngr.close()
  return model, params, step
