"""The plain PyTorch ZFNet the reference scripts time (`reference_attribution.py`, `reference_featurevis.py`): the
network of configs/default.py (7x7/2/3, 5x5/2/2, 3x3/1/1 x3, floor 3x3/2 pooling, fc 4096-4096-1000)."""
import torch.nn as nn


def zfnet() -> nn.Sequential:
  return nn.Sequential(
      nn.Conv2d(3, 96, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(96, 256, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(), nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(),
      nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
      nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))
