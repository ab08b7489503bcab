"""The training loop: `train_and_evaluate(config, workdir)` trains, checkpoints, evaluates and resumes.

Re-running on the same workdir resumes from the newest checkpoint that restores (newer ones that do not
are set aside with a warning: `checkpointing.restore_newest`). One run writes a workdir at a time: it
holds `WORKDIR/lock` (`one_writer`). A preemption notice (SIGTERM) makes
every process save the same step and raise `Preempted`; the CLI exits with `PREEMPTED_EXIT_STATUS`.
The loop never waits for the device between log steps: step t+1 is dispatched before step t's metrics
are read, and metrics leave the device only at log steps, through `jax.device_get`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import signal
import threading
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from jax.experimental import multihost_utils

from zfnet_jax import config_lib, parallel, paths, progress
from zfnet_jax.data import augment, pipeline, sources, squares
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, evaluation, metric_writer, optim, steps

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; launchers read non-zero as unfinished
LOCK_FILE = 'lock'  # WORKDIR/lock: held by the run writing the workdir (process 0's)


class Preempted(Exception):
  """A preemption notice stopped the run after every process saved the checkpoint at `step`."""

  def __init__(self, step: int, num_steps: int, directory):
    super().__init__(f'preempted: saved a checkpoint at step {step}/{num_steps} in {directory} and stopped. '
                     f'Run the same command again to resume.')
    self.step = step


class WorkdirInUseError(OSError):
  """Another run holds the workdir's lock; the message names it."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """The ranges of every numeric field (`config_lib.check`, again: a config may change after loading) and
  the checks that need the device count."""
  config_lib.check(config)
  for field in ('batch_size', 'eval_batch_size'):
    parallel.check_batch_size(field, config[field])


def check_workdir(workdir: str) -> None:
  """Creates `workdir` (any path `paths` takes, `gs://` too) and fails early if it cannot be written."""
  probe = paths.join(workdir, f'.write_test_{jax.process_index()}')
  try:
    paths.makedirs(workdir)
    paths.write_text(probe, 'ok')
    paths.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)
    raise PermissionError(f'cannot write to --workdir {workdir} ({reason}): choose a writable directory '
                          f'or fix its permissions') from None


@contextlib.contextmanager
def one_writer(workdir: str) -> Iterator[None]:
  """Holds `WORKDIR/lock` while the block runs (process 0 takes it; every process learns whether it could):
  a second run on the same workdir stops at once naming the holder (`WorkdirInUseError`); a lock left by a
  killed run is taken over with a warning. On `gs://` the lock is a heartbeat file (`paths.Lock`)."""
  lock, held = paths.Lock(paths.join(workdir, LOCK_FILE)), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except paths.LockHeldError as e:
      held = e.holder
  locked = held is None
  if jax.process_count() > 1:  # one small broadcast, so that no process goes on alone
    with jax.transfer_guard('allow'):
      locked = bool(multihost_utils.broadcast_one_to_all(np.int32(locked)))
  if not locked:
    raise WorkdirInUseError(
        f'--workdir {workdir} is in use by another run: {held or "see process 0"}. Two runs writing one workdir '
        f'would mix their checkpoints and metrics: wait for it to finish or stop it, or use another --workdir.')
  if lock.taken_over:
    progress.warn(f'took over the lock of {workdir} from {lock.taken_over}, which no longer runs')
  try:
    yield
  finally:
    lock.release()


class PreemptionWatch:
  """Turns a preemption notice (SIGTERM) into a step at which every process stops.

  Many processes (`jax.distributed` initialised): JAX's preemption sync manager catches SIGTERM and
  agrees on the step over the coordination service, with no device collective (Orbax's
  `CheckpointManager.reached_preemption`); `reached(step)` is a cheap host call. One process: a SIGTERM
  handler sets a flag (JAX's sync manager needs the coordination service). Either way, one handler.
  """

  def __init__(self, mngr):
    self._mngr = mngr
    self._signalled = False
    self._previous = None

  def __enter__(self) -> 'PreemptionWatch':
    if not jax.distributed.is_initialized() and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    self._signalled = True

  def reached(self, step: int) -> bool:
    """True, on every process at the same `step`, once any process got a preemption notice."""
    if jax.distributed.is_initialized():
      return self._mngr.reached_preemption(step)
    return self._signalled


@dataclasses.dataclass
class Run:
  """A training run set up in its workdir: the jitted steps, the data from the resumed step, the state."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  arch: network.Architecture
  mngr: ocp.CheckpointManager
  writer: metric_writer.MetricWriter
  batches: Iterator[dict[str, np.ndarray]]
  steps_per_epoch: int
  num_steps: int
  learning_rate: Callable  # jitted schedule: its constants are not host-to-device transfers
  train_fn: Callable
  eval_fn: Callable
  state: Any
  step: int


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (a local or `gs://` path), resuming from its latest checkpoint if any.

  Returns:
    The evaluation metrics of the final parameters (`loss`, `top1`, `top5`, `num_examples`).
  Raises:
    Preempted: a preemption notice stopped the run after a checkpoint every process saved.
    FloatingPointError: a step's loss, gradients or parameters were not finite (it names the first).
  """
  sources.hide_accelerators_from_tf()
  check_config(config)
  check_workdir(workdir)
  with one_writer(workdir):
    run = set_up(config, workdir)
    if run.step >= run.num_steps:
      run.mngr.close()
      metric_writer.log(f'Training already finished at step {run.step}; evaluating the final checkpoint.')
      return evaluate(run, record=False)
    profile = metric_writer.ProfileWindow(workdir, *config.profile_steps)
    with closing_checkpoints(run.mngr), contextlib.closing(profile):
      return train(run, profile)


def set_up(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """The run's network, data, jitted steps and state: restored from the newest checkpoint that restores (newer
  ones set aside, `checkpointing.set_aside`), or initialised."""
  model = network.create_model(config)
  mesh = parallel.make_mesh()
  steps_per_epoch = pipeline.train_steps_per_epoch(config, jax.process_index(), jax.process_count())
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else max(1, optim.epochs_to_steps(config.num_epochs, steps_per_epoch)))
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, num_steps)
  tx = optim.create_optimizer(config.optim, schedule)
  pixel_mean = squares.pixel_mean(config)  # uint8 squares come from the host; crops and normalisation on the device
  init_fn, train_fn = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                      config.skip_nonfinite_steps, inputs=augment.train_inputs_fn(config, pixel_mean))
  eval_fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, pixel_mean))
  writer = metric_writer.MetricWriter(workdir, enabled=jax.process_index() == 0)
  key = parallel.device_stream_key(config.seed, 'init', mesh)
  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  abstract_state = jax.eval_shape(init_fn, key)
  state, latest, skipped = checkpointing.restore_newest(
      mngr, lambda step: checkpointing.restore(mngr, step, abstract_state, model.arch))
  writer.drop_after(latest or 0)  # what a killed run wrote after its last checkpoint, and a torn last line
  if latest is None:
    state = init_fn(key)
    metric_writer.log(f'Training {network.count_params(state.params):,} parameters from scratch: '
                      f'{num_steps} steps ({num_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}), global '
                      f'batch {config.batch_size} on {jax.device_count()} device(s), {jax.process_count()} '
                      f'process(es). Logs: {workdir}')
  else:
    if skipped:
      checkpointing.set_aside(mngr, workdir, skipped, latest)
    metric_writer.log(f'Resuming from the checkpoint at step {latest}/{num_steps} in {mngr.directory}')
  batches, _ = pipeline.train_batches(config, latest or 0, jax.process_index(), jax.process_count())
  return Run(config, mesh, model.arch, mngr, writer, batches, steps_per_epoch, num_steps, jax.jit(schedule),
             train_fn, eval_fn, state, latest or 0)


def evaluate(run: Run, record: bool) -> dict[str, float]:
  """The current parameters over the whole eval split; logged, and written to the metrics if `record`."""
  results = evaluation.evaluate(run.eval_fn, run.state.params, run.config, run.mesh)
  if record:
    run.writer.write(run.step, 'eval', results)
  metric_writer.log(f'eval at step {run.step}: loss {results["loss"]:.4f} top1 {results["top1"]:.4f} '
                    f'top5 {results["top5"]:.4f} ({int(results["num_examples"])} examples)')
  return results


def train(run: Run, profile: metric_writer.ProfileWindow) -> dict[str, float]:
  """Steps `run` to its last step, saving, evaluating and logging on the way; the final evaluation.

  Step t+1 is dispatched before step t's metrics are read (`unread`), except at save and eval steps,
  where every step since the last log is checked before anything is kept.
  """
  c = run.config
  done = progress.Progress(run.num_steps, run.step, every_s=None)
  eval_every = max(1, optim.epochs_to_steps(c.eval_every_epochs, run.steps_per_epoch))
  sums, unread, results = None, None, {}
  wait = parallel.one_step_in_flight()  # several CPU devices only: see `parallel.one_step_in_flight`
  with PreemptionWatch(run.mngr) as preemption:
    while run.step < run.num_steps:
      profile.before_step(run.step)
      run.state, metrics = run.train_fn(run.state, parallel.global_batch(run.mesh, next(run.batches)))
      if wait:
        jax.block_until_ready(metrics)
      if unread is not None:  # the last log step's metrics, read now that the next step is queued
        log_train_metrics(run, done, *unread)
        unread = None
      sums, run.step = steps.accumulate(sums, metrics), run.step + 1
      profile.after_step(run.step, run.state)
      preempted = preemption.reached(run.step)
      save_now = run.step % c.checkpoint_every_steps == 0 or run.step == run.num_steps or preempted
      eval_now = run.step % eval_every == 0 or run.step == run.num_steps
      if save_now or eval_now:
        log_train_metrics(run, done, run.step, sums)
      elif run.step % c.log_every_steps == 0:
        unread = (run.step, sums)
      if save_now or eval_now or unread is not None:
        sums = None
      if save_now:
        checkpointing.save(run.mngr, run.step, run.state, run.arch)
      if preempted:
        run.mngr.wait_until_finished()
        raise Preempted(run.step, run.num_steps, run.mngr.directory)
      if eval_now:
        results = evaluate(run, record=True)
        done.restart()  # keep eval time out of the throughput figure
  return results


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error` or an exception it was raised from is an `OSError` with `errno.ENOSPC`, or (TensorStore
  and Orbax keep only the message of the `OSError` below them) carries its message."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def closing_checkpoints(mngr: ocp.CheckpointManager) -> Iterator[None]:
  """Waits for the last checkpoint and closes `mngr` however the block ends; a full disk while saving
  becomes one `OSError` that says the previous checkpoint is intact."""
  try:
    yield
  except (OSError, ValueError) as e:
    if not _disk_full(e):
      raise
    mngr.wait_until_finished()
    kept = mngr.latest_step()
    raise OSError(errno.ENOSPC, f'the disk of {mngr.directory} filled up while saving a checkpoint; '
                  + (f'the last complete one (step {kept}) is intact. ' if kept is not None else 'no checkpoint '
                     'was complete yet. ') + 'Free space and run the same command again.') from None
  finally:  # also on errors: let the last good checkpoint finish writing
    mngr.wait_until_finished()
    mngr.close()


def log_train_metrics(run: Run, done: progress.Progress, step: int, sums: dict[str, jax.Array]) -> None:
  """Reads the train metrics summed since the last log (one `jax.device_get`) and writes their means; stops the
  run if any of those steps had a non-finite loss, gradient or parameter."""
  sums = jax.device_get(sums)
  n_sums = int(sums.pop('steps'))
  first_bad = int(sums.pop('first_nonfinite_step'))
  if first_bad != steps.NO_BAD_STEP:
    kept = run.mngr.latest_step()
    raise FloatingPointError(
        f'non-finite loss, gradients or parameters at step {first_bad} (first of steps {step - n_sums + 1}-{step}); '
        + (f'nothing was saved after it and the last good checkpoint (step {kept}) in {run.mngr.directory} is kept. '
           if kept is not None else 'no checkpoint was saved before it. ')
        + 'Lower config.optim.learning_rate, check the input data, or set --config.skip_nonfinite_steps=True to skip '
          'such batches.')
  sums = {k: float(v) for k, v in sums.items()}
  skipped = sums.pop('skipped', 0.0)
  means = {k: v / max(n_sums - skipped, 1) for k, v in sums.items()}
  means['learning_rate'] = float(jax.device_get(run.learning_rate(jax.device_put(step - 1))))
  if skipped:
    means['skipped_steps'] = skipped
  run.writer.write(step, 'train', means)
  done.update(step)
  images_per_s, eta = done.rate() * run.config.batch_size, done.eta()
  done.restart()  # the next line's rate: the steps since this one
  metric_writer.log(f'step {step}/{run.num_steps} (epoch {step / run.steps_per_epoch:.1f}) loss {means["loss"]:.4f} '
                    f'top1 {means["top1"]:.3f} | {images_per_s:,.0f} img/s | {eta}'
                    + (f' | {int(skipped)} non-finite batch(es) skipped' if skipped else ''))
