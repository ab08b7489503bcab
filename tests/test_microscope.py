"""The report at ImageNet scale (issue 19): the top-k job sharded over devices and processes equals one device's,
per-unit class statistics equal a direct computation, and the report's options."""
import json
import os
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

from conftest import PATIENT_COLLECTIVES, config_path, launch_processes, small_net
from zfnet_jax import config_lib, parallel, visualize
from zfnet_jax.interpret import classes, figures, report, site, topk
from zfnet_jax.model import foreign
from zfnet_jax.training import checkpointing, weights

CLASSES = 10


def _stream(images, labels, mask, batch):
  """Batches as `pipeline.split_batches` yields them: `image`, `label`, `mask`, `index`."""
  return [{'image': images[i:i + batch], 'label': labels[i:i + batch], 'mask': mask[i:i + batch],
           'index': np.arange(i, i + batch, dtype=np.int32)} for i in range(0, len(images), batch)]


def test_sharded_top_k_and_class_statistics_equal_one_device_and_a_direct_computation():
  model, params = small_net('floor')
  size = model.arch.image_size
  rng = np.random.default_rng(3)
  images = rng.normal(size=(40, size, size, 1)).astype(np.float32)
  labels = rng.integers(0, CLASSES, 40).astype(np.int32)
  mask = np.ones(40, np.int32)
  mask[-5:] = 0  # padding: never counts
  layers = (2, 5)
  one = topk.stream_units(model, params, _stream(images, labels, mask, 8), layers, k=6,
                          mesh=parallel.make_mesh(jax.local_devices()[:1]), num_classes=CLASSES)
  four = topk.stream_units(model, params, _stream(images, labels, mask, 8), layers, k=6,
                           mesh=parallel.make_mesh(jax.local_devices()[:4]), num_classes=CLASSES)
  outputs = jax.jit(lambda x: model.apply({'params': params}, x, mutable=['intermediates']))(images)[1]
  for n in layers:
    for a, b in zip(one.tops[n], four.tops[n]):  # values, image indices, positions
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(one.classes[n].sum), np.asarray(four.classes[n].sum), rtol=1e-6)
    acts = np.asarray(outputs['intermediates'][f'layer{n}'][0])  # [N, H, W, C]
    best = acts.reshape(len(acts), -1, acts.shape[-1]).max(axis=1)  # each image's strongest position per unit
    keep = mask > 0
    direct = np.stack([best[keep & (labels == c)].mean(axis=0) if np.any(keep & (labels == c))
                       else np.full(best.shape[1], np.nan) for c in range(CLASSES)], axis=1)  # [C, N]
    means = classes.class_means(four.classes[n])
    np.testing.assert_allclose(means, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(four.classes[n].count), np.bincount(labels[keep], minlength=CLASSES))
    for u, unit in enumerate(classes.top_classes(means, labels[np.asarray(four.tops[n].image)])):
      order = np.argsort(-direct[u], kind='stable')
      assert [c for c, _ in unit['by_mean']] == [int(c) for c in order[:5]]
      top_images = np.argsort(-np.where(keep, best[:, u], -np.inf), kind='stable')[:6]
      counts = np.bincount(labels[top_images], minlength=CLASSES)
      frequent = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))[:5]
      assert unit['in_top'] == [[int(c), int(counts[c])] for c in frequent]
      rest = np.delete(direct[u], np.argmax(direct[u])).mean()
      total = direct[u].max() + rest
      expected = (direct[u].max() - rest) / total if total > 0 else 0.0  # a silent unit: 0
      np.testing.assert_allclose(classes.selectivity(means)[u], expected, rtol=1e-5)
  np.testing.assert_array_equal(four.labels[:35], labels[:35])


def test_report_images_default_to_the_whole_split():
  parse = lambda *a: visualize._parser().parse_args(['report', '--config', 'c', '--workdir', 'w', *a])  # noqa: E731
  assert parse().images is None
  assert parse('--images', 'all').images is None
  assert parse('--images', '300').images == 300
  with pytest.raises(SystemExit):
    parse('--images', '0')


