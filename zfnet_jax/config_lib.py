"""The configuration schema (every field, with ZFNet-on-ImageNet defaults) and loading config files.

Config files in `configs/` start from `base()` and change what differs, so every config has every
field and a mistyped override fails instead of being silently added. From the command line:
`--config configs/digits.py --config.batch_size=64 --config.model.fc_features=2048,2048`.
From a notebook: `load('configs/digits.py', {'batch_size': 64})`.

Every numeric field has its range in one table, `RANGES`, checked whenever a config is loaded (and again
when a run starts, for configs changed after loading): a value out of range fails naming the field, the
range and a valid example, before any work. Layer and label numbers (`model.pool_layers`, `lrn_layers`,
`remove_layers`; `dataset.classes`) are checked against the architecture and the dataset they name
(`network.Architecture`, `sources.check_classes`).
"""
from __future__ import annotations

import difflib
import functools
import math
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
  d.permute_labels_seed = -1  # >= 0: the train split's labels permuted with this seed (Adebayo et al.'s data
  #                             randomisation sanity check); -1: the true labels

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
  c.keep_checkpoints = 3  # the newest N checkpoints are kept; -1 keeps every one (0 is refused: it would keep none)
  c.skip_nonfinite_steps = False  # False: stop on a non-finite loss/gradient/parameter; True: skip such batches
  c.profile_steps = (0, 0)  # (first, last): trace train steps first..last (1-based) with jax.profiler into
  #                           WORKDIR/profile (TensorBoard's profile tab, Perfetto); (0, 0): off
  return c


# Each numeric field's range, in interval notation ('[1, inf)': at least 1; '[0, 1)': 0 up to but not 1;
# '{1, 3}': one of these), optionally with values allowed outside it and what they mean. A tuple field's
# range holds for each of its values.
RANGES: dict[str, str | tuple[str, dict[int, str]]] = {
    'model.conv_features': '[1, inf)', 'model.conv_kernels': '[1, inf)', 'model.conv_strides': '[1, inf)',
    'model.conv_paddings': '[0, inf)', 'model.pool_window': '[1, inf)', 'model.pool_stride': '[1, inf)',
    'model.lrn_size': '[1, inf)', 'model.lrn_k': '[0, inf)', 'model.lrn_alpha': '[0, inf)',
    'model.lrn_beta': '[0, inf)', 'model.fc_features': '[1, inf)', 'model.dropout_rate': '[0, 1)',
    'model.num_classes': '[1, inf)', 'model.image_size': '[1, inf)', 'model.in_channels': '{1, 3}',
    'input.resize_size': '[1, inf)', 'input.jpeg_quality': '[1, 100]', 'input.workers': '[0, inf)',
    'input.prefetch_batches': '[1, inf)', 'input.prepare_timeout_s': '(0, inf)',
    'optim.learning_rate': '[0, inf)', 'optim.momentum': '[0, 1)', 'optim.weight_decay': '[0, inf)',
    'optim.decay_epochs': '[0, inf)', 'optim.warmup_epochs': '[0, inf)', 'optim.filter_rms_radius': '[0, inf)',
    'batch_size': '[1, inf)', 'eval_batch_size': '[1, inf)', 'num_epochs': '(0, inf)',
    'num_train_steps': ('[1, inf)', {-1: 'train config.num_epochs instead'}), 'seed': '[0, inf)',
    'log_every_steps': '[1, inf)', 'eval_every_epochs': '(0, inf)', 'checkpoint_every_steps': '[1, inf)',
    'keep_checkpoints': ('[1, inf)', {-1: 'keep every checkpoint'}), 'profile_steps': '[0, inf)',
    'dataset.permute_labels_seed': ('[0, inf)', {-1: 'train on the true labels'}),
}


class ConfigValueError(ValueError):
  """A field's value is out of its range (`RANGES`); the message names the field, the range and an example."""


def _in_range(value: float, rule: str) -> bool:
  """Whether `value` lies in `rule`: interval notation (`'[0, 1)'`, `'(0, inf)'`) or a set (`'{1, 3}'`)."""
  if rule.startswith('{'):
    return value in {float(v) for v in rule[1:-1].split(',')}
  low, high = (float(v) for v in rule[1:-1].split(','))
  above = value >= low if rule[0] == '[' else value > low
  below = value <= high if rule[-1] == ']' else value < high
  return above and below and not math.isnan(value)


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  """`config.model.dropout_rate` for `field='model.dropout_rate'`."""
  return functools.reduce(lambda node, name: node[name], field.split('.'), config)


def _flag_value(value: Any) -> str:
  """How `value` is written after `--config.FIELD=` (tuples comma-separated)."""
  return ','.join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigValueError` for the first field whose value is out of its `RANGES` entry, and for
  `profile_steps` that are neither `(0, 0)` nor `(first, last)` with `1 <= first <= last`."""
  defaults = base()
  for field, entry in RANGES.items():
    rule, special = entry if isinstance(entry, tuple) else (entry, {})
    value = _get(config, field)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if all(v in special or _in_range(v, rule) for v in values):
      continue
    example = _get(defaults, field)
    each = 'each value ' if isinstance(value, (tuple, list)) else ''
    others = ''.join(f' (or {v}: {meaning})' for v, meaning in special.items())
    where = 'one of' if rule.startswith('{') else 'in'
    raise ConfigValueError(f'config.{field}={_flag_value(value)} is out of range: {each}must be {where} {rule}'
                           f'{others}, e.g. --config.{field}={_flag_value(example)}')
  first, last = config.profile_steps
  if (first, last) != (0, 0) and not 1 <= first <= last:
    raise ConfigValueError(f'config.profile_steps=({first}, {last}) must be (0, 0) (off) or (first, last) with '
                           f'1 <= first <= last, e.g. --config.profile_steps=10,15')


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
    rest = flag_values(argv)
  except (AttributeError, KeyError):  # ml_collections found a field the config lacks
    keys = [a[len('--config.'):].split('=')[0] for a in argv if a.startswith('--config.')]
    path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    path = path or argv[argv.index('--config') + 1]
    config = from_args(path, [])
    raise SystemExit(f'error: {_unknown_field(keys, config)}') from None
  config = flag_values['config'].value if 'config' in flag_values else None
  if isinstance(config, ml_collections.ConfigDict):
    try:
      check(config)
    except ConfigValueError as e:
      raise SystemExit(f'error: {e}') from None
  return rest


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
  `update_from_flattened_dict`, so a mistyped field is a `ConfigFieldError` suggesting the right name, and
  a value out of range a `ConfigValueError` (`check`).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} does not exist (configs live in configs/, e.g. configs/digits.py)')
  config = from_args(path, [])
  try:
    config.update_from_flattened_dict(dict(overrides or {}))
  except (AttributeError, KeyError):
    raise _unknown_field(list(overrides), config) from None
  check(config)
  return config
