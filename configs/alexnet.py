"""AlexNet (one tower), the paper's comparison: 11x11/4 first layer, 5x5/1 second.

conv1 11x11/4/2 (96) -> LRN -> pool 3x3/2 -> conv2 5x5/1/2 (256) -> LRN -> pool -> conv3-5 3x3/1/1
(384, 384, 256) -> pool -> fc 4096 -> fc 4096 -> 1000; maps 55 -> 27 -> 27 -> 13 -> 13 -> 6.
LRN as Krizhevsky et al. (k 2, n 5, alpha 1e-4 undivided = 5e-4 here, beta 0.75) after the ReLU, before the pool.
Table 3 ablations are overrides, e.g. `--config.model.remove_layers=3,4` or `--config.model.fc_features=2048,2048`.

  python -m zfnet_jax.train --config configs/alexnet.py --workdir runs/alexnet

Target (paper, the authors' replication): 40.5% top-1 / 18.1% top-5 validation error.
"""
from zfnet_jax import config_lib


def get_config():
  config = config_lib.base()
  config.model.conv_kernels = (11, 5, 3, 3, 3)
  config.model.conv_strides = (4, 1, 1, 1, 1)
  config.model.conv_paddings = (2, 2, 1, 1, 1)
  config.model.lrn = True
  config.model.lrn_position = 'before_pool'
  config.model.lrn_alpha = 5e-4
  return config
