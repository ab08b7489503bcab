"""ZFNet in the paper's / pytorchcv's layout: 110 -> 55 -> 26 -> 13 -> 13 -> 6 maps.

conv1 padding 1, conv2 padding 0, ceil-mode pooling, local response normalisation (size 5, k 2,
alpha 1e-4 / size, beta 0.75) after the ReLU and before the pool of layers 1-2 as pytorchcv does it
(`--config.model.lrn_position=after_pool` for the paper's order, `--config.model.lrn=False` to drop it),
torchvision's mean/std input normalisation (what pytorchcv's published weights expect).
62,357,608 parameters, as the seed's layout.

  python -m zfnet_jax.train --config configs/zfnet_paper.py --workdir runs/zfnet_paper

Target (paper, 1 net): 38.4% top-1 / 16.5% top-5 validation error; pytorchcv's published weights for
this layout: 39.21 / 16.78.
"""
from zfnet_jax import config_lib


def get_config():
  config = config_lib.base()
  config.model.conv_paddings = (1, 0, 1, 1, 1)
  config.model.pool_mode = 'ceil'
  config.model.lrn = True
  config.model.lrn_position = 'before_pool'
  config.input.normalization = 'mean_std'
  return config
