"""Every `python -m zfnet_jax.visualize` command on two ablated digits networks (without layers 6 and 7;
without layers 3 and 4), each trained for two steps: the arrays each command writes against an
independent computation with `network.forward` over the same images, or, where `tests/test_analysis.py`
holds the numbers (top-k, occlusion), against the library on the images the command's flags name.
Also `scripts/digits_graininess.py` on the session's trained digits run."""
import importlib.util
import json
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, config_path, digits_config
from zfnet_jax import visualize
from zfnet_jax.data import augment, pipeline
from zfnet_jax.interpret import figures, invariance, occlusion, projection, topk
from zfnet_jax.model import network, receptive_field
from zfnet_jax.training import checkpointing, loop

VARIANTS = {'without_6_7': (6, 7), 'without_3_4': (3, 4)}
TINY = {'model.conv_features': (8, 8, 8, 8, 8), 'model.fc_features': (16, 16)}


class Net(NamedTuple):
  config: object
  workdir: str
  removed: tuple[int, ...]
  model: network.ConvNet
  params: dict


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def ablated(request, tfds_dir, tmp_path_factory):
  """A tiny digits network without the variant's layers, trained 2 steps with a checkpoint at each."""
  workdir = str(tmp_path_factory.mktemp(request.param))
  removed = VARIANTS[request.param]
  config = digits_config(tfds_dir, model__remove_layers=removed, num_train_steps=2, checkpoint_every_steps=1,
                         batch_size=32, log_every_steps=1000, **{k.replace('.', '__'): v for k, v in TINY.items()})
  loop.train_and_evaluate(config, workdir)
  model, params, _ = checkpointing.load_params(config, workdir)
  return Net(config, workdir, removed, model, params)


def run(net: Net, out, command: str, *options: str) -> dict[str, np.ndarray]:
  """`python -m zfnet_jax.visualize COMMAND` on `net` into `out`: `{file name: array or npz}` of what it wrote."""
  fields = {'model.remove_layers': net.removed, **TINY}
  visualize.main([command, '--config', config_path('digits'), '--workdir', net.workdir, '--out', str(out),
                  f'--config.dataset.data_dir={net.config.dataset.data_dir}',
                  *(f'--config.{k}={",".join(map(str, v))}' for k, v in fields.items()), *options])
  return {name: np.load(os.path.join(out, name)) for name in sorted(os.listdir(out)) if name.endswith(('.npy', '.npz'))}


_SPLITS = {}


def split_of(net: Net) -> tuple[np.ndarray, np.ndarray]:
  """The test split's images and labels in the evaluation order, read straight from `eval_batches`."""
  if net.config.dataset.data_dir not in _SPLITS:
    batches = list(pipeline.eval_batches(net.config)[0])
    keep = lambda key: np.concatenate([b[key][b['mask'] == 1] for b in batches])  # noqa: E731
    _SPLITS[net.config.dataset.data_dir] = keep('image'), keep('label')
  return _SPLITS[net.config.dataset.data_dir]


forward = jax.jit(network.forward, static_argnums=0)
transform = jax.jit(invariance.transform, static_argnums=1)


def per_image_max(net: Net, params, images: np.ndarray, layer: int) -> np.ndarray:
  """`[N, C]` each map's strongest activation in each image."""
  return np.asarray(forward(net.model, params, images).layers[f'layer{layer}']).max(axis=(1, 2))


def test_project_seeds_the_strongest_activation_and_stays_in_its_receptive_field(ablated, tmp_path):
  arrays = run(ablated, tmp_path, 'project', '--layer', '5', '--index', '2')
  [(name, recon)] = arrays.items()
  channel, y, x = map(int, re.fullmatch(r'project_layer5_map(\d+)_y(\d+)_x(\d+)\.npy', name).groups())
  images, _ = split_of(ablated)
  act = np.asarray(forward(ablated.model, ablated.params, images[2:3]).layers['layer5'][0])
  assert channel == np.argmax(act.max(axis=(0, 1))) and (y, x) == np.unravel_index(np.argmax(act[..., channel]),
                                                                                      act.shape[:2])
  assert recon.shape == (64, 64, 1) and np.abs(recon).max() > 0
  top, left, bottom, right = receptive_field.receptive_field(ablated.model.arch, 5, y, x)
  outside = np.ones(recon.shape, bool)
  outside[top:bottom, left:right] = False
  assert not np.any(recon[outside])


