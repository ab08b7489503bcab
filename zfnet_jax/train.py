"""Training: `python -m zfnet_jax.train --config configs/digits.py --workdir runs/digits`.

Overrides: `--config.batch_size=256`, `--config.model.fc_features=2048,2048`. Re-running the same
command on the same workdir resumes from the latest checkpoint. Many hosts: run the same command on
every host with `--distributed` (TPU VMs, SLURM: auto-detected), or give `--coordinator_address`,
`--num_processes` and `--process_id` explicitly.
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

from zfnet_jax import checkpointing, config_lib, input_pipeline, metric_writer, models, optim, steps


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


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


def evaluate(eval_fn, params, config: ml_collections.ConfigDict, mesh, split: str | None = None) -> dict[str, float]:
  """Loss, top-1 and top-5 accuracy over the whole split; every example counted exactly once."""
  batches, _, num_examples = input_pipeline.eval_batches(
      config, split, jax.process_index(), jax.process_count())
  sums = None
  one_step_in_flight = steps.one_step_in_flight()
  for batch in batches:
    out = eval_fn(params, steps.global_batch(mesh, batch))
    if one_step_in_flight:
      jax.block_until_ready(out)
    sums = out if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, out)
  sums = jax.tree_util.tree_map(lambda x: float(np.asarray(x)), sums)
  if int(sums['count']) != num_examples:
    raise RuntimeError(f'evaluation counted {int(sums["count"])} examples, the split has {num_examples}')
  count = sums.pop('count')
  return {**{k: v / count for k, v in sums.items()}, 'num_examples': count}


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
  input_pipeline.hide_accelerators_from_tf()
  check_config(config)
  model = models.create_model(config)
  arch = model.arch
  check_workdir(workdir)
  mesh = steps.make_mesh()
  n_proc, proc = jax.process_count(), jax.process_index()

  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  latest = mngr.latest_step()
  batches, steps_per_epoch = input_pipeline.train_batches(config, latest or 0, proc, n_proc)
  num_steps = config.num_train_steps if config.num_train_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, num_steps)
  tx = optim.create_optimizer(config.optim, schedule)
  init_fn, train_fn, eval_fn = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                               config.skip_nonfinite_steps)

  state = init_fn(jax.random.key(config.seed))
  writer = metric_writer.MetricWriter(workdir, enabled=proc == 0)
  if latest is not None:
    state = checkpointing.restore(mngr, latest, state, arch)
    writer.drop_after(latest)
    log(f'Resuming from the checkpoint at step {latest}/{num_steps} in {mngr.directory}')
  else:
    log(f'Training {models.count_params(state.params):,} parameters from scratch: {num_steps} steps '
        f'({num_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}), global batch {config.batch_size} on '
        f'{jax.device_count()} device(s), {n_proc} process(es). Logs: {workdir}')

  def run_eval(step: int, record: bool) -> dict[str, float]:
    results = evaluate(eval_fn, state.params, config, mesh)
    if record:
      writer.write(step, 'eval', results)
    log(f'eval at step {step}: loss {results["loss"]:.4f} top1 {results["top1"]:.4f} '
        f'top5 {results["top5"]:.4f} ({int(results["num_examples"])} examples)')
    return results

  step = int(state.step)
  results = {}
  if step >= num_steps:
    log(f'Training already finished at step {step}; evaluating the final checkpoint.')
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
            log(f'SIGTERM: saved a checkpoint at step {step}/{num_steps} and stopped. Run the same command '
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
  log(f'step {step}/{num_steps} (epoch {step / steps_per_epoch:.1f}) loss {means["loss"]:.4f} '
      f'top1 {means["top1"]:.3f} | {images_per_s:,.0f} img/s | {eta}'
      + (f' | {int(skipped)} non-finite batch(es) skipped' if skipped else ''))


def main(argv: list[str]) -> None:
  from absl import flags, logging
  del argv
  logging.set_verbosity(logging.WARNING)  # tfds and Orbax log every file they touch at INFO
  FLAGS = flags.FLAGS
  if FLAGS.coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # for CPU processes standing in for hosts
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.',
                      required=True)
  config_flags.DEFINE_config_file('config', None, 'A config file in configs/, e.g. configs/digits.py.',
                                  lock_config=True)
  flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() (auto-detected '
                    'on TPU VMs and SLURM).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-host by hand: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host by hand: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host by hand: this process\'s index.')
  flags.mark_flag_as_required('config')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
