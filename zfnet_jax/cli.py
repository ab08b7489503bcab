"""What every absl command line shares: defining and parsing its flags (a mistyped `--config.FIELD` gets a
suggestion, a value out of range its range), quiet library logging, many-host start-up, errors for people,
and the preemption exit status.

  if __name__ == '__main__':
    cli.run(main, define_flags)

Errors for people: a known error (`is_known`: one the package raised itself with a message that says what
went wrong and what to do) prints as `error: MESSAGE` on stderr and exits with status 1; the traceback only
with `--verbose` or `ZFNET_VERBOSE=1`. Any other error (a bug, or one from inside a library) keeps its
traceback. Commands that parse their own arguments (`visualize`) wrap their `main` in `errors_for_people`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Callable, Iterator

import jax
from absl import app, flags, logging

from zfnet_jax import config_lib
from zfnet_jax.data import sources
from zfnet_jax.training import loop

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
VERBOSE_ENV = 'ZFNET_VERBOSE'  # set to 1: tracebacks for known errors too
ERROR_EXIT_STATUS = 1
# The kinds of error the package raises with a message for people (FileNotFoundError, PermissionError,
# FileExistsError, TimeoutError are OSErrors; the package's own error classes subclass these). Its
# RuntimeErrors are broken invariants: they keep their traceback.
KNOWN_KINDS = (ValueError, OSError, FloatingPointError, ImportError, sources.DatasetNotFoundError)


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None], takes_arguments: bool = False) -> None:
  """Defines the flags (and `--verbose`), parses them with `config_lib.parse_flags` and calls `main(argv)`
  with absl logging at WARNING (tfds and Orbax log every file they touch at INFO), inside
  `errors_for_people`. Without `takes_arguments`, a positional argument is a usage error."""
  define_flags()
  flags.DEFINE_bool('verbose', False, f'Print the traceback of known errors too (or set {VERBOSE_ENV}=1).')

  def checked(argv: list[str]) -> None:
    if not takes_arguments and len(argv) > 1:
      raise app.UsageError(f'unexpected arguments {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    with errors_for_people(flags.FLAGS.verbose):
      main(argv)
  app.run(checked, flags_parser=config_lib.parse_flags)


def is_known(error: BaseException) -> bool:
  """Whether `error` is one the package raised itself for people: a `KNOWN_KINDS` error raised by a `raise`
  statement in `zfnet_jax`. An error from inside a library, from an operation (`int('x')`), or of another
  kind (a `KeyError`, a `ZeroDivisionError`) is a bug or unforeseen: it keeps its traceback."""
  frames = traceback.extract_tb(error.__traceback__)
  return (isinstance(error, KNOWN_KINDS) and bool(frames) and (frames[-1].line or '').startswith('raise ')
          and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep))


@contextlib.contextmanager
def errors_for_people(verbose: bool = False) -> Iterator[None]:
  """A known error inside (`is_known`) becomes `error: MESSAGE` on stderr and exit status 1
  (`ERROR_EXIT_STATUS`); with `verbose` or `ZFNET_VERBOSE=1`, after its traceback. Other errors pass.

    with cli.errors_for_people('--verbose' in sys.argv):
      main(...)
  """
  try:
    yield
  except Exception as e:  # noqa: BLE001  (sorted by is_known; the rest re-raised as they are)
    if not is_known(e):
      raise
    if verbose or os.environ.get(VERBOSE_ENV, '') not in ('', '0'):
      traceback.print_exc()
    print(f'error: {e}', file=sys.stderr, flush=True)
    raise SystemExit(ERROR_EXIT_STATUS) from None


def define_multihost_flags() -> None:
  """`--distributed`, or `--coordinator_address --num_processes --process_id` by hand."""
  flags.DEFINE_bool('distributed', False, 'Multi-host: call jax.distributed.initialize() '
                    '(auto-detected on TPU VMs and SLURM).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-host by hand: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host by hand: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host by hand: this process\'s index.')


def start_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, distributed: bool | None = None) -> None:
  """Joins the other processes named by the multi-host flags (gloo collectives for CPU processes standing in
  for hosts); nothing without them. Without arguments, reads the absl flags (`define_multihost_flags`); a
  command with its own parser (`visualize`) passes the values of `add_multihost_arguments`'s options."""
  if coordinator_address is None and distributed is None:
    f = flags.FLAGS
    coordinator_address, num_processes, process_id, distributed = (
        f.coordinator_address, f.num_processes, f.process_id, f.distributed)
  if coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif distributed:
    jax.distributed.initialize()


def add_multihost_arguments(parser: argparse.ArgumentParser) -> None:
  """`define_multihost_flags` for an argparse parser; pass the values to `start_multihost`."""
  parser.add_argument('--distributed', action='store_true', help='Multi-host: call jax.distributed.initialize() '
                      '(auto-detected on TPU VMs and SLURM).')
  parser.add_argument('--coordinator_address', help='Multi-host by hand: host:port of process 0.')
  parser.add_argument('--num_processes', type=int, help='Multi-host by hand: number of processes.')
  parser.add_argument('--process_id', type=int, help='Multi-host by hand: this process\'s index.')


@contextlib.contextmanager
def exit_when_preempted() -> Iterator[None]:
  """A `loop.Preempted` inside becomes its message and exit status 75 (`loop.PREEMPTED_EXIT_STATUS`): the same
  command resumes."""
  try:
    yield
  except loop.Preempted as e:
    print(e, flush=True)
    raise SystemExit(loop.PREEMPTED_EXIT_STATUS) from None
