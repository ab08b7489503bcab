"""The report site: built from a digits checkpoint and from a network without layers 3, 4, 6, 7 (two
checkpoints: feature evolution), opened in headless Chromium (Debian's `chromium`, driven by Playwright)
from file://."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import digits_config, random_params
from zfnet_jax import visualize
from zfnet_jax.data import pipeline
from zfnet_jax.interpret import report, site, topk
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing

CHROMIUM = os.environ.get('ZFNET_CHROMIUM', '/usr/bin/chromium')


FEATUREVIS_STEPS = 4  # the report's feature visualisations: few steps, the pages and data are what is tested


def build_site(config, workdir, out, **options):
  run = visualize.load_run(config, workdir)  # as `visualize report` does: interpret/ reads no checkpoints
  options.setdefault('featurevis_steps', FEATUREVIS_STEPS)
  data = report.build(config, out, run, max_images=100, occlusion_images=2, invariance_images=2, **options)
  site.write_site(out, data)
  return data


@pytest.fixture(scope='session')
def digits_report(trained_digits, tmp_path_factory):
  config, workdir = trained_digits
  out = str(tmp_path_factory.mktemp('report'))
  return config, workdir, out, build_site(config, workdir, out)


@pytest.fixture(scope='session')
def ablated_report(tfds_dir, tmp_path_factory):
  """A random-initialised network without layers 3, 4, 6 and 7, saved as two checkpoints (different random
  weights at steps 0 and 1), and its report."""
  config = digits_config(tfds_dir, model__remove_layers=(3, 4, 6, 7), model__conv_features=(8, 16, 12, 12, 24))
  model = network.create_model(config)
  workdir = str(tmp_path_factory.mktemp('ablated'))
  mngr = checkpointing.manager(workdir)
  for step in (0, 1):
    checkpointing.save(mngr, step, {'params': random_params(model, seed=step)}, model.arch)
    mngr.wait_until_finished()
  mngr.close()
  out = os.path.join(workdir, 'report')
  return config, workdir, out, build_site(config, workdir, out, featurevis_steps=0)  # the switch: none drawn


def test_layer_data_is_the_top_k_of_every_unit(digits_report):
  """Every unit of every layer is on its page, with the values an independent `stream_topk` finds."""
  config, workdir, _, data = digits_report
  model, params, _ = checkpointing.load_params(config, workdir)
  layers = [c.layer for c in model.arch.convs]
  assert sorted(data['layers']) == layers
  tops = topk.stream_topk(model, params, pipeline.split_batches(config, 'test', 100), layers, k=9)
  for n in (1, 5):
    value = np.asarray(data['layers'][n]['value'], np.float32)
    assert value.shape == (model.arch.convs[n - 1].features, 9)
    np.testing.assert_allclose(value, np.asarray(tops[n].value), rtol=1e-3, atol=1e-3)
    assert data['layers'][n]['dead'] == [bool(v <= 0) for v in np.asarray(tops[n].value)[:, 0]]


def test_index_data_comes_from_the_run(digits_report):
  """Curves and the evaluation from metrics.jsonl, the default occlusion square (image size / 7)."""
  config, workdir, _, data = digits_report
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if r['split'] == 'eval']
  assert data['curves']['eval'] == evals and data['eval'] == evals[-1]
  assert len(data['curves']['train']) == sum(r['split'] == 'train' for r in records) > 0
  assert [e['square'] for e in data['occlusion']] == [config.model.image_size // 7] * 2
  assert data['evolution'] is None  # a single checkpoint


def test_rebuild_reuses_parts_with_the_same_options(digits_report):
  config, workdir, out, data = digits_report
  sheet = os.path.join(out, data['layers'][2]['sheets'][0])
  before = os.stat(sheet).st_mtime_ns
  again = build_site(config, workdir, out)
  assert os.stat(sheet).st_mtime_ns == before
  assert again['layers'][2] == data['layers'][2]
  changed = build_site(config, workdir, out, layers=(2,), k=4)
  assert os.stat(sheet).st_mtime_ns != before and changed['layers'][2]['k'] == 4
  build_site(config, workdir, out)  # back to k=9 for the browser test


def test_layer_data_has_each_units_feature_visualisation_against_the_datasets_best(digits_report):
  """Layers 2 and up: per unit the map mean its visualisation reaches and the best over the report's 100 images (as
  a forward pass here finds it), one sprite-sheet row per unit in the layer sheets' layout; layer 1 none."""
  config, workdir, out, data = digits_report
  model, params, _ = checkpointing.load_params(config, workdir)
  images = np.concatenate([b['image'][b['mask'] > 0] for b in pipeline.split_batches(config, 'test', 100)])
  outputs = network.forward(model, params, images).layers
  assert 'featurevis' not in data['layers'][1]
  for n in (2, 3, 4, 5):
    fv, units = data['layers'][n]['featurevis'], model.arch.convs[n - 1].features
    with open(os.path.join(out, f'layer{n}.json')) as f:
      assert json.load(f)['featurevis'] == fv
    best = np.max(np.mean(np.asarray(outputs[f'layer{n}']), axis=(1, 2)), axis=0)
    np.testing.assert_allclose(fv['dataset_best'], best, rtol=1e-3, atol=1e-4)
    assert np.asarray(fv['activation']).shape == (units, 1) and fv['live'] == int(np.sum(best > 0))
    assert fv['beats_dataset'] == [bool(a[0] > b) for a, b in zip(fv['activation'], fv['dataset_best'])]
    assert len(fv['sheets']) == -(-units // report.UNITS_PER_SHEET)
    for s, sheet in enumerate(fv['sheets']):
      rows = min(report.UNITS_PER_SHEET, units - s * report.UNITS_PER_SHEET)
      assert Image.open(os.path.join(out, sheet)).size == (fv['width'], rows * fv['tile'])


def _open_pages(out: str, expected_units: dict[int, int], featurevis: bool = True) -> None:
  """Opens every page of the site in headless Chromium from file:// and checks what a reader would see; with
  `featurevis`, one feature visualisation per unit on the pages of layers 2 and up."""
  if not os.path.exists(CHROMIUM):
    pytest.fail(f'{CHROMIUM} is missing: install Debian\'s chromium (apt-get install -y chromium), or set '
                f'ZFNET_CHROMIUM to a Chromium binary')
  from playwright.sync_api import sync_playwright
  pages = sorted(f for f in os.listdir(out) if f.endswith('.html'))
  assert pages == sorted(['index.html', 'analyses.html', 'sanity.html'] + [f'layer{n}.html' for n in expected_units])
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
    try:
      for name in pages:
        page = browser.new_page()
        errors = []
        page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.on('requestfailed', lambda r: errors.append(f'{r.url}: {r.failure}'))
        page.goto('file://' + os.path.join(out, name), wait_until='load')
        broken = page.evaluate("""async () => {
          const urls = [...document.querySelectorAll('img')].map(i => i.src).concat(
              [...document.querySelectorAll('.cell, .fv')].map(c => getComputedStyle(c).backgroundImage.slice(5, -2)));
          const widths = await Promise.all([...new Set(urls)].map(u => new Promise(done => {
              const i = new Image(); i.onload = () => done([u, i.naturalWidth]); i.onerror = () => done([u, 0]);
              i.src = u; })));
          const shown = [...document.querySelectorAll('img')].map(i => [i.src, i.naturalWidth]);
          return widths.concat(shown).filter(([u, w]) => !(w > 0));
        }""")
        assert not broken, f'{name}: images that do not load: {broken}'
        assert not errors, f'{name}: {errors}'
        if name.startswith('layer'):
          ids = page.eval_on_selector_all('section.unit', 'units => units.map(u => u.id)')
          n = int(name[len('layer'):-len('.html')])
          assert ids == [f'unit-{u}' for u in range(expected_units[n])]
          visualised = page.eval_on_selector_all('section.unit',
                                                 'units => units.map(u => u.querySelectorAll(".fv").length)')
          assert visualised == [1 if featurevis and n >= 2 else 0] * expected_units[n]
          page.fill('#filter', str(expected_units[n] - 1))
          page.press('#filter', 'Enter')
          assert page.evaluate('location.hash') == f'#unit-{expected_units[n] - 1}'
        page.close()
    finally:
      browser.close()


def test_pages_load_in_chromium(digits_report):
  config, _, out, _ = digits_report
  _open_pages(out, dict(zip((1, 2, 3, 4, 5), config.model.conv_features)))


def test_report_of_a_network_without_layers_3_4_6_7(ablated_report):
  config, _, out, data = ablated_report
  evolution = data['evolution']
  assert evolution['steps'] == [0, 1] and sorted(evolution['layers'], key=int) == ['1', '2', '5']
  for n, units in (('1', 8), ('2', 16), ('5', 24)):
    channels = evolution['layers'][n]['channels']
    assert len(channels) == 8 and channels == sorted(set(channels)) and max(channels) < units
    side = report.tile_size(data['layers'][int(n)]['window'])  # a row per map, a column per checkpoint
    sheet = Image.open(os.path.join(out, evolution['layers'][n]['sprite']))
    assert sheet.size == (2 * (side + 2) - 2, 8 * (side + 2) - 2)
  # invariance at the first conv and the last hidden layer present: layer 1 and layer 5 (no fc hidden layers)
  assert sorted(k for k in data['invariance']['rotation'] if k.startswith('layer')) == ['layer1', 'layer5']
  assert [r['layer'] for r in data['architecture']] == [1, 2, 5, 8]
  _open_pages(out, {1: 8, 2: 16, 5: 24}, featurevis=False)

