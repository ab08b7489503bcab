"""What every absl command line shares: defining and parsing its flags (a mistyped `--config.FIELD` gets a
suggestion), quiet library logging, many-host start-up, and the preemption exit status.

  if __name__ == '__main__':
    cli.run(main, define_flags)
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import jax
from absl import app, flags, logging

from zfnet_jax import config_lib
from zfnet_jax.training import loop


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None], takes_arguments: bool = False) -> None:
  """Defines the flags, parses them with `config_lib.parse_flags` and calls `main(argv)` with absl logging at
  WARNING (tfds and Orbax log every file they touch at INFO). Without `takes_arguments`, a positional
  argument is a usage error."""
  define_flags()

  def checked(argv: list[str]) -> None:
    if not takes_arguments and len(argv) > 1:
      raise app.UsageError(f'unexpected arguments {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    main(argv)
  app.run(checked, flags_parser=config_lib.parse_flags)


def define_multihost_flags() -> None:
  """`--distributed`, or `--coordinator_address --num_processes --process_id` by hand."""
  flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() '
                    '(auto-detected on TPU VMs and SLURM).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-host by hand: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host by hand: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host by hand: this process\'s index.')


def start_multihost() -> None:
  """Joins the other processes named by the multi-host flags (gloo collectives for CPU processes standing in
  for hosts); nothing without them."""
  f = flags.FLAGS
  if f.coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  elif f.distributed:
    jax.distributed.initialize()


@contextlib.contextmanager
def exit_when_preempted() -> Iterator[None]:
  """A `loop.Preempted` inside becomes its message and exit status 75 (`loop.PREEMPTED_EXIT_STATUS`): the same
  command resumes."""
  try:
    yield
  except loop.Preempted as e:
    print(e, flush=True)
    raise SystemExit(loop.PREEMPTED_EXIT_STATUS) from None
