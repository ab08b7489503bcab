"""Every `python -m zfnet_jax.visualize` command on two ablated digits networks (without layers 6 and 7;
without layers 3 and 4), each trained for two steps: the arrays each command writes against an
independent computation with `network.forward` over the same images."""
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path, digits_config
from zfnet_jax import visualize
from zfnet_jax.data import pipeline
from zfnet_jax.interpret import invariance
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


def test_topk_values_are_the_strongest_activations_over_the_images(ablated, tmp_path):
  arrays = run(ablated, tmp_path, 'topk', '--layers', '1,5', '--maps', '3', '--k', '4', '--max_images', '40')
  images, _ = split_of(ablated)
  assert sorted(arrays) == ['topk_layer1.npz', 'topk_layer5.npz']
  for layer in (1, 5):
    a = arrays[f'topk_layer{layer}.npz']
    best = per_image_max(ablated, ablated.params, images[:40], layer)  # [40, 8]
    np.testing.assert_allclose(a['all_value'], -np.sort(-best, axis=0)[:4].T, rtol=1e-5)
    np.testing.assert_allclose(a['all_value'], np.take_along_axis(best.T, a['all_image'], axis=1), rtol=1e-5)
    assert a['channel'].shape == (3,) and np.array_equal(a['value'], a['all_value'][a['channel']])
    r = a['patch'].shape[2]
    assert a['reconstruction'].shape == a['patch'].shape == (3, 4, r, r, 1)
    windows, patches = a['window'].reshape(-1, 2), a['patch'].reshape(-1, r, r, 1)
    for (top, left), image, patch in zip(windows, a['image'].ravel(), patches):
      np.testing.assert_array_equal(patch, images[image, top:top + r, left:left + r])


def test_filters_are_the_checkpoints_first_layer(ablated, tmp_path):
  arrays = run(ablated, tmp_path, 'filters')
  np.testing.assert_array_equal(arrays['filters_layer1.npy'], ablated.params['conv1']['kernel'])


def test_occlusion_entries_equal_forward_passes_on_occluded_images(ablated, tmp_path):
  a = run(ablated, tmp_path, 'occlusion', '--index', '3', '--size', '16', '--stride', '12')['occlusion.npz']
  images, labels = split_of(ablated)
  np.testing.assert_array_equal(a['image'], images[3])
  assert a['label'] == labels[3] and list(a['rows']) == list(a['cols']) == [0, 12, 24, 36, 48]
  occluded = np.stack([images[3]] * 25)
  for i, (y, x) in enumerate((y, x) for y in a['rows'] for x in a['cols']):
    occluded[i, y:y + 16, x:x + 16] = 0.0
  out = forward(ablated.model, ablated.params, occluded)
  top = np.asarray(forward(ablated.model, ablated.params, images[3:4]).layers['layer5'][0])
  assert a['feature'] == np.argmax(top.max(axis=(0, 1)))
  np.testing.assert_allclose(a['activity'].ravel(), np.asarray(out.layers['layer5'][..., a['feature']]).sum((1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a['probability'].ravel(), jax.nn.softmax(out.logits)[:, labels[3]], rtol=1e-4, atol=1e-6)


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
