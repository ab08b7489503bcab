"""PyTorch state-dict layouts in general: what every foreign naming of this network shares.

A foreign layout (`pytorchcv`, `torchvision_alexnet`) says only which module name each layer of
an `Architecture` has, e.g. `{'conv1': 'features.stage1.unit1.conv', ..., 'fc8': 'output.fc3'}`, and
refuses a network it cannot express. Everything else is PyTorch's and lives here: parameters are
`{module}.weight` and `{module}.bias`; conv kernels are OIHW there and HWIO here, dense kernels [out, in]
there and [in, out] here, and the first dense layer takes the last conv map flattened C,H,W there and
H,W,C here. Arrays are float32 NumPy both ways.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import numpy as np

from zfnet_jax.model import network

LEAVES = (('weight', 'kernel'), ('bias', 'bias'))  # (PyTorch's name, Flax's name) of each layer's parameters


class StateDictMismatchError(ValueError):
  """A state dict whose keys or shapes differ from those of the config's network."""


class NotExpressibleError(ValueError):
  """The config's network has no state dict in the layout asked for."""


def last_map(arch: network.Architecture) -> tuple[int, int, int]:
  """`(H, W, C)` of the last conv map (after its pool, if any): the input of the first dense layer."""
  size = arch.map_sizes()[arch.convs[-1].name][1]
  return size, size, arch.convs[-1].features


def first_dense(arch: network.Architecture) -> str:
  """The layer that flattens the last conv map: `fc6`, or the first hidden layer or `fc8` of an ablation."""
  return f'fc{arch.fcs[0][0]}' if arch.fcs else 'fc8'


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """HWIO -> OIHW for conv kernels, [in, out] -> [out, in] for dense kernels; biases unchanged."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return o, i, h, w
  return tuple(reversed(flax_shape))


def to_torch_kernel(kernel: np.ndarray, flattened_map: tuple[int, int, int] | None = None) -> np.ndarray:
  """A Flax kernel in PyTorch's layout: HWIO `[k, k, I, O]` -> OIHW `[O, I, k, k]`, `[D, F]` -> `[F, D]`.

  `flattened_map` `(H, W, C)`: the kernel's `D = H * W * C` inputs are a map flattened H,W,C; they come
  out in PyTorch's C,H,W order.
  """
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim == 4:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
  if flattened_map is not None:
    h, w, c = flattened_map
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
  return np.ascontiguousarray(kernel.T)


def from_torch_kernel(weight: np.ndarray, flattened_map: tuple[int, int, int] | None = None) -> np.ndarray:
  """The inverse of `to_torch_kernel`: OIHW -> HWIO, `[F, D]` -> `[D, F]` (inputs C,H,W -> H,W,C order)."""
  weight = np.asarray(weight, np.float32)
  if weight.ndim == 4:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
  kernel = weight.T
  if flattened_map is not None:
    h, w, c = flattened_map
    kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
  return np.ascontiguousarray(kernel)


def state_dict_shapes(arch: network.Architecture, names: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
  """Every key of `arch`'s state dict under the module `names` of its layers, with its PyTorch shape."""
  params = jax.eval_shape(functools.partial(network.init_params, network.ConvNet(arch)), jax.random.key(0))
  return {f'{names[layer]}.{torch_leaf}': torch_shape(params[layer][flax_leaf].shape)
          for layer in names for torch_leaf, flax_leaf in LEAVES}


def to_state_dict(params: Any, arch: network.Architecture, names: Mapping[str, str]) -> dict[str, np.ndarray]:
  """Flax params of `arch` -> float32 PyTorch-layout arrays, keyed `{names[layer]}.weight` / `.bias`."""
  flattens = {first_dense(arch): last_map(arch)}
  out = {}
  for layer, module in names.items():
    out[f'{module}.weight'] = to_torch_kernel(params[layer]['kernel'], flattens.get(layer))
    out[f'{module}.bias'] = np.asarray(params[layer]['bias'], np.float32)
  return out


def mismatches(tensors: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
  """One line for each key missing from `tensors`, each extra key, and each shape that differs from `expected`."""
  problems = [f'  missing key {k}: the config needs {list(s)}' for k, s in expected.items() if k not in tensors]
  problems += [f'  extra key {k} {list(v.shape)}: the config\'s network has no such parameter'
               for k, v in tensors.items() if k not in expected]
  problems += [f'  {k}: the file has {list(tensors[k].shape)}, the config needs {list(s)}'
               for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(s)]
  return problems


def from_state_dict(tensors: Mapping[str, Any], arch: network.Architecture, names: Mapping[str, str],
                    source: str = 'the state dict') -> dict[str, dict[str, np.ndarray]]:
  """PyTorch-layout arrays keyed by the module `names` of `arch`'s layers -> float32 Flax params for `arch`.

  Raises:
    StateDictMismatchError: naming every missing or extra key and every wrong shape (file vs config).
  """
  problems = mismatches(tensors, state_dict_shapes(arch, names))
  h, w, c = last_map(arch)
  if problems:
    raise StateDictMismatchError(
        f'{source} does not match the config\'s network:\n' + '\n'.join(problems) +
        f'\nThe config must describe the source network: config.model.conv_features, conv_kernels, '
        f'fc_features, num_classes, in_channels, remove_layers; {first_dense(arch)} takes the last map flattened, '
        f'{c} x {h} x {w} = {c * h * w} here, set by image_size, conv_paddings/strides, pool_layers and pool_mode.')
  flattens = {first_dense(arch): (h, w, c)}
  return {layer: {'kernel': from_torch_kernel(tensors[f'{module}.weight'], flattens.get(layer)),
                  'bias': np.asarray(tensors[f'{module}.bias'], np.float32)}
          for layer, module in names.items()}
