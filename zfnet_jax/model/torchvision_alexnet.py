"""torchvision's AlexNet state-dict layout (`torchvision.models.alexnet`, the `features`/`classifier` naming).

torchvision builds AlexNet as `features`, an `nn.Sequential` of conv, ReLU and (after conv1, conv2, conv5)
max-pool modules, then `avgpool` (`AdaptiveAvgPool2d((6, 6))`, no parameters) and `classifier`, a
Sequential of Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear. Its state dict names each module by its
index: `conv1` `features.0`, `conv2` `features.3`, `conv3-5` `features.6/8/10`; `fc6-8` `classifier.1/4/6`.
It has no LRN. The adaptive pool is the identity where the last map is already 6x6 (224-px input):
`configs/alexnet_torchvision.py` describes that network, and a network whose last map is not 6x6 is
refused rather than given an average pool the rest of the codebase (deconvnet, receptive fields) does not
model. PyTorch's layouts (OIHW kernels, fc6's input flattened C,H,W) are `foreign`'s.
"""
from __future__ import annotations

from zfnet_jax.model import foreign, network

POOLED_SIDE = 6  # AdaptiveAvgPool2d((6, 6)) before the classifier


def layer_names(arch: network.Architecture) -> dict[str, str]:
  """torchvision's module name of each layer: `{'conv1': 'features.0', ..., 'fc8': 'classifier.6'}`.

  Raises:
    foreign.NotExpressibleError: LRN, fc6 or fc7 removed, or a last conv map that is not 6x6.
  """
  if any(c.lrn for c in arch.convs):
    raise foreign.NotExpressibleError(
        'torchvision\'s AlexNet has no local response normalisation, but this network normalises '
        f'{[c.name for c in arch.convs if c.lrn]}: set config.model.lrn=False (configs/alexnet_torchvision.py)')
  if tuple(n for n, _ in arch.fcs) != (6, 7):
    raise foreign.NotExpressibleError(
        f'torchvision\'s AlexNet classifier has two hidden dense layers (classifier.1, classifier.4) before the '
        f'output (classifier.6), but this network has fc layers {[n for n, _ in arch.fcs]} before fc8')
  h, w, _ = foreign.last_map(arch)
  if (h, w) != (POOLED_SIDE, POOLED_SIDE):
    raise foreign.NotExpressibleError(
        f'torchvision\'s AlexNet average-pools the last conv map to {POOLED_SIDE}x{POOLED_SIDE} (adaptive), which this '
        f'codebase does not model: the config\'s last map is {h}x{w}. Use a config whose last map is already '
        f'{POOLED_SIDE}x{POOLED_SIDE}, e.g. configs/alexnet_torchvision.py (224-px input)')
  names, index = {}, 0
  for c in arch.convs:
    names[c.name] = f'features.{index}'
    index += 3 if c.pool else 2  # conv, ReLU[, MaxPool]
  names.update({'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6'})
  return names
