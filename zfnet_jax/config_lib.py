"""The configuration schema (every field, with ZFNet-on-ImageNet defaults) and loading config files.

Config files in `configs/` start from `base()` and change what differs, so every config has every
field and a mistyped override fails instead of being silently added. From the command line:
`--config configs/digits.py --config.batch_size=64 --config.model.fc_features=2048,2048`.
From a notebook: `load('configs/digits.py', {'batch_size': 64})`.
"""
from __future__ import annotations

import difflib
import os
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags


def base() -> ml_collections.ConfigDict:
  """ZFNet exactly as the seed's table (7x7/2/3, 5x5/2/2, 3x3/1/1 x3, floor 3x3/2 pooling), ImageNet."""
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  m.conv_features = (96, 256, 384, 384, 256)
  m.conv_kernels = (7, 5, 3, 3, 3)
  m.conv_strides = (2, 2, 1, 1, 1)
  m.conv_paddings = (3, 2, 1, 1, 1)
  m.pool_layers = (1, 2, 5)
  m.pool_window = 3
  m.pool_stride = 2
  m.pool_mode = 'floor'  # or 'ceil' (the paper's / pytorchcv's 110-55-26-13-6 layout)
  m.lrn = False  # contrast normalisation in m.lrn_layers; the seed's table has none
  m.lrn_layers = (1, 2)
  m.lrn_position = 'after_pool'  # the paper normalises after pooling; pytorchcv before
  m.lrn_size = 5
  m.lrn_k = 2.0
  m.lrn_alpha = 1e-4  # PyTorch convention: divided by lrn_size
  m.lrn_beta = 0.75
  m.fc_features = (4096, 4096)  # widths of layers 6 and 7 (Table 3: 2048 / 8192)
  m.remove_layers = ()  # Table 3 ablations: any of 3, 4, 5, 6, 7, e.g. (3, 4) or (6, 7)
  m.dropout_rate = 0.5
  m.num_classes = 1000
  m.image_size = 224
  m.in_channels = 3
  m.kernel_init = 'paper'  # 'paper': N(0, 0.01^2); 'fan_in': He-scaled truncated normal

  c.dataset = d = ml_collections.ConfigDict()
  d.name = 'imagenet2012'  # any tfds image classification dataset, 'sklearn_digits', or 'folder:/path'
  d.data_dir = config_dict.placeholder(str)  # tfds data dir; default ~/tensorflow_datasets or $TFDS_DATA_DIR
  d.manual_dir = config_dict.placeholder(str)  # where ILSVRC2012_img_{train,val}.tar lie
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.classes = ()  # a subset of the dataset's labels, e.g. (0, 1, 2, 3, 4), relabelled 0..len-1 in this
  #                 order (set model.num_classes to match); () keeps every class

  c.input = i = ml_collections.ConfigDict()
  i.resize_size = 256  # prepared squares: short side resized to this, centre square (paper: 256)
  i.square_format = 'jpeg'  # how the squares are stored: 'jpeg' (at i.jpeg_quality) or 'raw' uint8
  i.jpeg_quality = 90
  i.crop = 'paper'  # on the device: 'paper' random image_size crop of the square; 'inception' random-resized
  i.flip = True
  i.normalization = 'mean'  # 'mean': [0, 255] minus the ImageNet channel mean; 'mean_std': also / std
  #                           (torchvision); 'pixel_mean': minus the per-pixel mean of the train squares (paper)
  i.workers = 0  # host threads decoding squares (0: one per CPU core)
  i.prefetch_batches = 4  # host batches decoded ahead
  i.prepare_timeout_s = 48 * 3600.0  # processes other than 0 wait this long for process 0 to prepare the squares

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 0.01
  o.momentum = 0.9
  o.nesterov = False
  o.weight_decay = 0.0  # the paper mentions none; AlexNet used 5e-4
  o.schedule = 'piecewise'  # 'piecewise' (divide by 10 at decay_epochs), 'cosine', 'constant'
  o.decay_epochs = (30, 50, 65)  # the paper lowered the rate by hand on plateaus; this is our reading
  o.warmup_epochs = 0.0
  o.filter_rms_radius = 0.1  # renormalise conv filters whose RMS exceeds this after each step; 0 = off

  c.batch_size = 128  # global, over all devices and hosts
  c.eval_batch_size = 128
  c.num_epochs = 70.0
  c.num_train_steps = -1  # > 0: train exactly this many steps instead of num_epochs
  c.seed = 0
  c.dtype = 'float32'  # compute dtype; 'bfloat16' on TPU/GPU (parameters stay float32)
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0  # a fraction evaluates several times an epoch
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.skip_nonfinite_steps = False  # False: stop on a non-finite loss/gradient/parameter; True: skip such batches
  c.profile_steps = (0, 0)  # (first, last): trace train steps first..last (1-based) with jax.profiler into
  #                           WORKDIR/profile (TensorBoard's profile tab, Perfetto); (0, 0): off
  return c


