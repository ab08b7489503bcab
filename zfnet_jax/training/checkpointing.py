"""Orbax checkpoints in `WORKDIR/checkpoints/`: the train state plus the architecture that made it.

Every process must call `save` and `restore` (Orbax coordinates the hosts). Saves are atomic: a
half-written step directory is never picked up by `latest_step`. The architecture is stored beside
the state as JSON so that restoring into a different network fails with the differing fields named,
instead of with a shape error deep inside Orbax.

A step that does not restore (a data file truncated, its metadata deleted, an empty folder left by an
interrupted copy, something else's checkpoint) is skipped with a warning naming it, and the newest step
that restores is used (`restore_newest`): training resumes from it and moves the skipped steps to
`WORKDIR/unrestorable_checkpoints/` (so that saving those steps again does not collide with them); the
analysis tools (`load_params`) only skip them. Nothing is deleted. A checkpoint of another architecture
is not skipped: it stops with the differing fields (the config is wrong, not the checkpoint).
"""
from __future__ import annotations

import contextlib
import gc
import sys
from typing import Any, Callable, Iterator, TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from zfnet_jax import paths, progress
from zfnet_jax.model import network

UNRESTORABLE = 'unrestorable_checkpoints'  # WORKDIR/UNRESTORABLE/STEP: steps that training skipped
KEEP_ALL = -1  # config.keep_checkpoints: keep every checkpoint

T = TypeVar('T')


class ArchitectureMismatchError(ValueError):
  """The checkpoint was written by a network with a different architecture than the config's."""


class UnrestorableCheckpointError(ValueError):
  """A checkpoint step asked for, or every step of a workdir, does not restore; the message says why."""


def directory(workdir: str) -> str:
  """`WORKDIR/checkpoints`, absolute: Orbax takes `gs://...` as it is and wants local paths absolute."""
  return paths.join(paths.absolute(workdir), 'checkpoints')


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """The checkpoint manager of `workdir` (a local or `gs://` path), keeping the last `keep` steps
  (`KEEP_ALL`: every step; `config_lib.RANGES` refuses 0, which would keep none)."""
  path = directory(workdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=None if keep == KEEP_ALL else keep, create=True,
                                         enable_async_checkpointing=True)
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


STEP_FILES = ('architecture', 'state/_METADATA')  # what every complete step folder holds


def check_complete(mngr: ocp.CheckpointManager, step: int) -> None:
  """Raises `FileNotFoundError` naming what the folder of `step` lacks (an interrupted copy, a deleted file)."""
  missing = [f for f in STEP_FILES if not paths.exists(paths.join(str(mngr.directory), str(step), f))]
  if missing:
    raise FileNotFoundError(f'its folder lacks {" and ".join(missing)}')


def _reason(error: BaseException) -> str:
  """Why a step did not restore, in one short line: the innermost error (TensorStore's, under Orbax's)."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:200] + "..." if len(text) > 200 else text}'


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
  """Orbax reads arrays in concurrent coroutines: when one read fails, the others' errors surface later as
  'Exception ignored in <coroutine>' tracebacks. Those of a step being tried are dropped; the first is
  `restore_newest`'s reason."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous


def restore_newest(mngr: ocp.CheckpointManager,
                   read: Callable[[int], T]) -> tuple[T | None, int | None, dict[int, str]]:
  """`(read(step), step, skipped)` for the newest step of `mngr` that `read` restores, trying the newest
  first; `skipped` maps each newer step that did not restore to why. `(None, None, {})` without steps.

  Raises:
    UnrestorableCheckpointError: no step restores (each one's reason named; nothing is moved).
    ArchitectureMismatchError: a readable step of another architecture (the config is wrong).
  """
  skipped = {}
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      with _quiet_failed_reads():
        check_complete(mngr, step)
        return read(step), step, skipped
    except ArchitectureMismatchError:
      raise
    except Exception as e:  # noqa: BLE001  (Orbax and TensorStore raise many kinds for a damaged step)
      skipped[step] = _reason(e)
  if skipped:
    raise UnrestorableCheckpointError(
        f'no checkpoint in {mngr.directory} restores: ' + '; '.join(f'step {s}: {r}' for s, r in skipped.items())
        + '. Nothing was changed. To start over, move that folder aside (or use a fresh --workdir).')
  return None, None, {}


