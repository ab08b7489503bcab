"""Writes small ILSVRC2012-format archives from real photos, for testing and benchmarking the ImageNet path.

  python scripts/make_imagenet_archives.py --out M [--classes 4 --per_class 6 --val 8 --max_side 500]

`M/ILSVRC2012_img_train.tar` holds one inner tar per synset (`n01739381.tar` with
`n01739381_*.JPEG`), `M/ILSVRC2012_img_val.tar` the first `--val` validation files
(`ILSVRC2012_val_00000001.JPEG`, ...), so tfds's bundled validation labels line up. The pictures are
crops and rescales of scikit-learn's two sample photos, and, as in the real archives: grey JPEGs, a
CMYK JPEG (`n01739381_1309.JPEG`, one tfds converts), a PNG named `.JPEG` (`n02105855_2933.JPEG`,
one tfds converts), and in the validation tar a CMYK JPEG and a PNG that tfds passes on unconverted.
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile

import numpy as np
import PIL.Image

CMYK_TRAIN, PNG_TRAIN = 'n01739381_1309.JPEG', 'n02105855_2933.JPEG'


def _photos() -> list[PIL.Image.Image]:
  from sklearn.datasets import load_sample_images
  return [PIL.Image.fromarray(a) for a in load_sample_images().images]


def _picture(rng: np.random.Generator, photos: list[PIL.Image.Image], max_side: int) -> PIL.Image.Image:
  """A random crop (40-100% of each side) of one photo, rescaled so its long side is 50-100% of `max_side`."""
  photo = photos[rng.integers(len(photos))]
  w, h = photo.size
  cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
  x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
  scale = max_side * rng.uniform(0.5, 1.0) / max(cw, ch)
  return photo.crop((x, y, x + cw, y + ch)).resize((max(8, round(cw * scale)), max(8, round(ch * scale))),
                                                   PIL.Image.BILINEAR)


def _file(image: PIL.Image.Image, kind: str) -> bytes:
  """The bytes of a `.JPEG` file holding `image` as `kind`: 'rgb', 'grey', 'cmyk' (JPEG) or 'png'."""
  out = io.BytesIO()
  if kind == 'png':
    image.save(out, 'PNG')
  else:
    image.convert({'rgb': 'RGB', 'grey': 'L', 'cmyk': 'CMYK'}[kind]).save(out, 'JPEG', quality=90)
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_archives(out: str, classes: int = 4, per_class: int = 6, val: int = 8, max_side: int = 500,
                   seed: int = 0) -> None:
  import tensorflow_datasets as tfds
  labels_dir = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012')
  synsets = open(os.path.join(labels_dir, 'labels.txt')).read().split()
  special = ['n01739381', 'n02105855']  # the synsets of the CMYK and the PNG train files
  chosen = special + [s for s in synsets if s not in special][:max(0, classes - 2)]
  rng, photos = np.random.default_rng(seed), _photos()
  os.makedirs(out, exist_ok=True)
  with tarfile.open(os.path.join(out, 'ILSVRC2012_img_train.tar'), 'w') as train:
    for synset in chosen[:classes]:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i in range(per_class):
          name = f'{synset}_{i + 1}.JPEG'
          kind = 'grey' if i % 5 == 4 else 'rgb'
          if synset == 'n01739381' and i == 0:
            name, kind = CMYK_TRAIN, 'cmyk'
          if synset == 'n02105855' and i == 0:
            name, kind = PNG_TRAIN, 'png'
          _add(t, name, _file(_picture(rng, photos, max_side), kind))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(out, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    for i in range(val):
      kind = {0: 'cmyk', 1: 'png', 2: 'grey'}.get(i, 'rgb')
      _add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _file(_picture(rng, photos, max_side), kind))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='folder for the two archives (a tfds manual_dir)')
  parser.add_argument('--classes', type=int, default=4)
  parser.add_argument('--per_class', type=int, default=6)
  parser.add_argument('--val', type=int, default=8, help='validation images (at most 50,000)')
  parser.add_argument('--max_side', type=int, default=500, help='longest side of the pictures, in pixels')
  parser.add_argument('--seed', type=int, default=0)
  a = parser.parse_args()
  write_archives(a.out, a.classes, a.per_class, a.val, a.max_side, a.seed)


if __name__ == '__main__':
  main()
