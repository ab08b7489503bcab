"""Weights in and out of this codebase, in pytorchcv's (imgclsmob's) ZFNet/AlexNet state-dict naming.

  python -m zfnet_jax.convert import --from zfnet.pth --config configs/zfnet_paper.py --workdir runs/zfnet_pytorchcv
  python -m zfnet_jax.convert export --config configs/digits.py --workdir runs/digits --out digits.safetensors

pytorchcv builds its ZFNet and AlexNet with one class: conv stages, each a run of conv units closed by a
max-pool, then an output block of two hidden dense layers and the classifier. Its state dict names
`conv{n}` `features.stage{s}.unit{u}.conv.{weight,bias}` (stage s ends at the s-th pooled conv layer,
units count within a stage: ZFNet's conv3-5 are `stage3.unit1-3`), `fc6`/`fc7` `output.fc1.fc.*` /
`output.fc2.fc.*` and `fc8` `output.fc3.*`. Layouts: conv kernels are OIHW there and HWIO here, dense
kernels [out, in] there and [in, out] here, and fc6's input is the last pooled map flattened C,H,W there
and H,W,C here.

`import` reads `.pth`/`.pt` (PyTorch, imported only then) or `.safetensors` and writes step 0 of an Orbax
checkpoint (the weights and a fresh optimiser state) that train fine-tunes from and evaluate, predict and
visualize read as they are. Weights carry no record of padding, pooling mode or normalisation, so the
config must describe the source network exactly: `configs/zfnet_paper.py` is pytorchcv's `zfnet`.
`export` writes `.safetensors` with the config and the architecture as metadata; importing such a file
checks that architecture against the config's.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zfnet_jax import config_lib
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, optim, steps

TORCH_SUFFIXES = ('.pth', '.pt')
SAFETENSORS_SUFFIX = '.safetensors'
FORWARD_IRRELEVANT = ('dropout_rate',)  # architecture fields an imported file may differ in


class StateDictMismatchError(ValueError):
  """A state dict whose keys or shapes differ from those of the config's network."""


class NotExpressibleError(ValueError):
  """The config's network has no state dict in pytorchcv's naming."""


def layer_names(arch: network.Architecture) -> dict[str, str]:
  """pytorchcv's module name of each layer: `{'conv1': 'features.stage1.unit1.conv', ..., 'fc8': 'output.fc3'}`."""
  last = arch.convs[-1]
  if not last.pool:
    raise NotExpressibleError(
        f'pytorchcv closes every conv stage with a max-pool, but the last conv layer, {last.name}, is not pooled: '
        f'add {last.layer} to config.model.pool_layers')
  if tuple(n for n, _ in arch.fcs) != (6, 7):
    raise NotExpressibleError(
        f'pytorchcv\'s output block has two hidden dense layers (output.fc1, output.fc2) before the classifier '
        f'(output.fc3), but this network has fc layers {[n for n, _ in arch.fcs]} before fc8 '
        f'(config.model.remove_layers): it has no pytorchcv state dict')
  names, stage, unit = {}, 1, 0
  for c in arch.convs:
    unit += 1
    names[c.name] = f'features.stage{stage}.unit{unit}.conv'
    if c.pool:
      stage, unit = stage + 1, 0
  names.update({'fc6': 'output.fc1.fc', 'fc7': 'output.fc2.fc', 'fc8': 'output.fc3'})
  return names


