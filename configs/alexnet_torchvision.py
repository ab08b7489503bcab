"""AlexNet as torchvision builds it (`torchvision.models.alexnet`), for importing its pretrained weights.

conv1 11x11/4/2 (64) -> pool 3x3/2 -> conv2 5x5/1/2 (192) -> pool -> conv3-5 3x3/1/1 (384, 256, 256) -> pool
-> fc 4096 -> fc 4096 -> 1000; no LRN; floor pooling; maps 55 -> 27 -> 27 -> 13 -> 13 -> 6 at 224 input, so
torchvision's adaptive 6x6 average pool is the identity (`model/torchvision_alexnet.py`). Inputs normalised
with ImageNet's mean and std, as torchvision's weights expect.

  python -m zfnet_jax.convert import --from alexnet-owt-7be5be79.pth --config configs/alexnet_torchvision.py \
      --workdir runs/alexnet_torchvision
  python -m zfnet_jax.convert export --layout torchvision --config configs/alexnet_torchvision.py \
      --workdir runs/alexnet_torchvision --out alexnet.safetensors
"""
import os

from zfnet_jax import config_lib


def get_config():
  config = config_lib.load(os.path.join(os.path.dirname(__file__), 'alexnet.py'))
  config.model.conv_features = (64, 192, 384, 256, 256)
  config.model.lrn = False
  config.input.normalization = 'mean_std'
  return config
