"""pytorchcv's (imgclsmob's) ZFNet/AlexNet state-dict layout.

pytorchcv builds its ZFNet and AlexNet with one class: conv stages, each a run of conv units closed by a
max-pool, then an output block of two hidden dense layers and the classifier. Its state dict names
`conv{n}` `features.stage{s}.unit{u}.conv.{weight,bias}` (stage s ends at the s-th pooled conv layer,
units count within a stage: ZFNet's conv3-5 are `stage3.unit1-3`), `fc6`/`fc7` `output.fc1.fc.*` /
`output.fc2.fc.*` and `fc8` `output.fc3.*`. PyTorch's layouts (OIHW kernels, [out, in] dense kernels,
fc6's input flattened C,H,W) are `foreign`'s. Weights carry no record of padding, pooling mode or
normalisation: the config must describe the source network (`configs/zfnet_paper.py` is pytorchcv's
`zfnet`, `configs/alexnet_pytorchcv.py` its `alexnet`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zfnet_jax.model import foreign, network


def layer_names(arch: network.Architecture) -> dict[str, str]:
  """pytorchcv's module name of each layer: `{'conv1': 'features.stage1.unit1.conv', ..., 'fc8': 'output.fc3'}`.

  Raises:
    foreign.NotExpressibleError: the last conv layer is not pooled, or fc6 or fc7 is removed.
  """
  last = arch.convs[-1]
  if not last.pool:
    raise foreign.NotExpressibleError(
        f'pytorchcv closes every conv stage with a max-pool, but the last conv layer, {last.name}, is not pooled: '
        f'add {last.layer} to config.model.pool_layers')
  if tuple(n for n, _ in arch.fcs) != (6, 7):
    raise foreign.NotExpressibleError(
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


def state_dict_shapes(arch: network.Architecture) -> dict[str, tuple[int, ...]]:
  """Every key of `arch`'s pytorchcv state dict with its PyTorch shape."""
  return foreign.state_dict_shapes(arch, layer_names(arch))


def to_state_dict(params: Any, arch: network.Architecture) -> dict[str, np.ndarray]:
  """Flax params of `arch` -> pytorchcv's state dict (float32 NumPy arrays in PyTorch's layouts)."""
  return foreign.to_state_dict(params, arch, layer_names(arch))


def from_state_dict(tensors: Mapping[str, Any], arch: network.Architecture,
                    source: str = 'the state dict') -> dict[str, dict[str, np.ndarray]]:
  """pytorchcv's state dict (arrays in PyTorch's layouts) -> float32 Flax params for `arch`.

  Raises:
    foreign.NotExpressibleError: `arch` has no pytorchcv state dict.
    foreign.StateDictMismatchError: naming every missing or extra key and every wrong shape (file vs config).
  """
  return foreign.from_state_dict(tensors, arch, layer_names(arch), source)