def _last_map(arch: network.Architecture) -> tuple[int, int, int]:
  """`(H, W, C)` of the last pooled map, the input of fc6."""
  size = arch.map_sizes()[arch.convs[-1].name][1]
  return size, size, arch.convs[-1].features


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """HWIO -> OIHW for conv kernels, [in, out] -> [out, in] for dense kernels; biases unchanged."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return o, i, h, w
  return tuple(reversed(flax_shape))


def state_dict_shapes(arch: network.Architecture) -> dict[str, tuple[int, ...]]:
  """Every key of `arch`'s state dict in pytorchcv's naming, with its PyTorch shape."""
  names = layer_names(arch)
  params = jax.eval_shape(functools.partial(network.init_params, network.ConvNet(arch)), jax.random.key(0))
  return {f'{names[layer]}.{torch_leaf}': _torch_shape(params[layer][flax_leaf].shape)
          for layer in names for torch_leaf, flax_leaf in (('weight', 'kernel'), ('bias', 'bias'))}


def to_state_dict(params: Any, arch: network.Architecture) -> dict[str, np.ndarray]:
  """Flax params -> float32 PyTorch-layout arrays in pytorchcv's naming."""
  h, w, c = _last_map(arch)
  out = {}
  for layer, prefix in layer_names(arch).items():
    kernel = np.asarray(params[layer]['kernel'], np.float32)
    if kernel.ndim == 4:
      weight = kernel.transpose(3, 2, 0, 1)
    elif layer == 'fc6':
      weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
    else:
      weight = kernel.T
    out[f'{prefix}.weight'] = np.ascontiguousarray(weight)
    out[f'{prefix}.bias'] = np.asarray(params[layer]['bias'], np.float32)
  return out


