"""The benchmarks: each subcommand's JSON record, the harness, and the tf.data reference, on a tiny digits net."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

from conftest import REPO, config_path
from zfnet_jax import benchmark, benchmarks, config_lib
from zfnet_jax.benchmarks import harness, input as input_benchmark
from zfnet_jax.data import augment

FIELDS = ('config', 'what', 'batch', 'devices', 'platform', 'dtype', 'images_per_s', 'step_time_s',
          'step_time_min_s', 'step_time_max_s', 'timed_steps', 'process_cpu_s_per_step', 'flops_per_step',
          'flops_per_s', 'peak_memory_bytes', 'peak_memory_source', 'jax', 'date')
TINY = {'model.conv_features': (8, 8, 8, 8, 8), 'model.fc_features': (16, 16)}  # compiles in a few seconds


def tiny_digits(**overrides):
  return config_lib.load(config_path('digits'), {**TINY, **overrides})


@pytest.mark.parametrize('what', ['train', 'infer'])
def test_each_step_measurement_is_one_json_record_with_every_field(what):
  config = tiny_digits(batch_size=8)
  options = benchmarks.Options(config_path='configs/digits.py', steps=2, warmup=1)
  [record] = [json.loads(json.dumps(r)) for r in benchmarks.BENCHMARKS[what](config, options)]
  assert set(FIELDS + ('compile_s',)) <= set(record), set(FIELDS) - set(record)
  assert (record['what'], record['batch'], record['devices'], record['timed_steps']) == (what, 8, jax.device_count(), 2)
  assert record['config'] == 'configs/digits.py' and record['dtype'] == 'float32'
  assert record['images_per_s'] == pytest.approx(8 / record['step_time_s'])
  assert record['step_time_min_s'] <= record['step_time_s'] <= record['step_time_max_s']
  assert record['flops_per_step'] > 0 and record['flops_per_s'] == pytest.approx(record['flops_per_step'] /
                                                                                 record['step_time_s'])
  assert record['peak_memory_bytes'] > 0 and record['compile_s'] > 0


def test_featurevis_rate_is_units_times_steps_per_second_beside_lucent_where_there():
  config = tiny_digits()
  options = benchmarks.Options(config_path='configs/digits.py', steps=3, units=2)
  [record] = benchmarks.BENCHMARKS['featurevis'](config, options)
  assert set(FIELDS + ('first_call_s',)) <= set(record), set(FIELDS) - set(record)
  assert (record['what'], record['batch'], record['units'], record['timed_steps'], record['layer']) == (
      'featurevis', 2, 2, 3, 5)
  assert record['units_x_steps_per_s'] == record['images_per_s'] == pytest.approx(2 / record['step_time_s'])
  assert record['first_call_s'] > 3 * record['step_time_s'] > 0  # the first call compiles, then runs the 3 steps
  if os.environ.get('ZFNET_REFERENCE_PYTHON'):  # lucent's venv (scripts/reference_featurevis.py)
    assert record['ratio'] == pytest.approx(record['units_x_steps_per_s'] / record['lucent_units_x_steps_per_s'])
  else:
    assert 'ratio' not in record
  with pytest.raises(ValueError, match='--units must be at least 1, got 0'):
    harness.Options(config_path='c.py', units=0)


def test_report_timing_adds_up_over_every_unit():
  config = tiny_digits(eval_batch_size=8, **{'model.remove_layers': (3, 4)})  # conv layers 1, 2, 5
  options = benchmarks.Options(config_path='configs/digits.py', images=12)
  [record] = benchmarks.BENCHMARKS['report'](config, options)
  assert set(FIELDS) <= set(record)
  assert (record['what'], record['batch'], record['images'], record['units']) == ('report_layers', 8, 12, 24)
  assert record['top9_job_s'] == pytest.approx(record['stream_s'] + record['project_s'])
  assert record['report_layers_s'] == pytest.approx(record['draw_s'] + record['sprites_s'])
  assert record['step_time_s'] == record['report_layers_s']
  assert record['report_over_top9'] == pytest.approx(record['report_layers_s'] / record['top9_job_s'])
  assert 0 < record['report_layers_cpu_s'] == record['process_cpu_s_per_step']  # the pages' half alone
  assert record['top9_job_cpu_s'] > 0


@pytest.mark.skipif(not os.path.exists(os.environ.get('ZFNET_CHROMIUM', '/usr/bin/chromium')), reason='no Chromium')
def test_pageload_times_each_page_with_its_units_and_bytes(tmp_path):
  pytest.importorskip('playwright')
  PIL.Image.new('L', (96, 48), 128).save(tmp_path / 'layer1_0.png')
  (tmp_path / 'layer1.html').write_text('<img src="layer1_0.png">' + '<section class="unit">u</section>' * 3)
  (tmp_path / 'index.html').write_text('<a href="layer1.html">layer 1</a>')
  shot = tmp_path / 'shot.png'
  options = benchmarks.Options(config_path='configs/digits.py', steps=2, site=str(tmp_path), screenshot=str(shot))
  records = benchmarks.BENCHMARKS['pageload'](tiny_digits(), options)
  assert [(r['what'], r['batch'], r['timed_steps']) for r in records] == [('pageload index.html', 0, 2),
                                                                          ('pageload layer1.html', 3, 2)]
  sizes = {f: os.path.getsize(tmp_path / f) for f in ('index.html', 'layer1.html', 'layer1_0.png')}
  assert [r['page_and_sprite_bytes'] for r in records] == [sizes['index.html'],
                                                           sizes['layer1.html'] + sizes['layer1_0.png']]
  assert all(0 < r['load_s'] == r['step_time_s'] for r in records)
  assert PIL.Image.open(shot).size == (1280, 900)


def test_command_line_prints_one_json_line_and_rejects_unknown_subcommands():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  done = subprocess.run([sys.executable, '-m', 'zfnet_jax.benchmark', 'infer', '--config', 'configs/digits.py',
                         '--config.batch_size=4', '--config.model.conv_features=(8,8,8,8,8)', '--steps', '1',
                         '--warmup', '0'], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  [line] = done.stdout.splitlines()
  record = json.loads(line)
  assert (record['what'], record['batch'], record['timed_steps'], record['devices']) == ('infer', 4, 1, 1)
  usage = ('usage: python -m zfnet_jax.benchmark train|infer|deconv|occlusion|report|pageload|input|attribute|'
           'featurevis --config CFG')
  with pytest.raises(SystemExit, match=re.escape(usage) + r'.*or device --config CFG'):
    benchmark.main(['benchmark', 'deconvolve'])


def test_harness_times_each_step_and_checks_its_options():
  calls = []
  times = harness.time_steps(lambda: calls.append(1), warmup=2, num_steps=3)
  assert len(calls) == 5 and len(times.wall) == len(times.cpu) == 3 and min(times.wall) >= 0
  with pytest.raises(ValueError, match='--steps must be at least 1, got 0'):
    harness.Options(config_path='c.py', steps=0)
  with pytest.raises(ValueError, match='--warmup must be at least 0'):
    harness.Options(config_path='c.py', warmup=-1)
  with pytest.raises(ValueError, match='--batch must be at least 1, got 0'):
    harness.Options(config_path='c.py', batch=0)


def test_harness_and_train_load_neither_tensorflow_nor_playwright():
  code = ('import sys; from zfnet_jax import benchmarks; from zfnet_jax.benchmarks import harness, train; '
          'print(sorted(m for m in ("tensorflow", "playwright", "orbax") if m in sys.modules))')
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ['[]']


def test_synthetic_batch_is_sharded_uint8_squares_and_rejects_uneven_batches():
  config = tiny_digits()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  batch = harness.synthetic_batch(mesh, config, 16)
  assert batch['image'].shape == (16, 72, 72, 1) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (16,) and int(batch['label'].max()) < 10 and int(batch['mask'].sum()) == 16
  assert len(batch['image'].sharding.device_set) == jax.device_count()
  with pytest.raises(ValueError, match=re.escape(f'config.batch_size=6 must be a positive multiple of the '
                                                 f'{jax.device_count()} devices')):
    harness.synthetic_batch(mesh, config, 6)


def test_input_measurement_of_the_grain_loader_from_a_resume_step(tfds_dir):
  config = config_lib.load(config_path('digits'), {'dataset.data_dir': tfds_dir, 'batch_size': 16})
  got = input_benchmark.measure(config, 'grain', start_step=88, num_steps=3)  # the last step of epoch 0
  assert set(got) == {'images_per_s', 'cpu_ms_per_image', 'first_batch_s', 'host_bytes_per_image', 'peak_rss_bytes'}
  assert got['host_bytes_per_image'] == 72 * 72 * 1 + 4  # a uint8 square and an int32 label
  assert got['images_per_s'] > 0 and got['first_batch_s'] > 0 and got['peak_rss_bytes'] > 0
  with pytest.raises(ValueError, match="input kind must be one of \\('grain', 'tfdata'\\), got 'torch'"):
    input_benchmark.measure(config, 'torch', start_step=0, num_steps=1)


def test_tfdata_reference_crops_and_subtracts_the_one_grey_mean(tfds_dir):
  config = config_lib.load(config_path('digits'), {'dataset.data_dir': tfds_dir})
  batch = next(input_benchmark.tfdata_batches(config, 32))
  assert batch['image'].shape == (32, 64, 64, 1) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  grey = float(augment.channel_stats(1)[0][0])  # the mean of ImageNet's three channel means, not red's 123.675
  assert grey == pytest.approx(np.mean(augment.IMAGENET_MEAN))
  assert batch['image'].min() == pytest.approx(-grey)  # the digits' black background, minus the mean
  assert batch['image'].max() <= 255 - grey + 1e-3


def test_attribute_times_each_method_beside_a_reference(tmp_path, monkeypatch):
  """One record per method of the engine, `--batch` maps per call; with ZFNET_REFERENCE_PYTHON the reference's
  maps/s (here a stand-in script printing known numbers times the batch it was given) and the ratio join each
  record."""
  from zfnet_jax.benchmarks import attribute
  from zfnet_jax.interpret import attribution
  fake = tmp_path / 'reference.py'
  fake.write_text('import json, sys\nb = int(sys.argv[sys.argv.index("--batch") + 1])\n'
                  'print(json.dumps({"threads": 2, "gradient": 4.0 * b, "gradcam": 8.0 * b}))\n')
  monkeypatch.setattr(attribute, 'REFERENCE', str(fake))
  monkeypatch.setattr(attribute, 'STEPS', 2)
  monkeypatch.setattr(attribute, 'SAMPLES', 2)
  monkeypatch.setenv('ZFNET_REFERENCE_PYTHON', sys.executable)
  options = benchmarks.Options(config_path='configs/digits.py', steps=2, warmup=0, batch=3)
  records = [json.loads(json.dumps(r)) for r in benchmarks.BENCHMARKS['attribute'](tiny_digits(), options)]
  assert [r['method'] for r in records] == list(attribution.METHODS)
  for r in records:
    assert set(FIELDS) <= set(r) and (r['what'], r['batch'], r['timed_steps']) == ('attribute', 3, 2)
    assert r['maps_per_s'] == pytest.approx(3 / r['step_time_s']) == pytest.approx(r['images_per_s'])
    expected = {'gradient': 12.0, 'gradcam': 24.0}.get(r['method'])
    assert r.get('captum_maps_per_s') == expected
    if expected:
      assert r['ratio'] == pytest.approx(r['maps_per_s'] / expected) and r['reference_threads'] == 2
