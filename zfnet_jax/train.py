"""Training: `python -m zfnet_jax.train --config configs/digits.py --workdir runs/digits`.

Overrides: `--config.batch_size=256`, `--config.model.fc_features=2048,2048`. Re-running the same
command on the same workdir resumes from the latest checkpoint. Many hosts: run the same command on
every host with `--distributed` (TPU VMs, SLURM: auto-detected), or give `--coordinator_address`,
`--num_processes` and `--process_id` explicitly.

Exit status: 0 when training finished; 75 (EX_TEMPFAIL, `loop.PREEMPTED_EXIT_STATUS`) on every process
when a preemption notice (SIGTERM) stopped the run after a checkpoint: run the same command again.
"""
from __future__ import annotations

from absl import flags

from zfnet_jax import cli, config_lib
from zfnet_jax.training import loop


def main(argv: list[str]) -> None:
  cli.start_multihost()
  with cli.exit_when_preempted():
    loop.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.',
                      required=True)
  config_lib.define_config_flag('A config file in configs/, e.g. configs/digits.py.')
  cli.define_multihost_flags()


if __name__ == '__main__':
  cli.run(main, define_flags)
