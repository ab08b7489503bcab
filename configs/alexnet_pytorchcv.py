"""AlexNet as pytorchcv (imgclsmob) builds it, for importing its published `alexnet` weights.

Differs from `alexnet.py` (Krizhevsky's one-tower layout) in conv1 padding 0, ceil-mode pooling, LRN
alpha 1e-4 in PyTorch's convention (divided by the size) and torchvision's mean/std input normalisation.
Maps 54 -> 27 -> 27 -> 13 -> 13 -> 6 at 224 input.

  python -m zfnet_jax.convert import --from alexnet-1664-2768cdb3.pth --config configs/alexnet_pytorchcv.py \
      --workdir runs/alexnet_pytorchcv
"""
import os

from zfnet_jax import config_lib


def get_config():
  config = config_lib.load(os.path.join(os.path.dirname(__file__), 'alexnet.py'))
  config.model.conv_paddings = (0, 2, 1, 1, 1)
  config.model.pool_mode = 'ceil'
  config.model.lrn_alpha = 1e-4
  config.input.normalization = 'mean_std'
  return config
