"""lucent's feature visualisation on a plain PyTorch ZFNet: the reference `benchmarks/featurevis.py` times against.

Runs in a venv of its own (never a dependency of the package). lucent (PyPI `torch-lucent`, last released 2021)
pins an old kornia and imports torchvision only for `transforms.Normalize`; PyPI's torchvision wheels are built
for CUDA torch, so beside the CPU torch wheel this script gives lucent that one class itself when torchvision is
missing (the same per-channel `(x - mean) / std`):
  python3 -m venv /tmp/reflucent && /tmp/reflucent/bin/pip install torch==2.13.0 numpy pillow tqdm ipython decorator
  /tmp/reflucent/bin/pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1
  /tmp/reflucent/bin/python scripts/reference_featurevis.py [--units 16] [--steps 32] [--size 224]
Prints one JSON line with `units_x_steps_per_s`: `lucent.optvis.render.render_vis` maximising, per image, the mean
of one channel of layer 5 (conv5, ReLU, max-pool, as the package numbers layers), channels 0..U-1 as one batch of
U images (`Objective.sum` of `objectives.channel(..., batch=i)`); `param.image(size, batch=U)` (Fourier, 1/f,
decorrelated colour, sigmoid); lucent's `standard_transforms` (which leave the image padded and scaled, 249-273 px
at size 224: lucent does not crop back); ImageNet normalisation; Adam lr 0.05; `--steps` steps, timed after a
warm-up render of `--warmup` steps. The network is that of configs/default.py (7x7/2/3, 5x5/2/2, 3x3/1/1 x3,
floor 3x3/2 pooling, fc 4096-4096-1000, random weights); on the larger input it stops at the first fc layer
(lucent catches that error, as for any model) after layer 5 has been hooked. `python -m zfnet_jax.benchmark
featurevis` runs it when ZFNET_REFERENCE_PYTHON names this venv's python.
"""
import argparse
import json
import sys
import time
import types

import torch
from reference_zfnet import zfnet  # scripts/, beside this file

LAYER5 = '12'  # lucent's hook name of layer 5's output (conv5, ReLU, max-pool) in the Sequential below



def _normalize_without_torchvision() -> None:
  """Gives lucent `torchvision.transforms.Normalize` (all it imports of torchvision) where torchvision is absent."""
  try:
    import torchvision.transforms  # noqa: F401
    return
  except ImportError:
    pass

  class Normalize:
    def __init__(self, mean, std):
      self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def __call__(self, image):  # [C, H, W]
      return (image - self.mean) / self.std

  vision, transforms = types.ModuleType('torchvision'), types.ModuleType('torchvision.transforms')
  transforms.Normalize, vision.transforms = Normalize, transforms
  sys.modules.update({'torchvision': vision, 'torchvision.transforms': transforms})


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--units', type=int, default=16)
  ap.add_argument('--steps', type=int, default=32)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--size', type=int, default=224)
  a = ap.parse_args()
  _normalize_without_torchvision()
  import warnings

  import lucent
  from lucent.optvis import objectives, param, render
  torch.manual_seed(0)
  model = zfnet().eval()
  objective = objectives.Objective.sum([objectives.channel(LAYER5, u, batch=u) for u in range(a.units)])

  def render_steps(steps: int) -> None:
    render.render_vis(model, objective, lambda: param.image(a.size, batch=a.units), thresholds=(steps,),
                      progress=False, show_image=False)

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # 'Some layers could not be computed': the fc layers, which the objective skips
    render_steps(a.warmup)
    start = time.perf_counter()
    render_steps(a.steps)
    seconds = time.perf_counter() - start
  print(json.dumps({'reference': 'lucent', 'lucent': lucent.__version__, 'torch': torch.__version__,
                    'threads': torch.get_num_threads(), 'units': a.units, 'steps': a.steps, 'size': a.size,
                    'seconds': seconds, 'units_x_steps_per_s': a.units * a.steps / seconds}))


if __name__ == '__main__':
  main()
