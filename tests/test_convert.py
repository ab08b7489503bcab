"""Weights in and out (`model.pytorchcv`, `model.foreign`, `training.weights`): pytorchcv naming, exact round
trips over random architectures, logits equal to an independent PyTorch forward, clear errors.

The reference forward below is written with torch.nn.functional from the config's fields and pytorchcv's
key names; it shares no code with `zfnet_jax.model`. Layouts matter here, not sizes: networks are narrow
and 96 px, which still gives ceil-mode partial windows and a 2x2 map before fc6.
"""
import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from safetensors import safe_open

from conftest import config_path, digits_config, random_params
from zfnet_jax import config_lib
from zfnet_jax.model import foreign, network, pytorchcv
from zfnet_jax.training import checkpointing, loop, weights

# pytorchcv's names (imgclsmob, pytorch/pytorchcv/models/alexnet.py, which its zfnet.py also builds)
PYTORCHCV_CONVS = {1: 'features.stage1.unit1.conv', 2: 'features.stage2.unit1.conv',
                   3: 'features.stage3.unit1.conv', 4: 'features.stage3.unit2.conv', 5: 'features.stage3.unit3.conv'}
PYTORCHCV_FCS = {6: 'output.fc1.fc', 7: 'output.fc2.fc', 8: 'output.fc3'}
SMALL = {'model.conv_features': (8, 16, 24, 24, 16), 'model.fc_features': (32, 32), 'model.num_classes': 10,
         'model.image_size': 96}


def small_config(name: str, **overrides):
  return config_lib.load(config_path(name), {**SMALL, **overrides})


def random_state_dict(m, seed: int = 0) -> dict[str, torch.Tensor]:
  """Random pytorchcv-named weights for `config.model` `m`, scaled so activations stay O(input)."""
  g = torch.Generator().manual_seed(seed)
  sd, channels, size = {}, m.in_channels, m.image_size
  for n in range(1, 6):
    out, k = m.conv_features[n - 1], m.conv_kernels[n - 1]
    sd[f'{PYTORCHCV_CONVS[n]}.weight'] = torch.randn(out, channels, k, k, generator=g) / (channels * k * k) ** 0.5
    sd[f'{PYTORCHCV_CONVS[n]}.bias'] = torch.randn(out, generator=g)
    channels = out
  x = reference_features(sd, m, torch.zeros(1, m.in_channels, size, size))
  widths = [x.shape[1], *m.fc_features, m.num_classes]
  for n, (fan_in, out) in zip((6, 7, 8), zip(widths, widths[1:])):
    sd[f'{PYTORCHCV_FCS[n]}.weight'] = torch.randn(out, fan_in, generator=g) / fan_in ** 0.5
    sd[f'{PYTORCHCV_FCS[n]}.bias'] = torch.randn(out, generator=g)
  return sd


def reference_features(sd, m, x: torch.Tensor) -> torch.Tensor:
  """conv1-5 of `config.model` `m` in PyTorch, NCHW, flattened C,H,W as PyTorch does."""
  for n in range(1, 6):
    i = n - 1
    x = F.relu(F.conv2d(x, sd[f'{PYTORCHCV_CONVS[n]}.weight'], sd[f'{PYTORCHCV_CONVS[n]}.bias'],
                        stride=m.conv_strides[i], padding=m.conv_paddings[i]))
    lrn = m.lrn and n in m.lrn_layers
    norm = lambda t: F.local_response_norm(t, size=m.lrn_size, alpha=m.lrn_alpha, beta=m.lrn_beta, k=m.lrn_k)
    if lrn and m.lrn_position == 'before_pool':
      x = norm(x)
    if n in m.pool_layers:
      x = F.max_pool2d(x, m.pool_window, m.pool_stride, ceil_mode=m.pool_mode == 'ceil')
    if lrn and m.lrn_position == 'after_pool':
      x = norm(x)
  return x.flatten(1)


def reference_logits(sd, m, x: torch.Tensor) -> torch.Tensor:
  x = reference_features(sd, m, x)
  x = F.relu(F.linear(x, sd['output.fc1.fc.weight'], sd['output.fc1.fc.bias']))
  x = F.relu(F.linear(x, sd['output.fc2.fc.weight'], sd['output.fc2.fc.bias']))
  return F.linear(x, sd['output.fc3.weight'], sd['output.fc3.bias'])


def save(sd: dict[str, torch.Tensor], path: str) -> str:
  if path.endswith('.safetensors'):
    safetensors.torch.save_file(sd, path)
  else:
    torch.save(sd, path)
  return path


