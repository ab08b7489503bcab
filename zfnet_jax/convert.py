"""Weights in and out of this codebase, in pytorchcv's (imgclsmob's) ZFNet/AlexNet or torchvision's AlexNet
state-dict layout.

  python -m zfnet_jax.convert import --from zfnet.pth --config configs/zfnet_paper.py --workdir runs/zfnet_pytorchcv
  python -m zfnet_jax.convert import --from alexnet.pth --config configs/alexnet_torchvision.py --workdir runs/tv
  python -m zfnet_jax.convert export --config configs/digits.py --workdir runs/digits --out digits.safetensors

`import` reads `.pth`/`.pt` (needs PyTorch) or `.safetensors` and writes step 0 of a checkpoint in a fresh
workdir, which train fine-tunes from and evaluate, predict and visualize read; the config must describe
the source network exactly (`configs/zfnet_paper.py` is pytorchcv's `zfnet`, `configs/alexnet_torchvision.py`
torchvision's `alexnet`); the layout is read from the file's key names. `export` writes the latest checkpoint
as `.safetensors` in `--layout` (default pytorchcv) with the config and architecture as metadata. The library:
`training.weights` (files and checkpoints), `model.pytorchcv` and `model.torchvision_alexnet` (the layouts).
"""
from __future__ import annotations

from absl import app, flags

from zfnet_jax import cli, config_lib
from zfnet_jax.training import weights

USAGE = ('usage:\n  python -m zfnet_jax.convert import --from FILE.pth|.pt|.safetensors --config CFG --workdir DIR\n'
         '  python -m zfnet_jax.convert export [--layout pytorchcv|torchvision] --config CFG --workdir DIR '
         '--out FILE.safetensors')


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  command = argv[1:]
  if command not in (['import'], ['export']):
    raise app.UsageError(f'expected one command, import or export; got {command}\n{USAGE}')
  if command == ['import']:
    if not FLAGS['from'].value:
      raise app.UsageError(f'import needs --from FILE\n{USAGE}')
    ckpt_dir = weights.import_weights(FLAGS['from'].value, FLAGS.config, FLAGS.workdir)
    print(f'Imported {FLAGS["from"].value} as step 0 of {ckpt_dir}')
  else:
    if not FLAGS.out:
      raise app.UsageError(f'export needs --out FILE.safetensors\n{USAGE}')
    step = weights.export_weights(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.layout)
    print(f'Exported step {step} of {FLAGS.workdir} to {FLAGS.out}')


def define_flags() -> None:
  config_lib.define_config_flag('The config that describes the network, e.g. '
                                'configs/zfnet_paper.py for pytorchcv\'s zfnet.')
  flags.DEFINE_string('workdir', None, 'import: a fresh workdir to write the checkpoint to; export: the '
                      'workdir whose latest checkpoint is exported.', required=True)
  flags.DEFINE_string('from', None, 'import: the .pth/.pt or .safetensors file to read.')
  flags.DEFINE_string('out', None, 'export: the .safetensors file to write.')
  flags.DEFINE_enum('layout', 'pytorchcv', ['pytorchcv', 'torchvision'], 'export: the state-dict naming to write '
                    '(torchvision: torchvision.models.alexnet\'s features/classifier); import reads it from the file.')


if __name__ == '__main__':
  cli.run(main, define_flags, takes_arguments=True)
