"""Weights files in and out of checkpoints, in a PyTorch state-dict layout: pytorchcv's ZFNet/AlexNet
(`model.pytorchcv`) or torchvision's AlexNet (`model.torchvision_alexnet`).

`import_weights` reads `.pth`/`.pt` (PyTorch, imported only then, with `weights_only=True`: a file that
would run code when unpickled is refused) or `.safetensors`, finds the layout from its key names (or the
`layout` a file exported here records), and writes step 0 of an
Orbax checkpoint (the weights and a fresh optimiser state) that train fine-tunes from and evaluate,
predict and visualize read as they are. `export_weights` writes a workdir's latest checkpoint as
`.safetensors` with the config, the architecture and the step as metadata; importing such a file checks
its architecture against the config's with the one rule checkpoints use (`network.architecture_differences`).
Workdirs may be local or `gs://`; weights files are local.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zfnet_jax import paths
from zfnet_jax.model import foreign, network, pytorchcv, torchvision_alexnet
from zfnet_jax.training import checkpointing, optim, steps

TORCH_SUFFIXES = ('.pth', '.pt')
SAFETENSORS_SUFFIX = '.safetensors'
LAYOUTS = {'pytorchcv': pytorchcv.layer_names, 'torchvision': torchvision_alexnet.layer_names}  # name -> layer names


def layout_of(tensors: Mapping[str, object], metadata: Mapping[str, str], arch: network.Architecture) -> str:
  """The layout of a state dict: the one a file exported here records, else the one whose key names the file's
  keys share most (torchvision's `features.0.weight`..., pytorchcv's `features.stage1.unit1.conv.weight`...)."""
  if metadata.get('layout') in LAYOUTS:
    return metadata['layout']

  def shared(name: str) -> int:
    try:
      names = LAYOUTS[name](arch)
    except foreign.NotExpressibleError:
      names = {}
    return len({f'{m}.{leaf}' for m in names.values() for leaf, _ in foreign.LEAVES} & set(tensors))
  scores = {name: shared(name) for name in LAYOUTS}
  best = max(scores, key=scores.get)
  if scores[best] == 0 and any(k.startswith('features.') and k.split('.')[1].isdigit() for k in tensors):
    return 'torchvision'  # its names, for a network the torchvision layout cannot express: say why
  return best if scores[best] else 'pytorchcv'


def _local(path: str) -> None:
  if '://' in path:
    raise ValueError(f'{path}: weights files are read and written on local disk; copy it there first '
                     f'(e.g. `gcloud storage cp`)')


def _import_torch():
  try:
    import torch
  except ImportError:
    raise ImportError('reading .pth/.pt files needs PyTorch: `pip install torch` (the CPU build is enough), or '
                      'convert the file to .safetensors where PyTorch is installed') from None
  return torch


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """`(tensors, metadata)` of a `.safetensors` file, or of a `.pth`/`.pt` PyTorch state dict (no metadata)."""
  _local(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no weights file {path!r}')
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors import safe_open
    with safe_open(path, framework='np') as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  if path.endswith(TORCH_SUFFIXES):
    torch = _import_torch()
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)  # never plain pickle: no code runs
    except pickle.UnpicklingError as e:
      raise ValueError(f'{path} was refused: it holds more than tensors (PyTorch\'s weights_only loading found '
                       f'{str(e).splitlines()[0][:200]}). Only plain state dicts are read; nothing in it was run. '
                       f'Save `model.state_dict()` with torch.save, or convert it to .safetensors.') from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
      raise ValueError(f'{path} is not a state dict (a mapping of parameter names to tensors): save '
                       f'`model.state_dict()` with torch.save')
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}, {}
  raise ValueError(f'{path}: weights files are {", ".join(TORCH_SUFFIXES)} (PyTorch) or {SAFETENSORS_SUFFIX}')


def import_weights(path: str, config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the weights of `path` as step 0 of a checkpoint in the fresh `workdir`; returns its checkpoint
  directory.

  Everything is read and checked before the workdir is touched: a failed import writes nothing.

  Raises:
    FileExistsError: the workdir already holds checkpoints.
    checkpointing.ArchitectureMismatchError: a file exported here from another network than the config's.
    foreign.StateDictMismatchError, foreign.NotExpressibleError: the file's layout (`layout_of`) does not match
      the config's network, or cannot express it.
  """
  ckpt_dir = checkpointing.directory(workdir)
  if paths.listdir(ckpt_dir):
    raise FileExistsError(f'{ckpt_dir} already holds checkpoints; nothing was imported. Import into a fresh '
                          f'--workdir (train, evaluate and predict read the latest checkpoint of a workdir).')
  model = network.create_model(config)
  tensors, metadata = read_state_dict(path)
  if 'architecture' in metadata:  # exported here: the architecture it was exported from
    try:
      saved = json.loads(metadata['architecture'])
      differences = network.architecture_differences(saved, model.arch)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise ValueError(f'{path}: its metadata field "architecture" is not an architecture this codebase exports '
                       f'({type(e).__name__}: {e}); nothing was imported. Export the file again, or remove that field '
                       f'to import the tensors by the config alone.') from None
    if differences:
      raise checkpointing.ArchitectureMismatchError(
          f'{path} was exported from a different network than the config describes:\n  ' + '\n  '.join(differences)
          + '\nImport it with the config it was exported with (its metadata field "config" holds it).')
  layout = layout_of(tensors, metadata, model.arch)
  names = LAYOUTS[layout](model.arch)
  params = jax.tree_util.tree_map(jnp.asarray, foreign.from_state_dict(tensors, model.arch, names,
                                                                        f'{path} ({layout} layout)'))
  # the schedule only shapes the optimiser state here; train builds the real one when it resumes
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  mngr = checkpointing.manager(workdir, config.keep_checkpoints)
  checkpointing.save(mngr, 0, steps.state_from_params(params, tx), model.arch)
  mngr.wait_until_finished()
  mngr.close()
  return ckpt_dir


def export_weights(config: ml_collections.ConfigDict, workdir: str, out: str, layout: str = 'pytorchcv') -> int:
  """Writes the latest checkpoint of `workdir` to `out` (`.safetensors` in `layout`, one of `LAYOUTS`, recorded in
  its metadata); returns its step."""
  if layout not in LAYOUTS:
    raise ValueError(f'--layout {layout!r}: the layouts are {", ".join(LAYOUTS)}')
  _local(out)
  if not out.endswith(SAFETENSORS_SUFFIX):
    raise ValueError(f'--out {out!r}: export writes {SAFETENSORS_SUFFIX} files (PyTorch loads them with '
                     f'safetensors.torch.load_file)')
  from safetensors.numpy import save_file
  model, params, step = checkpointing.load_params(config, workdir)
  tensors = foreign.to_state_dict(params, model.arch, LAYOUTS[layout](model.arch))
  metadata = {'format': 'pt', 'layout': layout, 'config': config.to_json(),
              'architecture': json.dumps(model.arch.to_dict()), 'checkpoint_step': str(step)}
  tmp = out + '.tmp'
  save_file(tensors, tmp, metadata=metadata)
  os.replace(tmp, out)
  return step