def _mismatches(tensors: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> list[str]:
  problems = [f'  missing key {k}: the config needs {list(s)}' for k, s in expected.items() if k not in tensors]
  problems += [f'  extra key {k} {list(v.shape)}: the config\'s network has no such parameter'
               for k, v in tensors.items() if k not in expected]
  problems += [f'  {k}: the file has {list(tensors[k].shape)}, the config needs {list(s)}'
               for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != s]
  return problems


def from_state_dict(tensors: Mapping[str, np.ndarray], arch: network.Architecture,
                    source: str = 'the state dict') -> dict[str, dict[str, np.ndarray]]:
  """PyTorch-layout arrays in pytorchcv's naming -> float32 Flax params for `arch`.

  Raises:
    StateDictMismatchError: naming every missing or extra key and every wrong shape (file vs config).
  """
  expected = state_dict_shapes(arch)
  problems = _mismatches(tensors, expected)
  h, w, c = _last_map(arch)
  if problems:
    raise StateDictMismatchError(
        f'{source} does not match the config\'s network:\n' + '\n'.join(problems) +
        f'\nThe config must describe the source network: config.model.conv_features, conv_kernels, '
        f'fc_features, num_classes, in_channels, remove_layers; fc6 takes the last map flattened, '
        f'{c} x {h} x {w} = {c * h * w} here, set by image_size, conv_paddings/strides, pool_layers and pool_mode.')
  params = {}
  for layer, prefix in layer_names(arch).items():
    weight = np.asarray(tensors[f'{prefix}.weight'], np.float32)
    if weight.ndim == 4:
      kernel = weight.transpose(2, 3, 1, 0)
    elif layer == 'fc6':
      kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    else:
      kernel = weight.T
    params[layer] = {'kernel': np.ascontiguousarray(kernel),
                     'bias': np.asarray(tensors[f'{prefix}.bias'], np.float32)}
  return params


def _import_torch():
  try:
    import torch
  except ImportError:
    raise ImportError('reading .pth/.pt files needs PyTorch: `pip install torch` (the CPU build is enough), or '
                      'convert the file to .safetensors where PyTorch is installed') from None
  return torch


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """`(tensors, metadata)` of a `.safetensors` file, or of a `.pth`/`.pt` PyTorch state dict (no metadata)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no weights file {path!r}')
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors import safe_open
    with safe_open(path, framework='np') as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  if path.endswith(TORCH_SUFFIXES):
    torch = _import_torch()
    state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
      raise ValueError(f'{path} is not a state dict (a mapping of parameter names to tensors): save '
                       f'`model.state_dict()` with torch.save')
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}, {}
  raise ValueError(f'{path}: weights files are {", ".join(TORCH_SUFFIXES)} (PyTorch) or {SAFETENSORS_SUFFIX}')


def _flat(arch: dict[str, Any]) -> dict[str, Any]:
  """An architecture dict with each conv layer's fields as their own entries: `{'conv1.lrn': True, ...}`."""
  flat = {k: v for k, v in arch.items() if k != 'convs'}
  flat.update({f'conv{c["layer"]}.{k}': v for c in arch['convs'] for k, v in c.items() if k != 'layer'})
  return flat


def check_metadata(metadata: Mapping[str, str], arch: network.Architecture, path: str) -> None:
  """Raises `ArchitectureMismatchError` if a file exported here holds another architecture than `arch`."""
  if 'architecture' not in metadata:
    return
  saved, current = _flat(json.loads(metadata['architecture'])), _flat(json.loads(json.dumps(arch.to_dict())))
  lines = [f'  {k}: file {saved.get(k)!r} vs config {current.get(k)!r}'
           for k in sorted(saved.keys() | current.keys())
           if k not in FORWARD_IRRELEVANT and saved.get(k) != current.get(k)]
  if lines:
    raise checkpointing.ArchitectureMismatchError(
        f'{path} was exported from a different network than the config describes:\n' + '\n'.join(lines) +
        '\nImport it with the config it was exported with (its metadata field "config" holds it).')


def import_weights(path: str, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the weights of `path` as step 0 of a checkpoint in the fresh `workdir`.

  Everything is read and checked before the workdir is touched: a failed import writes nothing.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f'{ckpt_dir} already holds checkpoints; nothing was imported. Import into a fresh '
                          f'--workdir (train, evaluate and predict read the latest checkpoint of a workdir).')
  model = network.create_model(config)
  tensors, metadata = read_state_dict(path)
  check_metadata(metadata, model.arch, path)
  params = from_state_dict(tensors, model.arch, path)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  # the schedule only shapes the optimiser state here; train builds the real one when it resumes
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  checkpointing.save(mngr, 0, state, model.arch)
  mngr.wait_until_finished()
  mngr.close()


def export_weights(config: ml_collections.ConfigDict, workdir: str, out: str) -> int:
  """Writes the latest checkpoint of `workdir` to `out` (`.safetensors`); returns its step."""
  if not out.endswith(SAFETENSORS_SUFFIX):
    raise ValueError(f'--out {out!r}: export writes {SAFETENSORS_SUFFIX} files (PyTorch loads them with '
                     f'safetensors.torch.load_file)')
  from safetensors.numpy import save_file
  model, params, step = checkpointing.load_params(config, workdir)
  tensors = to_state_dict(params, model.arch)
  metadata = {'format': 'pt', 'config': config.to_json(), 'architecture': json.dumps(model.arch.to_dict()),
              'checkpoint_step': str(step)}
  tmp = out + '.tmp'
  save_file(tensors, tmp, metadata=metadata)
  os.replace(tmp, out)
  return step


USAGE = ('usage:\n  python -m zfnet_jax.convert import --from FILE.pth|.pt|.safetensors --config CFG --workdir DIR\n'
         '  python -m zfnet_jax.convert export --config CFG --workdir DIR --out FILE.safetensors')


def main(argv: list[str]) -> None:
  from absl import app, flags, logging
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  command = argv[1:]
  if command not in (['import'], ['export']):
    raise app.UsageError(f'expected one command, import or export; got {command}\n{USAGE}')
  if command == ['import']:
    if not FLAGS['from'].value:
      raise app.UsageError(f'import needs --from FILE\n{USAGE}')
    import_weights(FLAGS['from'].value, FLAGS.config, FLAGS.workdir)
    print(f'Imported {FLAGS["from"].value} as step 0 of {os.path.join(FLAGS.workdir, "checkpoints")}')
  else:
    if not FLAGS.out:
      raise app.UsageError(f'export needs --out FILE.safetensors\n{USAGE}')
    step = export_weights(FLAGS.config, FLAGS.workdir, FLAGS.out)
    print(f'Exported step {step} of {FLAGS.workdir} to {FLAGS.out}')


def _define_flags() -> None:
  from absl import flags
  config_lib.define_config_flag('The config that describes the network, e.g. '
                                'configs/zfnet_paper.py for pytorchcv\'s zfnet.')
  flags.DEFINE_string('workdir', None, 'import: a fresh workdir to write the checkpoint to; export: the '
                      'workdir whose latest checkpoint is exported.', required=True)
  flags.DEFINE_string('from', None, 'import: the .pth/.pt or .safetensors file to read.')
  flags.DEFINE_string('out', None, 'export: the .safetensors file to write.')


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