@pytest.mark.parametrize('name,suffix', [('default', '.safetensors'), ('zfnet_paper', '.pth'), ('alexnet', '.pt')])
def test_imported_logits_equal_an_independent_pytorch_forward(name, suffix, tmp_path):
  config = small_config(name)
  m = config.model
  sd = random_state_dict(m)
  workdir = str(tmp_path / 'run')
  weights.import_weights(save(sd, str(tmp_path / f'weights{suffix}')), config, workdir)
  model, params, step = checkpointing.load_params(config, workdir)
  # pixel-scale inputs make the LRN's alpha term matter (a wrong alpha / size convention fails here)
  x = torch.randn(2, m.in_channels, m.image_size, m.image_size, generator=torch.Generator().manual_seed(1)) * 100
  expected = reference_logits(sd, m, x).numpy()
  got = np.asarray(model.apply({'params': params}, x.permute(0, 2, 3, 1).numpy()))
  assert step == 0
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_pytorchcv_key_names_and_shapes_at_full_size():
  zfnet = pytorchcv.state_dict_shapes(network.Architecture.from_config(
      config_lib.load(config_path('zfnet_paper')).model))
  assert zfnet == {
      'features.stage1.unit1.conv.weight': (96, 3, 7, 7), 'features.stage1.unit1.conv.bias': (96,),
      'features.stage2.unit1.conv.weight': (256, 96, 5, 5), 'features.stage2.unit1.conv.bias': (256,),
      'features.stage3.unit1.conv.weight': (384, 256, 3, 3), 'features.stage3.unit1.conv.bias': (384,),
      'features.stage3.unit2.conv.weight': (384, 384, 3, 3), 'features.stage3.unit2.conv.bias': (384,),
      'features.stage3.unit3.conv.weight': (256, 384, 3, 3), 'features.stage3.unit3.conv.bias': (256,),
      'output.fc1.fc.weight': (4096, 9216), 'output.fc1.fc.bias': (4096,),
      'output.fc2.fc.weight': (4096, 4096), 'output.fc2.fc.bias': (4096,),
      'output.fc3.weight': (1000, 4096), 'output.fc3.bias': (1000,)}
  assert sum(np.prod(s) for s in zfnet.values()) == 62_357_608  # pytorchcv's zfnet weight count
  # pytorchcv's alexnet: conv1 padding 0 and ceil pooling (configs/alexnet.py is Krizhevsky's padding 2, floor)
  alexnet = pytorchcv.state_dict_shapes(network.Architecture.from_config(config_lib.load(
      config_path('alexnet'), {'model.conv_paddings': (0, 2, 1, 1, 1), 'model.pool_mode': 'ceil'}).model))
  assert sum(np.prod(s) for s in alexnet.values()) == 62_378_344  # pytorchcv's alexnet weight count


