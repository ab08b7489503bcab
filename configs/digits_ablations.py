"""Table 3's ablations and Fig. 6's first-layer fix, scaled to the bundled digits: a sweep config.

`get_config()` is `digits.py` trained for 15 epochs; `get_variants()` names the changes, each scaled from
the paper's ImageNet network (96-256-384-384-256 maps, fc 4096) to the digits one (32-64-96-96-64, fc 256):

| variant | change | paper (Table 3 / Fig. 6) |
|---|---|---|
| zfnet | none: 7x7/2 conv1, 5x5/2 conv2 | ZFNet |
| alexnet_stem | conv1 11x11/4 (padding 4), conv2 5x5/1: maps 16-7-7-3-3-3-1 | AlexNet's first layers (Fig. 6) |
| fc_128 / fc_512 | layers 6, 7 half / double width | FC 2048 / 8192 |
| wide_3_5 | layers 3-5 = 128/256/128 (x4/3, x8/3, x2, as 512/1024/512 is to 384/384/256) | 512/1024/512 |
| no_3_4 / no_6_7 / no_3_4_6_7 | layers removed | the paper removes them from AlexNet |

  python -m zfnet_jax.sweep --config configs/digits_ablations.py --workdir runs/ablations --seeds 0,1,2

24 runs; about 20-30 minutes on a quiet 2-core CPU. `--variants zfnet,alexnet_stem` runs a subset and
`--config.num_epochs=5` shortens every run. Results: docs/results/ablations_summary.csv (README, "Results").
"""
import os
from typing import Any

from zfnet_jax import config_lib


def get_config():
  config = config_lib.load(os.path.join(os.path.dirname(__file__), 'digits.py'))
  config.num_epochs = 15
  config.optim.weight_decay = 0.0  # as the README's Table 3 runs were trained (digits.py's decay is for the pictures)
  return config


def get_variants() -> dict[str, dict[str, Any]]:
  return {
      'zfnet': {},
      'alexnet_stem': {'model.conv_kernels': (11, 5, 3, 3, 3), 'model.conv_strides': (4, 1, 1, 1, 1),
                       'model.conv_paddings': (4, 2, 1, 1, 1)},
      'fc_128': {'model.fc_features': (128, 128)},
      'fc_512': {'model.fc_features': (512, 512)},
      'wide_3_5': {'model.conv_features': (32, 64, 128, 256, 128)},
      'no_3_4': {'model.remove_layers': (3, 4)},
      'no_6_7': {'model.remove_layers': (6, 7)},
      'no_3_4_6_7': {'model.remove_layers': (3, 4, 6, 7)},
  }