def test_topk_writes_the_top_k_of_the_images_and_layers_its_flags_name(ablated, tmp_path):
  arrays = run(ablated, tmp_path, 'topk', '--layers', '1,5', '--maps', '3', '--k', '4', '--max_images', '40')
  assert sorted(arrays) == ['topk_layer1.npz', 'topk_layer5.npz']
  tops = topk.stream_topk(ablated.model, ablated.params, pipeline.split_batches(ablated.config, 'test', 40), (1, 5),
                          k=4)
  for layer in (1, 5):
    a = arrays[f'topk_layer{layer}.npz']
    for field in ('value', 'image', 'y', 'x'):
      np.testing.assert_array_equal(a[f'all_{field}'], getattr(tops[layer], field))
    assert a['all_value'].shape == (8, 4) and a['all_image'].max() < 40
    assert a['channel'].shape == (3,) and np.array_equal(a['value'], a['all_value'][a['channel']])
    r = a['patch'].shape[2]
    assert a['reconstruction'].shape == a['patch'].shape == (3, 4, r, r, 1)


def test_filters_are_the_checkpoints_first_layer(ablated, tmp_path):
  arrays = run(ablated, tmp_path, 'filters')
  np.testing.assert_array_equal(arrays['filters_layer1.npy'], ablated.params['conv1']['kernel'])


def test_occlusion_writes_the_maps_of_the_image_and_square_its_flags_name(ablated, tmp_path):
  a = run(ablated, tmp_path, 'occlusion', '--index', '3', '--size', '16', '--stride', '12')['occlusion.npz']
  images, labels = split_of(ablated)
  np.testing.assert_array_equal(a['image'], images[3])
  assert a['label'] == labels[3] and list(a['rows']) == list(a['cols']) == [0, 12, 24, 36, 48]
  assert (a['size'], a['stride']) == (16, 12)
  expected = occlusion.sensitivity(ablated.model, ablated.params, images[3], int(labels[3]), 16, 12).maps
  for field in ('activity', 'probability', 'top_class', 'feature'):
    np.testing.assert_array_equal(a[field], getattr(expected, field))
  top_layer = ablated.model.arch.convs[-1].layer
  proj = projection.project_activation(ablated.model, ablated.params, images[3], top_layer, int(a['feature']))
  act = np.asarray(forward(ablated.model, ablated.params, images[3:4]).layers[f'layer{top_layer}'][0])
  assert proj.position == np.unravel_index(np.argmax(act[..., a['feature']]), act.shape[:2])
  np.testing.assert_array_equal(a['projection'], proj.reconstruction)


def test_correspondence_at_the_layers_present(ablated, tmp_path):
  a = run(ablated, tmp_path, 'correspondence', '--label', '0', '--count', '3', '--box', '0,0,32,64',
          '--random_draws', '2')['correspondence.npz']
  images, labels = split_of(ablated)
  layers = (5,) if 7 in ablated.removed else (5, 7)  # the last conv and the last hidden layer
  assert sorted(k for k in a.files if k.startswith('delta')) == [f'delta_layer{n}' for n in layers]
  chosen = images[labels == 0][:3]
  np.testing.assert_array_equal(a['images'], chosen)
  masked = chosen.copy()
  masked[:, :32] = 0.0
  plain, hidden = (forward(ablated.model, ablated.params, x).layers for x in (chosen, masked))
  for n in layers:
    signs = np.sign(np.asarray(plain[f'layer{n}'] - hidden[f'layer{n}']).reshape(3, -1))
    pairs = [np.mean(signs[i] != signs[j]) for i in range(3) for j in range(3) if i != j]
    np.testing.assert_allclose(a[f'delta_layer{n}'], np.mean(pairs), rtol=1e-5)
    assert a[f'random_delta_layer{n}'].shape == (2,)


def test_invariance_distances_are_feature_norms(ablated, tmp_path):
  a = run(ablated, tmp_path, 'invariance', '--count', '2')['invariance.npz']
  images, labels = split_of(ablated)
  layers = (1, 5) if 7 in ablated.removed else (1, 7)  # the first and the last hidden layer
  assert sorted(k for k in a.files if k.startswith('scale_')) == sorted(
      ['scale_amount', 'scale_probability', *(f'scale_layer{n}' for n in layers)])
  ref = forward(ablated.model, ablated.params, images[:2])
  for kind in invariance.TRANSFORMS:
    amounts = a[f'{kind}_amount']
    moved = np.stack([transform(jnp.asarray(im), kind, jnp.float32(t)) for im in images[:2] for t in amounts])
    out = forward(ablated.model, ablated.params, moved)
    for n in layers:
      direct = np.linalg.norm(np.asarray(out.layers[f'layer{n}']).reshape(2, len(amounts), -1)
                              - np.asarray(ref.layers[f'layer{n}']).reshape(2, 1, -1), axis=-1)
      np.testing.assert_allclose(a[f'{kind}_layer{n}'], direct, rtol=1e-4, atol=1e-4)
    probs = np.asarray(jax.nn.softmax(out.logits)).reshape(2, len(amounts), -1)
    np.testing.assert_allclose(a[f'{kind}_probability'], probs[np.arange(2), :, labels[:2]], rtol=1e-4, atol=1e-6)