@st.composite
def expressible_architectures(draw) -> network.Architecture:
  """Small random networks pytorchcv can express: any conv layers 3-5 removed, the last conv layer pooled, fc6
  and fc7 kept; any widths, kernels, strides, paddings, pools, in_channels; the smallest image size that keeps
  every map at least 1x1, plus up to 6 px."""
  removed = draw(st.sets(st.sampled_from((3, 4, 5))))
  present = [n for n in network.CONV_LAYERS if n not in removed]
  window = draw(st.integers(1, 3))
  five = lambda values: tuple(draw(st.lists(values, min_size=5, max_size=5)))
  m = config_lib.base().model
  m.update_from_flattened_dict({
      'conv_features': five(st.integers(1, 6)), 'conv_kernels': five(st.integers(1, 5)),
      'conv_strides': five(st.integers(1, 2)), 'conv_paddings': five(st.integers(0, 2)),
      'pool_layers': tuple(sorted(draw(st.sets(st.sampled_from(present))) | {present[-1]})),
      'pool_window': window, 'pool_stride': draw(st.integers(1, min(window, 2))),
      'pool_mode': draw(st.sampled_from(('floor', 'ceil'))), 'remove_layers': tuple(sorted(removed)),
      'fc_features': (draw(st.integers(1, 8)), draw(st.integers(1, 8))), 'num_classes': draw(st.integers(1, 10)),
      'in_channels': draw(st.sampled_from((1, 3))), 'lrn': draw(st.booleans()), 'image_size': 2 ** 16})
  arch = network.Architecture.from_config(m)

  def fits(size: int) -> bool:  # map sizes grow with the image size: bisect for the smallest that fits
    try:
      dataclasses.replace(arch, image_size=size).map_sizes()
      return True
    except ValueError:
      return False
  low, high = 1, arch.image_size
  while low < high:
    low, high = (low, (low + high) // 2) if fits((low + high) // 2) else ((low + high) // 2 + 1, high)
  return dataclasses.replace(arch, image_size=low + draw(st.integers(0, 6)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(expressible_architectures(), st.integers(0, 2 ** 16))
def test_state_dicts_round_trip_exactly_over_random_architectures(arch, seed):
  params = random_params(network.ConvNet(arch), seed)  # NumPy draws into jax.eval_shape's shapes: nothing compiled
  sd = pytorchcv.to_state_dict(params, arch)
  assert {k: v.shape for k, v in sd.items()} == pytorchcv.state_dict_shapes(arch)
  assert all(v.dtype == np.float32 for v in sd.values())
  back = pytorchcv.from_state_dict(sd, arch)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(dict(params))
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, dict(params))
  # fc6 computes the same function of the last map flattened C,H,W (PyTorch) as of it flattened H,W,C (Flax)
  h, w, c = foreign.last_map(arch)
  x = np.random.default_rng(seed).normal(size=(h, w, c))
  np.testing.assert_allclose(sd['output.fc1.fc.weight'].astype(np.float64) @ x.transpose(2, 0, 1).ravel(),
                             x.ravel() @ np.asarray(params['fc6']['kernel'], np.float64), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('removed', [(7,), (6, 7)])
def test_the_shared_layout_flattens_into_the_first_dense_layer_of_fc_ablations(removed):
  """`foreign` serves any naming (a sibling layout's): with fc7 or fc6-7 removed, fc6 or fc8 takes the map."""
  arch = network.Architecture.from_config(small_config('zfnet_paper', **{'model.remove_layers': removed}).model)
  names = {f'conv{n}': f'conv.{n}' for n in arch.layer_numbers[:len(arch.convs)]}
  names.update({f'fc{n}': f'fc.{n}' for n, _ in arch.fcs} | {'fc8': 'fc.8'})
  params = random_params(network.ConvNet(arch))
  sd = foreign.to_state_dict(params, arch, names)
  jax.tree_util.tree_map(np.testing.assert_array_equal, foreign.from_state_dict(sd, arch, names), dict(params))
  first = foreign.first_dense(arch)
  assert first == ('fc6' if arch.fcs else 'fc8')
  h, w, c = foreign.last_map(arch)
  assert (h, w) == (2, 2)
  x = np.random.default_rng(0).normal(size=(h, w, c))
  np.testing.assert_allclose(sd[f'{names[first]}.weight'].astype(np.float64) @ x.transpose(2, 0, 1).ravel(),
                             x.ravel() @ np.asarray(params[first]['kernel'], np.float64), rtol=1e-9, atol=1e-9)


def test_export_import_round_trip_is_exact(trained_digits, tmp_path):
  config, workdir = trained_digits
  out = str(tmp_path / 'digits.safetensors')
  step = weights.export_weights(config, workdir, out)
  with safe_open(out, framework='np') as f:
    metadata = f.metadata()
  assert json.loads(metadata['config'])['model']['conv_features'] == list(config.model.conv_features)
  assert json.loads(metadata['architecture']) == network.create_model(config).arch.to_dict()
  assert int(metadata['checkpoint_step']) == step > 0
  weights.import_weights(out, config, str(tmp_path / 'imported'))
  _, original, _ = checkpointing.load_params(config, workdir)
  _, imported, imported_step = checkpointing.load_params(config, str(tmp_path / 'imported'))
  assert imported_step == 0
  assert jax.tree_util.tree_structure(original) == jax.tree_util.tree_structure(imported)
  jax.tree_util.tree_map(np.testing.assert_array_equal, original, imported)


def test_an_exported_file_imports_into_a_network_that_differs_only_in_dropout(trained_digits, tmp_path):
  config, workdir = trained_digits
  out = str(tmp_path / 'digits.safetensors')
  weights.export_weights(config, workdir, out)
  assert config.model.dropout_rate != 0.0
  no_dropout = digits_config(config.dataset.data_dir, model__dropout_rate=0.0)
  weights.import_weights(out, no_dropout, str(tmp_path / 'imported'))
  _, original, _ = checkpointing.load_params(config, workdir)
  _, imported, _ = checkpointing.load_params(no_dropout, str(tmp_path / 'imported'))
  jax.tree_util.tree_map(np.testing.assert_array_equal, original, imported)


def test_training_fine_tunes_from_an_imported_checkpoint(trained_digits, tmp_path):
  config, workdir = trained_digits
  out = str(tmp_path / 'digits.safetensors')
  weights.export_weights(config, workdir, out)
  # learning rate 0: if training started from the import, its weights come out unchanged
  tune = digits_config(config.dataset.data_dir, num_train_steps=2, optim__learning_rate=0.0,
                       optim__filter_rms_radius=0.0)
  tuned = str(tmp_path / 'tuned')
  weights.import_weights(out, tune, tuned)
  loop.train_and_evaluate(tune, tuned)
  _, original, _ = checkpointing.load_params(config, workdir)
  _, after, after_step = checkpointing.load_params(tune, tuned)
  assert after_step == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, original, after)


def assert_fails_and_writes_nothing(path, config, workdir, error, *phrases):
  with pytest.raises(error) as e:
    weights.import_weights(path, config, workdir)
  for phrase in phrases:
    assert phrase in str(e.value), (phrase, str(e.value))
  assert not os.path.exists(workdir) or os.listdir(workdir) == []


def test_mismatched_state_dicts_fail_naming_key_and_shapes(tmp_path):
  config = small_config('zfnet_paper')
  sd = random_state_dict(config.model)
  workdir = str(tmp_path / 'run')
  missing = {k: v for k, v in sd.items() if k != 'features.stage3.unit2.conv.weight'}
  assert_fails_and_writes_nothing(save(missing, str(tmp_path / 'missing.pth')), config, workdir,
                                  foreign.StateDictMismatchError,
                                  'missing key features.stage3.unit2.conv.weight: the config needs [24, 24, 3, 3]')
  extra = {**sd, 'features.stage4.unit1.conv.weight': torch.zeros(4, 16, 3, 3)}
  assert_fails_and_writes_nothing(save(extra, str(tmp_path / 'extra.safetensors')), config, workdir,
                                  foreign.StateDictMismatchError,
                                  'extra key features.stage4.unit1.conv.weight [4, 16, 3, 3]')
  # floor instead of ceil pooling: fc6 sees a 1x1 map where the file was made for 2x2
  floor = small_config('zfnet_paper', **{'model.pool_mode': 'floor'})
  assert_fails_and_writes_nothing(save(sd, str(tmp_path / 'sd.pth')), floor, workdir,
                                  foreign.StateDictMismatchError,
                                  'output.fc1.fc.weight: the file has [32, 64], the config needs [32, 16]',
                                  '16 x 1 x 1 = 16')


def test_unexpressible_networks_foreign_files_and_used_workdirs_fail_clearly(trained_digits, tmp_path, monkeypatch):
  config = small_config('default')
  path = save(random_state_dict(config.model), str(tmp_path / 'sd.pth'))
  workdir = str(tmp_path / 'run')
  assert_fails_and_writes_nothing(path, small_config('default', **{'model.remove_layers': (7,)}), workdir,
                                  foreign.NotExpressibleError, 'two hidden dense layers')
  assert_fails_and_writes_nothing(path, small_config('default', **{'model.pool_layers': (1, 2)}), workdir,
                                  foreign.NotExpressibleError, 'conv5, is not pooled')
  torch.save({'model': {'a': torch.zeros(1)}}, str(tmp_path / 'nested.pth'))
  assert_fails_and_writes_nothing(str(tmp_path / 'nested.pth'), config, workdir, ValueError, 'is not a state dict')
  monkeypatch.setitem(sys.modules, 'torch', None)
  assert_fails_and_writes_nothing(path, config, workdir, ImportError, 'needs PyTorch')
  monkeypatch.undo()
  # a file exported here carries its architecture: importing it into another network is refused
  digits, digits_workdir = trained_digits
  out = str(tmp_path / 'digits.safetensors')
  weights.export_weights(digits, digits_workdir, out)
  lrn = digits_config(digits.dataset.data_dir, model__lrn=True)
  assert_fails_and_writes_nothing(out, lrn, workdir, checkpointing.ArchitectureMismatchError,
                                  'conv1.lrn: saved False vs config True')
  # an import never lands on top of existing checkpoints
  before = sorted(os.listdir(os.path.join(digits_workdir, 'checkpoints')))
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    weights.import_weights(out, digits, digits_workdir)
  assert sorted(os.listdir(os.path.join(digits_workdir, 'checkpoints'))) == before
