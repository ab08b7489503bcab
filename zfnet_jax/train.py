"""Training: `python -m zfnet_jax.train --config configs/digits.py --workdir runs/digits`.

Overrides: `--config.batch_size=256`, `--config.model.fc_features=2048,2048`. Re-running the same
command on the same workdir resumes from the latest checkpoint. Many hosts: run the same command on
every host with `--distributed` (TPU VMs, SLURM: auto-detected), or give `--coordinator_address`,
`--num_processes` and `--process_id` explicitly.

Exit status: 0 when training finished; 75 (EX_TEMPFAIL, `loop.PREEMPTED_EXIT_STATUS`) on every process
when a preemption notice (SIGTERM) stopped the run after a checkpoint: run the same command again.
"""
from __future__ import annotations

import jax
from absl import app, flags, logging

from zfnet_jax import config_lib
from zfnet_jax.training import loop


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # tfds and Orbax log every file they touch at INFO
  FLAGS = flags.FLAGS
  if FLAGS.coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # for CPU processes standing in for hosts
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except loop.Preempted as e:
    print(e, flush=True)
    raise SystemExit(loop.PREEMPTED_EXIT_STATUS) from None


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.',
                      required=True)
  config_lib.define_config_flag('A config file in configs/, e.g. configs/digits.py.')
  flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() '
                    '(auto-detected on TPU VMs and SLURM).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-host by hand: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host by hand: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host by hand: this process\'s index.')


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