def test_evolution_follows_the_maps_over_every_checkpoint(ablated, tmp_path):
  a = run(ablated, tmp_path, 'evolution', '--layers', '2', '--maps', '2', '--max_images', '40')['evolution.npz']
  images, _ = split_of(ablated)
  assert list(a['steps']) == [1, 2] and a['layer2_channel'].shape == (2,)
  for t, step in enumerate(a['steps']):
    _, params, _ = checkpointing.load_params(ablated.config, ablated.workdir, int(step))
    best = per_image_max(ablated, params, images[:40], 2).max(axis=0)
    np.testing.assert_allclose(a['layer2_value'][t], best[a['layer2_channel']], rtol=1e-5)
    if t == len(a['steps']) - 1:  # the maps: spread evenly over those that fire at the last checkpoint
      alive = np.flatnonzero(best > 0)
      assert len(alive) >= 2 and list(a['layer2_channel']) == list(alive[[0, len(alive) - 1]])
  assert a['layer2_reconstruction'].shape[:2] == (2, 2)


def test_bad_arguments_say_what_to_do(trained_digits, tmp_path):
  config, workdir = trained_digits
  common = ['--config', config_path('digits'), '--workdir', workdir, '--out', str(tmp_path)]
  with pytest.raises(SystemExit):
    visualize.main(['project', *common, '--layer', '2', '--config.no_such_field=1'])
  with pytest.raises(ValueError, match='conv layer'):
    visualize.main(['project', *common, f'--config.dataset.data_dir={config.dataset.data_dir}', '--layer', '9'])
  with pytest.raises(ValueError, match=r'--layers must name layers of this network, \[1, 2, 3, 4, 5, 6, 7\]'):
    visualize.main(['invariance', *common, f'--config.dataset.data_dir={config.dataset.data_dir}', '--layers', '8'])
  bad = tmp_path / 'wrong.npy'
  np.save(bad, np.zeros((32, 32, 1), np.float32))
  with pytest.raises(ValueError, match=r'float32 \[64, 64, 1\]'):
    visualize.main(['occlusion', *common, '--image', str(bad)])


def test_to_display_undoes_the_normalisation_the_caller_describes(tfds_dir):
  images = np.random.default_rng(0).normal(size=(2, 4, 4, 1)).astype(np.float32)
  mean, std = augment.channel_stats(1)
  config = digits_config(tfds_dir)  # mean_std
  np.testing.assert_allclose(figures.to_display(images, config), np.clip(np.repeat(images * std + mean, 3, -1) / 255,
                                                                         0, 1), rtol=1e-6)
  config = digits_config(tfds_dir, input__normalization='pixel_mean')
  with pytest.raises(ValueError, match='pixel_mean=squares.pixel_mean'):
    figures.to_display(images, config)
  pixel_mean = np.concatenate([np.full((4, 2, 1), 100.0), np.full((4, 2, 1), 140.0)], axis=1)  # channel mean 120
  np.testing.assert_allclose(figures.to_display(images * 0, config, pixel_mean), np.full((2, 4, 4, 3), 120 / 255),
                             rtol=1e-6)


def _high_frequency_by_dft(filters: np.ndarray, cutoff: float) -> float:
  """The share of `[N, h, w]` filters' spectral energy (means removed) above `cutoff` cycles/px, by DFT matrices."""
  n = filters.shape[1]
  dft = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n)) / n)
  freq = np.minimum(np.arange(n), n - np.arange(n)) / n  # |frequency| of each DFT row, cycles/px
  centred = filters - filters.mean(axis=(1, 2), keepdims=True)
  power = np.abs(dft @ centred @ dft.T) ** 2
  high = np.hypot(freq[:, None], freq[None, :]) > cutoff
  return float(power[:, high].sum() / power.sum())


def test_digits_graininess_script_measures_the_run(trained_digits, capsys):
  config, workdir = trained_digits
  spec = importlib.util.spec_from_file_location('digits_graininess', os.path.join(REPO, 'scripts',
                                                                                 'digits_graininess.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  script.main(['--config', config_path('digits'), '--workdir', workdir, '--max_images', '20',
               f'--config.dataset.data_dir={config.dataset.data_dir}'])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ('conv1_high_frequency', 'layer2_projection_high_frequency'):
    assert 0 < printed[key] < 1
  _, params, step = checkpointing.load_params(config, workdir)
  kernel = np.asarray(params['conv1']['kernel'])[:, :, 0, :]  # [k, k, F], grey input
  assert printed['step'] == step and printed['images'] == 20
  assert abs(printed['conv1_high_frequency'] - _high_frequency_by_dft(np.moveaxis(kernel, -1, 0), 0.2)) < 1e-4
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if r['split'] == 'eval']
  assert printed['test_top1'] == evals[-1]['top1']