class ConfigFieldError(ValueError):
  """An override names a field the config does not have; the message suggests the closest one."""


def _unknown_field(keys: list[str], config: ml_collections.ConfigDict) -> ConfigFieldError:
  """The error for overrides of which at least one names no field: the first such, and the closest names."""
  for key in keys:
    node, parts = config, key.split('.')
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=3)
        prefix = 'config.' + '.'.join(parts[:depth] + [''])
        hint = (f'did you mean {" or ".join(prefix + c for c in close)}?' if close
                else f'the fields there are: {", ".join(known)}.')
        return ConfigFieldError(f'unknown config field config.{key}: {hint} Every field is listed, with its default, '
                                f'in zfnet_jax/config_lib.py (base); config files only change values.')
      node = node[part]
  return ConfigFieldError(f'a config override failed: {keys}')


def define_config_flag(help_text: str, flag_values: flags.FlagValues = flags.FLAGS,
                       argv: list[str] | None = None) -> flags.FlagHolder:
  """The required `--config` flag (a config file) with `--config.FIELD=VALUE` overrides, locked."""
  holder = config_flags.DEFINE_config_file('config', None, help_text, flag_values=flag_values, lock_config=True,
                                           sys_argv=argv)
  flags.mark_flag_as_required('config', flag_values=flag_values)
  return holder


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """`flags_parser` for `absl.app.run`: a mistyped `--config.FIELD` exits with ml_collections' suggestion."""
  try:
    return flag_values(argv)
  except (AttributeError, KeyError):  # ml_collections found a field the config lacks
    keys = [a[len('--config.'):].split('=')[0] for a in argv if a.startswith('--config.')]
    path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    path = path or argv[argv.index('--config') + 1]
    config = from_args(path, [])
    raise SystemExit(f'error: {_unknown_field(keys, config)}') from None


def from_args(path: str, override_args: list[str]) -> ml_collections.ConfigDict:
  """A config file with `--config.FIELD=VALUE` arguments, parsed exactly as `python -m zfnet_jax.train` does."""
  argv = ['zfnet_jax', f'--config={path}', *override_args]
  values = flags.FlagValues()
  holder = define_config_flag('config file', values, argv)
  parse_flags(argv, values)
  return holder.value


def load(path: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A config file with dotted overrides, e.g. `load('configs/digits.py', {'model.lrn': True})` (notebooks).

  The file is read by ml_collections as on the command line; overrides go through
  `update_from_flattened_dict`, so a mistyped field is a `ConfigFieldError` suggesting the right name.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} does not exist (configs live in configs/, e.g. configs/digits.py)')
  config = from_args(path, [])
  try:
    config.update_from_flattened_dict(dict(overrides or {}))
  except (AttributeError, KeyError):
    raise _unknown_field(list(overrides), config) from None
  return config
