"""ZFNet on ImageNet 2012, exactly as the seed's table.

conv1 7x7/2/3 (96) -> pool 3x3/2 -> conv2 5x5/2/2 (256) -> pool -> conv3-5 3x3/1/1 (384, 384, 256) -> pool
-> fc 4096 -> fc 4096 -> 1000; maps 112 -> 55 -> 28 -> 13 -> 13 -> 6; 62,357,608 parameters; no contrast
normalisation (the seed's table has none: `--config.model.lrn=True` adds it to layers 1-2).
Paper recipe: SGD momentum 0.9, lr 1e-2 divided by 10 at epochs 30/50/65, batch 128, 70 epochs, weights
N(0, 0.01^2), filter RMS renormalisation to 0.1, mean-subtracted [0, 255] pixels, 224 crops of 256.

  python -m zfnet_jax.train --config configs/default.py --workdir runs/zfnet

Needs the prepared `imagenet2012` tfds dataset (README, "ImageNet"). Target (paper, 1 net): 38.4% top-1 /
16.5% top-5 validation error (the paper's own layout, `configs/zfnet_paper.py`), 12 days on one GTX580.
"""
from zfnet_jax import config_lib


def get_config():
  return config_lib.base()