def set_aside(mngr: ocp.CheckpointManager, workdir: str, skipped: dict[int, str], used: int) -> None:
  """Moves the `skipped` steps (newer than `used`, which restored) to `WORKDIR/unrestorable_checkpoints/`,
  with a warning each, so that the resumed run can save those steps again; `mngr` then lists the rest.
  Process 0 moves, every process waits for it."""
  for step, reason in skipped.items():
    target = paths.join(paths.absolute(workdir), UNRESTORABLE, str(step))
    n = 1
    while paths.exists(target):  # the same step skipped before
      n += 1
      target = paths.join(paths.absolute(workdir), UNRESTORABLE, f'{step}.{n}')
    if jax.process_index() == 0:
      paths.move(paths.join(str(mngr.directory), str(step)), target)
    progress.warn(f'checkpoint step {step} in {mngr.directory} does not restore ({reason}): skipped, resuming '
                  f'from step {used}; moved to {target} (look inside, then delete it)')
  if jax.process_count() > 1:
    with jax.transfer_guard('allow'):  # the barrier's token is a host value
      multihost_utils.sync_global_devices('unrestorable checkpoints set aside')
  mngr.reload()


def _read_params(mngr: ocp.CheckpointManager, step: int, arch: network.Architecture) -> Any:
  """The `params` subtree of the state at `step` alone, on this process's first device."""
  check_architecture(mngr, step, arch)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = mngr.item_metadata(step)['state']['params']
  target = {'params': jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)}
  with ocp.PyTreeCheckpointer() as reader:
    return reader.restore(mngr.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))['params']


def load_params(config: ml_collections.ConfigDict, workdir: str,
                step: int | None = None) -> tuple[network.ConvNet, Any, int]:
  """`(model, params, step)` from `WORKDIR/checkpoints` (by default the newest step that restores, skipping
  newer ones that do not with a warning each), for analysis tools.

  Params come back on this process's first device, whatever devices and hosts saved them; the
  optimiser state and step are not read. Nothing in the workdir is written.

  Raises:
    FileNotFoundError: no checkpoint.
    UnrestorableCheckpointError: `step` (or, without one, every step) does not restore.
    ArchitectureMismatchError: the checkpoint is of another network than the config's.
  """
  model = network.create_model(config)
  train_first = f'train first with\n  python -m zfnet_jax.train --config CONFIG --workdir {workdir}'
  if not paths.exists(directory(workdir)):  # not created here: the workdir may be read-only
    raise FileNotFoundError(f'no checkpoint in {directory(workdir)}: {train_first}')
  mngr = manager(workdir)
  try:
    if step is not None:
      if step not in mngr.all_steps():
        raise FileNotFoundError(f'no checkpoint at step {step} in {mngr.directory}; its steps are '
                                f'{list(mngr.all_steps())}')
      try:
        with _quiet_failed_reads():
          check_complete(mngr, step)
          return model, _read_params(mngr, step, model.arch), step
      except ArchitectureMismatchError:
        raise
      except Exception as e:  # noqa: BLE001  (as in restore_newest)
        raise UnrestorableCheckpointError(f'checkpoint step {step} in {mngr.directory} does not restore '
                                          f'({_reason(e)}): choose another step of {list(mngr.all_steps())}') from None
    params, step, skipped = restore_newest(mngr, lambda s: _read_params(mngr, s, model.arch))
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {mngr.directory}: {train_first}')
    for bad, reason in skipped.items():
      progress.warn(f'checkpoint step {bad} in {mngr.directory} does not restore ({reason}): skipped, using step '
                    f'{step}; the next train on this workdir moves it to {UNRESTORABLE}/ (or delete it)')
    return model, params, step
  finally:
    mngr.close()