def _report(tfds_dir, workdir, out, processes):
  """`visualize report` of the digits run over its first 128 test images as `processes` gloo processes, 4 devices
  in all."""
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={4 // processes} ' + PATIENT_COLLECTIVES,
         'TF_CPP_MIN_LOG_LEVEL': '2', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  args = [sys.executable, '-m', 'zfnet_jax.visualize', 'report', '--config', config_path('digits'), '--workdir',
          workdir, '--out', out, '--images', '128', '--layers', '1,5', '--examples', '1',
          f'--config.dataset.data_dir={tfds_dir}', '--config.eval_batch_size=32', '--featurevis_steps', '4']
  procs = launch_processes(args, processes, env)
  for p in procs:
    output = p.communicate(timeout=600)[0]
    assert p.returncode == 0, output[-3000:]


def test_two_gloo_processes_give_the_layer_data_of_one(trained_digits, tfds_dir, tmp_path):
  config, workdir = trained_digits
  outs = {n: str(tmp_path / f'report_{n}') for n in (1, 2)}
  for processes, out in outs.items():
    _report(tfds_dir, workdir, out, processes)
  for n in (1, 5):
    one, two = (json.load(open(os.path.join(outs[p], f'layer{n}.json'))) for p in (1, 2))
    assert one['images'] == two['images'] == 128
    for field in ('value', 'image', 'y', 'x', 'dead', 'classes', 'class_selectivity', 'sheets'):
      assert one[field] == two[field], field
    for sheet in one['sheets']:  # every tile drawn by the process that holds its image
      from PIL import Image
      a, b = (np.asarray(Image.open(os.path.join(outs[p], sheet))) for p in (1, 2))
      assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
  one, two = (json.load(open(os.path.join(outs[p], 'layer5.json')))['featurevis'] for p in (1, 2))
  np.testing.assert_allclose(one['dataset_best'], two['dataset_best'], rtol=1e-5)  # a pass over both processes
  np.testing.assert_allclose(one['activation'], two['activation'], rtol=1e-3, atol=1e-3)  # process 0's 2 devices
  assert os.path.exists(os.path.join(outs[2], 'index.html'))


class TorchvisionAlexNet(torch.nn.Module):
  """torchvision's AlexNet exactly as `torchvision.models.alexnet` defines it (torchvision/models/alexnet.py:
  `features`, `avgpool`, `classifier` with the same module indices, so the same state-dict keys), written out
  here because torchvision cannot be installed beside this environment's torch (PyPI's torchvision wheels pin
  other torch versions). Checked against `torchvision.models.alexnet()` itself by hand: docs/PERFORMANCE.md."""

  def __init__(self, num_classes: int = 1000, widths=(64, 192, 384, 256, 256), hidden: int = 4096):
    super().__init__()
    nn = torch.nn
    a, b, c, d, e = widths
    self.features = nn.Sequential(
        nn.Conv2d(3, a, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(a, b, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(b, c, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c, d, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(d, e, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=0.5), nn.Linear(e * 6 * 6, hidden), nn.ReLU(inplace=True),
        nn.Dropout(p=0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _torchvision_logits_and_ours(net, config, path, workdir):
  torch.save(net.state_dict(), path)
  weights.import_weights(path, config, workdir)
  model, params, _ = checkpointing.load_params(config, workdir)
  x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = net.eval()(x).numpy()
  return expected, np.asarray(model.apply({'params': params}, x.permute(0, 2, 3, 1).numpy()))


def test_torchvision_alexnet_imports_with_its_logits(tmp_path):
  torch.manual_seed(0)
  net = TorchvisionAlexNet()  # torchvision's own random initialisation
  config = config_lib.load(config_path('alexnet_torchvision'))
  expected, got = _torchvision_logits_and_ours(net, config, str(tmp_path / 'alexnet.pth'), str(tmp_path / 'run'))
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5


def test_torchvision_layout_round_trips_and_refuses_what_it_cannot_express(tmp_path):
  torch.manual_seed(1)
  narrow = {'model.conv_features': (8, 16, 24, 24, 16), 'model.fc_features': (32, 32), 'model.num_classes': 10}
  net = TorchvisionAlexNet(10, (8, 16, 24, 24, 16), 32)
  config = config_lib.load(config_path('alexnet_torchvision'), narrow)
  expected, got = _torchvision_logits_and_ours(net, config, str(tmp_path / 'narrow.pth'), str(tmp_path / 'run'))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  out = str(tmp_path / 'back.safetensors')
  weights.export_weights(config, str(tmp_path / 'run'), out, layout='torchvision')
  back = safetensors.torch.load_file(out)
  original = net.state_dict()
  assert sorted(back) == sorted(original)
  for key in original:
    np.testing.assert_array_equal(back[key].numpy(), original[key].numpy())
  weights.import_weights(out, config, str(tmp_path / 'again'))  # the exported file imports as it was
  jax.tree_util.tree_map(np.testing.assert_array_equal, checkpointing.load_params(config, str(tmp_path / 'run'))[1],
                         checkpointing.load_params(config, str(tmp_path / 'again'))[1])
  # strict: a missing key, and a network whose last map is not 6x6, fail clearly
  torch.save({k: v for k, v in original.items() if k != 'features.8.bias'}, str(tmp_path / 'missing.pth'))
  with pytest.raises(foreign.StateDictMismatchError, match='missing key features.8.bias'):
    weights.import_weights(str(tmp_path / 'missing.pth'), config, str(tmp_path / 'x'))
  with pytest.raises(foreign.NotExpressibleError, match='last map is 7x7'):
    weights.import_weights(str(tmp_path / 'narrow.pth'), config_lib.load(config_path('alexnet_torchvision'), {
        **narrow, 'model.image_size': 256}), str(tmp_path / 'y'))
  assert not os.path.exists(tmp_path / 'x') or not os.listdir(tmp_path / 'x')


class _Payload:
  """Runs code when unpickled (what a malicious .pth does)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def test_a_pickle_payload_in_a_weights_file_runs_nothing(tmp_path):
  marker = str(tmp_path / 'payload_ran')
  path = str(tmp_path / 'alexnet.pth')
  torch.save({'features.0.weight': _Payload(marker)}, path)
  with pytest.raises(ValueError, match='was refused: it holds more than tensors'):
    weights.import_weights(path, config_lib.load(config_path('alexnet_torchvision')), str(tmp_path / 'run'))
  assert not os.path.exists(marker)


@pytest.mark.parametrize('window,channels,normalization', [(171, 3, 'mean_std'), (11, 1, 'mean'), (48, 3, 'mean')])
def test_tiles_drawn_on_the_device_match_the_figures_display(window, channels, normalization):
  """`report._jitted_tiles` (display arithmetic and area shrinking in one step) draws what `figures` and
  `report.resize` draw, within rounding."""
  config = config_lib.load(config_path('default'), {'input.normalization': normalization})
  rng = np.random.default_rng(0)
  recon = rng.normal(size=(5, window, window, channels)).astype(np.float32)
  patch = (rng.normal(size=(5, window, window, channels)) * 60).astype(np.float32)
  side = report.tile_size(window)
  offset, scale = report.display_affine(config, channels)
  got_recon, got_patch = report._jitted_tiles(window, side, offset, scale)(recon, patch)
  want_recon = report.resize(figures.reconstruction_display(recon), side)
  want_patch = report.resize(figures.to_display(patch, config), side)
  assert np.abs(np.asarray(got_recon, int) - want_recon).max() <= 2
  assert np.abs(np.asarray(got_patch, int) - want_patch).max() <= 2


def test_unit_cards_name_their_top_classes_and_sort_by_class_selectivity():
  layer = {'layer': 2, 'k': 1, 'tile': 8, 'cell_width': 30, 'units': 2, 'units_per_sheet': 64, 'sheets': ['s.png'],
           'window': 8, 'images': 4, 'value': [[1.0], [2.0]], 'image': [[0], [1]], 'y': [[0], [0]], 'x': [[0], [0]],
           'dead': [False, False], 'class_selectivity': [0.25, 0.75],
           'classes': [{'by_mean': [[3, 'cat <3>', 1.0]], 'in_top': [[3, 'cat <3>', 1]]},
                       {'by_mean': [[1, 'dog', 2.0]], 'in_top': [[1, 'dog', 1]]}]}
  page = site.layer_page(layer, 'test', [2])
  assert 'top classes: cat &lt;3&gt;; in its top images: cat &lt;3&gt; (1); class selectivity 0.25' in page
  assert 'data-class-selectivity="0.75"' in page and '<option value="classSelectivity">' in page
