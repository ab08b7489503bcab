"""The training loop: `train_and_evaluate(config, workdir)` trains, checkpoints, evaluates and resumes.

Re-running on the same workdir resumes from the latest checkpoint. A preemption notice (SIGTERM) makes
every process save the same step and raise `Preempted`; the CLI exits with `PREEMPTED_EXIT_STATUS`.
The loop never waits for the device between log steps: step t+1 is dispatched before step t's metrics
are read, and metrics leave the device only at log steps, through `jax.device_get`.
"""
from __future__ import annotations

import errno
import math
import signal
import threading

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from zfnet_jax.data import augment, pipeline, sources, squares
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, evaluation, metric_writer, optim, steps

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; launchers read non-zero as unfinished


class Preempted(Exception):
  """A preemption notice stopped the run after every process saved the checkpoint at `step`."""

  def __init__(self, step: int, num_steps: int, directory):
    super().__init__(f'preempted: saved a checkpoint at step {step}/{num_steps} in {directory} and stopped. '
                     f'Run the same command again to resume.')
    self.step = step


def check_config(config: ml_collections.ConfigDict) -> None:
  """Cross-field checks that need the device count; single fields are checked where they are used."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value < 1 or value % n_dev:
      raise ValueError(f'config.{field}={value} must be a positive multiple of the {n_dev} devices '
                       f'({n_proc} process(es)): e.g. --config.{field}={max(1, value // n_dev) * n_dev}')
  if config.num_epochs <= 0:
    raise ValueError(f'config.num_epochs must be positive, got {config.num_epochs}')


def check_workdir(workdir: str) -> None:
  """Creates `workdir` (any path `tf.io.gfile` takes, `gs://` too) and fails early if it cannot be written."""
  probe = metric_writer.join(workdir, f'.write_test_{jax.process_index()}')
  try:
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)
    raise PermissionError(f'cannot write to --workdir {workdir} ({reason}): choose a writable directory '
                          f'or fix its permissions') from None


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
  model = network.create_model(config)
  arch = model.arch
  check_workdir(workdir)
  mesh = steps.make_mesh()
  n_proc, proc = jax.process_count(), jax.process_index()

  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  latest = mngr.latest_step()
  batches, steps_per_epoch = pipeline.train_batches(config, latest or 0, proc, n_proc)
  num_steps = config.num_train_steps if config.num_train_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, num_steps)
  tx = optim.create_optimizer(config.optim, schedule)
  # the data: uint8 squares from the host (resumed at `latest` by index arithmetic), crops on the device
  pixel_mean = squares.pixel_mean(config)
  init_fn, train_fn = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                      config.skip_nonfinite_steps, inputs=augment.train_inputs_fn(config, pixel_mean))
  eval_fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, pixel_mean))

  rng = steps.device_key(config.seed, mesh)
  writer = metric_writer.MetricWriter(workdir, enabled=proc == 0)
  if latest is not None:
    state = checkpointing.restore(mngr, latest, jax.eval_shape(init_fn, rng), arch)
    writer.drop_after(latest)
    metric_writer.log(f'Resuming from the checkpoint at step {latest}/{num_steps} in {mngr.directory}')
    step = latest
  else:
    state = init_fn(rng)
    metric_writer.log(f'Training {network.count_params(state.params):,} parameters from scratch: '
                      f'{num_steps} steps ({num_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}), global '
                      f'batch {config.batch_size} on {jax.device_count()} device(s), {n_proc} process(es). '
                      f'Logs: {workdir}')
    step = 0

  def run_eval(step: int, record: bool) -> dict[str, float]:
    results = evaluation.evaluate(eval_fn, state.params, config, mesh)
    if record:
      writer.write(step, 'eval', results)
    metric_writer.log(f'eval at step {step}: loss {results["loss"]:.4f} top1 {results["top1"]:.4f} '
                      f'top5 {results["top5"]:.4f} ({int(results["num_examples"])} examples)')
    return results

  if step >= num_steps:
    mngr.close()
    metric_writer.log(f'Training already finished at step {step}; evaluating the final checkpoint.')
    return run_eval(step, record=False)
  progress = metric_writer.Progress(num_steps, step, config.batch_size)
  profile = metric_writer.ProfileWindow(workdir, *config.profile_steps)
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))
  sums, n_sums, unread = None, 0, None
  one_step_in_flight = steps.one_step_in_flight()
  results = {}

  learning_rate = jax.jit(schedule)  # jitted, so its constants are not host-to-device transfers

  def read_and_log(totals: tuple) -> None:  # (step, sums, n_sums): metrics leave the device here only
    at, on_device, n = totals
    log_train_metrics(writer, progress, at, num_steps, steps_per_epoch, jax.device_get(on_device), n,
                      float(jax.device_get(learning_rate(jax.device_put(at - 1)))), mngr)

  try:
    try:
      with PreemptionWatch(mngr) as preemption:
        while step < num_steps:
          profile.before_step(step)
          state, metrics = train_fn(state, steps.global_batch(mesh, next(batches)))
          if one_step_in_flight:  # several CPU devices only: see `steps.one_step_in_flight`
            jax.block_until_ready(metrics)
          if unread is not None:  # the last log step's metrics, read now that the next step is queued
            read_and_log(unread)
            unread = None
          sums, n_sums, step = steps.accumulate(sums, metrics), n_sums + 1, step + 1
          profile.after_step(step, state)
          preempted = preemption.reached(step)
          save_now = step % config.checkpoint_every_steps == 0 or step == num_steps or preempted
          eval_now = step % eval_every == 0 or step == num_steps
          if save_now or eval_now:  # read at once: every step since the last log is checked before any is kept
            read_and_log((step, sums, n_sums))
            sums, n_sums = None, 0
          elif step % config.log_every_steps == 0:
            unread, sums, n_sums = (step, sums, n_sums), None, 0
          if save_now:
            checkpointing.save(mngr, step, state, arch)
          if preempted:
            mngr.wait_until_finished()
            raise Preempted(step, num_steps, mngr.directory)
          if eval_now:
            results = run_eval(step, record=True)
            progress.restart(step)  # keep eval time out of the throughput figure
    finally:  # also on errors: let the last good checkpoint finish writing
      profile.close()
      mngr.wait_until_finished()
      mngr.close()
  except (OSError, ValueError) as e:
    if 'No space left on device' not in str(e):
      raise
    raise OSError(errno.ENOSPC, f'the disk of {mngr.directory} filled up while saving a checkpoint; the '
                  f'last complete one (step {mngr.latest_step()}) is intact. Free space and run the same '
                  f'command again to resume from it.') from None
  return results


def log_train_metrics(writer: metric_writer.MetricWriter, progress: metric_writer.Progress, step: int,
                      num_steps: int, steps_per_epoch: int, sums: dict[str, np.ndarray], n_sums: int,
                      learning_rate: float, mngr) -> None:
  """Writes the mean train metrics of the last `n_sums` steps (`sums`, on the host); stops the run if any
  of those steps had a non-finite loss, gradient or parameter."""
  first_bad = int(sums.pop('first_nonfinite_step'))
  if first_bad != steps.NO_BAD_STEP:
    raise FloatingPointError(
        f'non-finite loss, gradients or parameters at step {first_bad} (first of steps {step - n_sums + 1}-{step}); '
        f'nothing was saved after it and the last good checkpoint (step {mngr.latest_step()}) in {mngr.directory} '
        f'is kept. Lower config.optim.learning_rate, check the input data, or set '
        f'--config.skip_nonfinite_steps=True to skip such batches.')
  sums = {k: float(v) for k, v in sums.items()}
  skipped = sums.pop('skipped', 0.0)
  n_good = max(n_sums - skipped, 1)
  means = {k: v / n_good for k, v in sums.items()}
  means['learning_rate'] = learning_rate
  if skipped:
    means['skipped_steps'] = skipped
  writer.write(step, 'train', means)
  images_per_s, eta = progress.report(step)
  metric_writer.log(f'step {step}/{num_steps} (epoch {step / steps_per_epoch:.1f}) loss {means["loss"]:.4f} '
                    f'top1 {means["top1"]:.3f} | {images_per_s:,.0f} img/s | {eta}'
                    + (f' | {int(skipped)} non-finite batch(es) skipped' if skipped else ''))
