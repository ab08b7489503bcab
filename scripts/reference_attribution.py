"""Captum's attribution methods on a plain PyTorch ZFNet: the reference `benchmarks/attribute.py` times against.

Runs in a venv of its own (never a dependency of the package):
  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 captum numpy
  /tmp/ref/bin/python scripts/reference_attribution.py [--steps 32] [--samples 16] [--runs 5] [--batch 1]
Prints one JSON line `{method: maps_per_s, ...}`: `--batch` 224-px images per call (maps/s = batch / median time
per call), each with the class logit 0 as target, integrated gradients' steps and SmoothGrad's samples of every
image in one internal batch (as ours sends them down in one vjp), the
network of configs/default.py (7x7/2/3, 5x5/2/2, 3x3/1/1 x3, floor 3x3/2 pooling, fc 4096-4096-1000, random
weights). `python -m zfnet_jax.benchmark attribute` runs it when ZFNET_REFERENCE_PYTHON names this venv's python.
"""
import argparse
import json
import statistics
import time

import torch
from reference_zfnet import zfnet  # scripts/, beside this file
from captum import attr



def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=32)
  ap.add_argument('--samples', type=int, default=16)
  ap.add_argument('--runs', type=int, default=5)
  ap.add_argument('--batch', type=int, default=1)
  a = ap.parse_args()
  torch.manual_seed(0)
  m = zfnet().eval()
  x = torch.randn(a.batch, 3, 224, 224)
  target = torch.zeros(a.batch, dtype=torch.long)
  methods = {
      'deconvnet': lambda: attr.Deconvolution(m).attribute(x, target=target),
      'guided_backprop': lambda: attr.GuidedBackprop(m).attribute(x, target=target),
      'gradient': lambda: attr.Saliency(m).attribute(x, target=target, abs=False),
      'gradient_x_input': lambda: attr.InputXGradient(m).attribute(x, target=target),
      'integrated_gradients': lambda: attr.IntegratedGradients(m).attribute(
          x, baselines=0.0, target=target, n_steps=a.steps, method='riemann_middle',
          internal_batch_size=a.steps * a.batch),
      'smoothgrad': lambda: attr.NoiseTunnel(attr.Saliency(m)).attribute(
          x, nt_type='smoothgrad', nt_samples=a.samples, nt_samples_batch_size=a.samples,
          stdevs=0.15 * float(x.max() - x.min()), target=target, abs=False),
      'gradcam': lambda: attr.LayerGradCam(m, m[11]).attribute(x, target=target, relu_attributions=True),
  }
  out = {'reference': 'captum', 'torch': torch.__version__, 'threads': torch.get_num_threads()}
  for name, fn in methods.items():
    fn()
    times = []
    for _ in range(a.runs):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    out[name] = a.batch / statistics.median(times)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
