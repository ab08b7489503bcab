"""Captum's attribution methods on a plain PyTorch ZFNet: the reference `benchmarks/attribute.py` times against.

Runs in a venv of its own (never a dependency of the package):
  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 captum numpy
  /tmp/ref/bin/python scripts/reference_attribution.py [--steps 32] [--samples 16] [--runs 5]
Prints one JSON line `{method: maps_per_s, ...}`: one 224-px image per call, the class logit 0 as target, the
network of configs/default.py (7x7/2/3, 5x5/2/2, 3x3/1/1 x3, floor 3x3/2 pooling, fc 4096-4096-1000, random
weights). `python -m zfnet_jax.benchmark attribute` runs it when ZFNET_REFERENCE_PYTHON names this venv's python.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
from captum import attr


def zfnet() -> nn.Sequential:
  return nn.Sequential(
      nn.Conv2d(3, 96, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(96, 256, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(), nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(),
      nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
      nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=32)
  ap.add_argument('--samples', type=int, default=16)
  ap.add_argument('--runs', type=int, default=5)
  a = ap.parse_args()
  torch.manual_seed(0)
  m = zfnet().eval()
  x = torch.randn(1, 3, 224, 224)
  methods = {
      'deconvnet': lambda: attr.Deconvolution(m).attribute(x, target=0),
      'guided_backprop': lambda: attr.GuidedBackprop(m).attribute(x, target=0),
      'gradient': lambda: attr.Saliency(m).attribute(x, target=0, abs=False),
      'gradient_x_input': lambda: attr.InputXGradient(m).attribute(x, target=0),
      'integrated_gradients': lambda: attr.IntegratedGradients(m).attribute(
          x, baselines=0.0, target=0, n_steps=a.steps, method='riemann_middle', internal_batch_size=a.steps),
      'smoothgrad': lambda: attr.NoiseTunnel(attr.Saliency(m)).attribute(
          x, nt_type='smoothgrad', nt_samples=a.samples, nt_samples_batch_size=a.samples,
          stdevs=0.15 * float(x.max() - x.min()), target=0, abs=False),
      'gradcam': lambda: attr.LayerGradCam(m, m[11]).attribute(x, target=0, relu_attributions=True),
  }
  out = {'reference': 'captum', 'torch': torch.__version__, 'threads': torch.get_num_threads()}
  for name, fn in methods.items():
    fn()
    times = []
    for _ in range(a.runs):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    out[name] = 1 / statistics.median(times)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
