"""The training loop: `train_and_evaluate(config, workdir)` trains, checkpoints, evaluates and resumes.

Re-running on the same workdir resumes from the latest checkpoint. SIGTERM (a preemption) saves a
checkpoint at a step all processes agree on and stops.
"""
from __future__ import annotations

import errno
import math
import os
import signal
import tempfile
import threading

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from zfnet_jax.data import augment, pipeline, sources, squares
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, evaluation, metric_writer, optim, steps


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
  """Creates `workdir` and fails early, with what to do, if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise PermissionError(f'cannot write to --workdir {workdir} ({e.strerror}): choose a writable directory '
                          f'or fix its permissions') from None


class PreemptionWatch:
  """Turns SIGTERM (what a TPU VM preemption sends) into a flag that all processes agree on at a step."""

  def __init__(self):
    self._signalled = False
    self._previous = None

  def __enter__(self) -> 'PreemptionWatch':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    self._signalled = True

  def stop_now(self) -> bool:
    """True on every process once any process got SIGTERM (a collective when there are many)."""
    if jax.process_count() == 1:
      return self._signalled
    return bool(np.any(multihost_utils.process_allgather(np.int32(self._signalled))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns:
    The final evaluation metrics (`loss`, `top1`, `top5`, `num_examples`), or `{}` if SIGTERM stopped
    the run early (after saving a checkpoint to resume from).
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

  state = init_fn(jax.random.key(config.seed))
  writer = metric_writer.MetricWriter(workdir, enabled=proc == 0)
  if latest is not None:
    state = checkpointing.restore(mngr, latest, state, arch)
    writer.drop_after(latest)
    metric_writer.log(f'Resuming from the checkpoint at step {latest}/{num_steps} in {mngr.directory}')
  else:
    metric_writer.log(f'Training {network.count_params(state.params):,} parameters from scratch: {num_steps} steps '
        f'({num_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}), global batch {config.batch_size} on '
        f'{jax.device_count()} device(s), {n_proc} process(es). Logs: {workdir}')

  def run_eval(step: int, record: bool) -> dict[str, float]:
    results = evaluation.evaluate(eval_fn, state.params, config, mesh)
    if record:
      writer.write(step, 'eval', results)
    metric_writer.log(f'eval at step {step}: loss {results["loss"]:.4f} top1 {results["top1"]:.4f} '
        f'top5 {results["top5"]:.4f} ({int(results["num_examples"])} examples)')
    return results

  step = int(state.step)
  results = {}
  if step >= num_steps:
    metric_writer.log(f'Training already finished at step {step}; evaluating the final checkpoint.')
    results = run_eval(step, record=False)
  progress = metric_writer.Progress(num_steps, step, config.batch_size)
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))
  sums, n_sums = None, 0
  one_step_in_flight = steps.one_step_in_flight()
  try:
    try:
      with PreemptionWatch() as preemption:
        while step < num_steps:
          state, metrics = train_fn(state, steps.global_batch(mesh, next(batches)))
          if one_step_in_flight:
            jax.block_until_ready(metrics)
          step += 1
          sums = metrics if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, metrics)
          n_sums += 1
          preempted = preemption.stop_now()
          save_now = step % config.checkpoint_every_steps == 0 or step == num_steps or preempted
          if step % config.log_every_steps == 0 or save_now:
            log_train_metrics(writer, progress, step, num_steps, steps_per_epoch, sums, n_sums,
                              float(schedule(step - 1)), mngr)
            sums, n_sums = None, 0
          if save_now:
            checkpointing.save(mngr, step, state, arch)
          if preempted:
            mngr.wait_until_finished()
            metric_writer.log(f'SIGTERM: saved a checkpoint at step {step}/{num_steps} and stopped. Run the same command '
                f'again to resume.')
            break
          if step % eval_every == 0 or step == num_steps:
            results = run_eval(step, record=True)
            progress.restart(step)  # keep eval time out of the throughput figure
    finally:  # also on errors: let the last good checkpoint finish writing
      mngr.wait_until_finished()
      mngr.close()
  except (OSError, ValueError) as e:
    if 'No space left on device' not in str(e):
      raise
    raise OSError(errno.ENOSPC, f'the disk of {mngr.directory} filled up while saving a checkpoint; the '
                  f'last complete one (step {mngr.latest_step()}) is intact. Free space and run the same '
                  f'command again to resume from it.') from None
  return results if step == num_steps else {}


def log_train_metrics(writer: metric_writer.MetricWriter, progress: metric_writer.Progress, step: int,
                      num_steps: int, steps_per_epoch: int, sums: dict, n_sums: int, learning_rate: float,
                      mngr) -> None:
  """Writes the mean train metrics since the last call; stops the run if any step's loss was not finite."""
  sums = {k: float(v) for k, v in sums.items()}
  skipped = sums.pop('skipped', 0.0)
  n_good = max(n_sums - skipped, 1)
  means = {k: v / n_good for k, v in sums.items()}
  if not all(np.isfinite(list(means.values()))):
    raise FloatingPointError(
        f'non-finite training loss between steps {step - n_sums + 1} and {step}; nothing was saved after '
        f'it and the last good checkpoint (step {mngr.latest_step()}) in {mngr.directory} is kept. Lower '
        f'config.optim.learning_rate, check the input data, or set --config.skip_nonfinite_steps=True '
        f'to skip such batches.')
  means['learning_rate'] = learning_rate
  if skipped:
    means['skipped_steps'] = skipped
  writer.write(step, 'train', means)
  images_per_s, eta = progress.report(step)
  metric_writer.log(f'step {step}/{num_steps} (epoch {step / steps_per_epoch:.1f}) loss {means["loss"]:.4f} '
      f'top1 {means["top1"]:.3f} | {images_per_s:,.0f} img/s | {eta}'
      + (f' | {int(skipped)} non-finite batch(es) skipped' if skipped else ''))
