"""Prepares the tfds `imagenet2012` dataset from the two ILSVRC2012 archives (once; hours, ~150 GB).

  python scripts/prepare_imagenet.py --manual_dir ~/imagenet --data_dir ~/tensorflow_datasets

`--manual_dir` must hold ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB), downloaded
from https://image-net.org after registering. Train with `--config.dataset.data_dir=DATA_DIR` (or
TFDS_DATA_DIR=DATA_DIR). On many hosts, prepare once on shared storage (e.g. a GCS bucket) and point
every host's data_dir at it.
"""
import argparse
import os
import sys

import tensorflow_datasets as tfds

ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', required=True, help='folder holding the two ILSVRC2012 archives')
  parser.add_argument('--data_dir', default=None, help='tfds data dir (default: ~/tensorflow_datasets)')
  args = parser.parse_args()
  missing = [a for a in ARCHIVES if not os.path.exists(os.path.join(args.manual_dir, a))]
  if missing:
    sys.exit(f'error: {", ".join(missing)} not found in {args.manual_dir}; download from https://image-net.org')
  builder = tfds.builder('imagenet2012', data_dir=args.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f'imagenet2012 prepared in {builder.data_dir}:', {k: v.num_examples for k, v in builder.info.splits.items()})


if __name__ == '__main__':
  main()
