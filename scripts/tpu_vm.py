"""Train on a Cloud TPU VM (one host or a pod slice): create it, copy this repo, run on every worker, fetch logs.

  python scripts/tpu_vm.py create --name zf --zone us-central2-b --accelerator v4-32
  python scripts/tpu_vm.py copy   --name zf --zone us-central2-b
  python scripts/tpu_vm.py run    --name zf --zone us-central2-b -- --config configs/default.py \\
      --workdir /mnt/shared/zfnet --config.dataset.data_dir /mnt/shared/tensorflow_datasets
  python scripts/tpu_vm.py logs   --name zf --zone us-central2-b --to runs/zf_logs
  python scripts/tpu_vm.py delete --name zf --zone us-central2-b

`--dry-run` prints the exact commands instead of running them. `copy` sends the committed tree (`git archive`).
`run` starts `python -m zfnet_jax.train ... --distributed` on all workers at once (each worker is one JAX process;
`jax.distributed.initialize()` finds the others), in the background under nohup with its output in
~/zfnet_train.log, so a dropped SSH session does not stop training; re-running `run` after a preemption
resumes from the latest checkpoint in the workdir. The workdir and data dir must be storage every worker
sees at the same path (e.g. a gcsfuse-mounted bucket or a Filestore NFS share).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = 'zfnet_jax'
LOG = 'zfnet_train.log'


def commands(args: argparse.Namespace) -> list[list[str]]:
  """The gcloud commands for `args.action`, as argument lists."""
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [args.name, f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
  ssh = tpu + ['ssh'] + where + ['--worker=all', '--command']
  if args.action == 'create':
    return [tpu + ['create'] + where + [f'--accelerator-type={args.accelerator}', f'--version={args.version}']
            + (['--preemptible'] if args.preemptible else [])]
  if args.action == 'copy':  # the committed tree (git archive), not local venvs or runs
    tarball = os.path.join('/tmp', f'{REMOTE_DIR}.tar.gz')
    install = (f'mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_DIR}.tar.gz -C {REMOTE_DIR} && cd {REMOTE_DIR} && '
               f'python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "jax[tpu]==0.10.2"')
    return [['git', '-C', REPO, 'archive', '--format=tar.gz', '-o', tarball, 'HEAD'],
            tpu + ['scp', tarball, f'{args.name}:~/'] + where[1:] + ['--worker=all'],
            ssh + [install]]
  if args.action == 'run':
    train = ' '.join(shlex.quote(a) for a in ['.venv/bin/python', '-m', 'zfnet_jax.train', *args.train_args,
                                                '--distributed'])
    return [ssh + [f'cd {REMOTE_DIR} && nohup {train} > ~/{LOG} 2>&1 &']]
  if args.action == 'logs':
    return [['mkdir', '-p', args.to],
            tpu + ['scp', f'{args.name}:~/{LOG}', os.path.join(args.to, LOG)] + where[1:] + ['--worker=0']]
  return [tpu + ['delete'] + where + ['--quiet']]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('action', choices=['create', 'copy', 'run', 'logs', 'delete'])
  parser.add_argument('--name', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', default=None)
  parser.add_argument('--accelerator', default='v4-8', help='accelerator type, for create (e.g. v4-32, v5litepod-16)')
  parser.add_argument('--version', default='tpu-ubuntu2204-base', help='TPU VM software version, for create')
  parser.add_argument('--preemptible', action='store_true', help='for create')
  parser.add_argument('--to', default='runs/tpu_logs', help='local folder for logs')
  parser.add_argument('--dry-run', action='store_true', help='print the commands instead of running them')
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index('--') if '--' in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.train_args = argv[split + 1:]  # after --: arguments for python -m zfnet_jax.train
  if args.action == 'run' and not any(a.startswith('--config') for a in args.train_args):
    parser.error('run needs the training arguments after --, e.g. -- --config configs/default.py --workdir DIR')
  for cmd in commands(args):
    print(' '.join(shlex.quote(c) for c in cmd), flush=True)
    if not args.dry_run:
      subprocess.run(cmd, check=True)


if __name__ == '__main__':
  main()
