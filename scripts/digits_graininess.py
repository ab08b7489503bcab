"""How grainy a digits run's deconvnet pictures are: high-frequency energy of conv1 and of projections.

  python scripts/digits_graininess.py --config configs/digits.py --workdir runs/digits [--config.FIELD=V ...]

Prints, as one JSON line, the run's last test top-1 (metrics.jsonl) and two fractions of spectral energy
above `CUTOFF` cycles/px (an upsampled 8x8 digit holds nothing above 0.5 / 9 = 0.056 cycles/px of the 72-px
image): conv1's filters (each filter's DFT, energy-weighted over filters) and the layer-2 top-9 projections
of every unit over the test split (the picture `visualize report` draws). White noise scores about 0.8.
`--max_images N` reads only the first N test images (a quick look; the docstring of configs/digits.py
quotes whole-split numbers).
"""
import argparse
import json
import sys

import numpy as np

from zfnet_jax import config_lib
from zfnet_jax.data import pipeline, sources
from zfnet_jax.interpret import topk
from zfnet_jax.training import checkpointing, metric_writer

CUTOFF = 0.2  # cycles per pixel


def high_frequency_fraction(images: np.ndarray) -> float:
  """`[N, h, w]` -> the fraction of their total spectral energy (means removed) above `CUTOFF`."""
  images = images - images.mean(axis=(1, 2), keepdims=True)
  power = np.abs(np.fft.fft2(images)) ** 2
  fy, fx = np.meshgrid(np.fft.fftfreq(images.shape[1]), np.fft.fftfreq(images.shape[2]), indexing='ij')
  high = np.hypot(fy, fx) > CUTOFF
  return float(power[:, high].sum() / max(power.sum(), 1e-30))


def main(argv: list[str]) -> dict:
  """Prints and returns the measurements of the run `--workdir` names."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--max_images', type=int, help='only the first N images of the test split (default: all)')
  args, rest = parser.parse_known_args(argv)
  config = config_lib.from_args(args.config, rest)
  sources.hide_accelerators_from_tf()
  model, params, step = checkpointing.load_params(config, args.workdir)
  kernel = np.asarray(params[model.arch.convs[0].name]['kernel'])  # [k, k, C, F]
  filters = np.moveaxis(kernel, -1, 0).sum(axis=-1)  # grey input: C = 1
  batches = lambda: pipeline.split_batches(config, config.dataset.eval_split, args.max_images)  # noqa: E731
  tops = topk.stream_topk(model, params, batches(), [2], k=9)
  channels = {2: np.arange(len(np.asarray(tops[2].value)))}
  proj = topk.project_topk(model, params, batches(), tops, channels)[2]
  recon = proj.reconstruction[..., 0].reshape(-1, *proj.reconstruction.shape[2:4])
  recon = recon[np.abs(recon).reshape(len(recon), -1).max(axis=1) > 0]
  evals = metric_writer.read_curves(args.workdir).get('eval', [])
  result = {'workdir': args.workdir, 'step': step, 'test_top1': evals[-1]['top1'] if evals else None,
            'images': args.max_images, 'conv1_high_frequency': round(high_frequency_fraction(filters), 4),
            'layer2_projection_high_frequency': round(high_frequency_fraction(recon), 4)}
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
