"""Prepares ImageNet once: tfds `imagenet2012` from the two ILSVRC2012 archives, then the paper's squares.

  python scripts/prepare_imagenet.py --manual_dir ~/imagenet --data_dir ~/tensorflow_datasets \
      [--config configs/default.py] [--config.input.jpeg_quality=90 ...]

`--manual_dir` must hold ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB), downloaded
from https://image-net.org after registering. Step 1, tfds's own builder: `imagenet2012` (~150 GB, hours).
Step 2, from it: every image's `input.resize_size` square (short side resized, centre crop; JPEG at
`input.jpeg_quality` or raw), in ArrayRecord files under DATA_DIR/zfnet_squares/, with the labels and the
per-pixel mean image beside them (`zfnet_jax/data/squares.py`); progress and ETA on stderr. The squares'
settings come from `--config` (default configs/default.py) and its overrides: train with the same ones.
Both steps write into temporary folders renamed when complete: an interrupted run starts the unfinished
step over. Train with `--config.dataset.data_dir=DATA_DIR`; on many hosts, prepare once on shared storage
(any host's first run would do it too, with the others waiting).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zfnet_jax import config_lib  # noqa: E402
from zfnet_jax.data import sources, squares  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', required=True, help='folder holding the two ILSVRC2012 archives')
  parser.add_argument('--data_dir', default=None, help='tfds data dir (default: ~/tensorflow_datasets)')
  parser.add_argument('--config', default=os.path.join(os.path.dirname(__file__), '..', 'configs', 'default.py'),
                      help='the training config whose input.* settings shape the squares')
  args, overrides = parser.parse_known_args()
  missing = [a for a in sources.IMAGENET_ARCHIVES if not os.path.exists(os.path.join(args.manual_dir, a))]
  if missing:
    sys.exit(f'error: {", ".join(missing)} not found in {args.manual_dir}; download from https://image-net.org')
  config = config_lib.from_args(args.config, overrides)
  config.dataset.name, config.dataset.manual_dir = 'imagenet2012', args.manual_dir
  config.dataset.data_dir = args.data_dir
  sources.hide_accelerators_from_tf()
  source = sources.get_builder(config.dataset)
  print(f'imagenet2012 prepared in {source.data_dir}:', {str(k): v.num_examples for k, v in source.info.splits.items()})
  b = squares.prepare(config, process_index=0)
  print(f'squares prepared in {b.data_dir}:', {k: v.num_examples for k, v in b.info.splits.items()})


if __name__ == '__main__':
  main()
