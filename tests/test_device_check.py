"""scripts/device_check.sh, the one command for a GPU or TPU host, run in its --smoke mode (every part on CPU at
tiny sizes) so it cannot rot; the peak table, the model-FLOP count and the Markdown table it writes."""
import os
import re
import subprocess
import sys

import jax
import pytest

from conftest import REPO, config_path
from zfnet_jax import config_lib
from zfnet_jax.benchmarks import device
from zfnet_jax.interpret import attribution
from zfnet_jax.model import network

PARTS = ('devices', 'train', 'profile', 'maxpool', 'interpret', 'input_data', 'input')


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """`(records, table)` of one `scripts/device_check.sh --smoke` run."""
  out = tmp_path_factory.mktemp('device_check')
  env = {**os.environ, 'PYTHON': sys.executable, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run(['scripts/device_check.sh', '--smoke', '--out', str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  table = (out / 'table.md').read_text()
  assert done.stdout.strip() == table.strip()
  return device.read_jsonl(str(out / 'results.jsonl')), table


def positive(*values):
  return all(isinstance(v, (int, float)) and v > 0 for v in values)


def test_smoke_runs_every_part_in_its_own_budget(smoke):
  records, _ = smoke
  status = {r['part']: r for r in records if r['what'] == 'part'}
  assert list(status) == list(PARTS)
  assert all(r['status'] == 'ok' and r['exit_code'] == 0 and 0 <= r['seconds'] <= r['budget_s']
             for r in status.values())
  [devices] = [r for r in records if r['what'] == 'devices']
  assert devices['platform'] == 'cpu' and positive(devices['devices'], devices['cpu_cores'])
  assert (devices['peak_bfloat16_tflops'], devices['peak_source']) == (1.0, '--peak_tflops')


def test_smoke_train_and_infer_in_both_dtypes_with_model_flop_utilisation(smoke):
  records, _ = smoke
  steps = {(r['what'], r['dtype']): r for r in records if r.get('part') == 'train' and r['what'] != 'part'}
  assert set(steps) == {(w, d) for w in ('train', 'infer') for d in ('bfloat16', 'float32')}
  forward = device.forward_flops(network.create_model(config_lib.load(config_path('default'), {
      'model.conv_features': (8,) * 5, 'model.fc_features': (16, 16), 'model.image_size': 64})).arch)
  for (what, dtype), r in steps.items():
    assert r['batch'] == 8 and positive(r['images_per_s'], r['flops_per_step'], r['mfu'])
    assert r['model_flops_per_image'] == (3 if what == 'train' else 1) * forward
    assert r['mfu'] == pytest.approx(r['model_flops_per_image'] * r['images_per_s'] / 1e12)  # the smoke's 1 TFLOP/s
  [profile] = [r for r in records if r['what'] == 'profile']
  assert profile['dtype'] == 'bfloat16' and positive(profile['device_busy_s_per_step'])
  assert len(profile['top_ops']) >= 3 and all(positive(o['ms_per_step']) for o in profile['top_ops'])
  assert os.path.isdir(profile['profile_dir'])


def test_smoke_maxpool_interpret_and_input_rates(smoke):
  records, _ = smoke
  pools = {(r['implementation'], r['dtype']): r for r in records if r['what'] == 'maxpool'}
  assert set(pools) == {(i, d) for i in ('switches', 'reduce_window') for d in ('bfloat16', 'float32')}
  assert all(positive(r['images_per_s']) for r in pools.values())
  for dtype in ('bfloat16', 'float32'):
    r = pools['switches', dtype]
    assert positive(r['speedup_over_reduce_window']) and r['max_abs_gradient_difference'] < 1e-2
  assert r['pools'] == [[32, 32, 8], [8, 8, 8], [3, 3, 8]]  # conv1, conv2, conv5 maps of the 64 px network
  interpret = [r for r in records if r.get('part') == 'interpret' and r['what'] != 'part']
  assert [r['layer'] for r in interpret if r['what'] == 'deconv'] == [1, 2, 3, 4, 5]
  assert all(positive(r['projections_per_s']) for r in interpret if r['what'] == 'deconv')
  [occ] = [r for r in interpret if r['what'] == 'occlusion']
  [rep] = [r for r in interpret if r['what'] == 'report_layers']
  assert positive(occ['seconds_per_image'], rep['top9_job_s'], rep['images'])
  assert {r['method'] for r in interpret if r['what'] == 'attribute'} == set(attribution.METHODS)
  assert all(positive(r['maps_per_s']) for r in interpret if r['what'] == 'attribute')
  [fv] = [r for r in interpret if r['what'] == 'featurevis']
  assert fv['units'] == 8 and positive(fv['units_x_steps_per_s'])  # every channel of conv5, capped at its 8
  assert {r['what']: r['status'] for r in interpret if 'status' in r} == {
      name: 'not in this version' for name in ('attribute', 'featurevis') if name not in device_benchmarks()}
  [grain] = [r for r in records if r['what'] == 'input']
  assert positive(grain['images_per_s'], grain['tfdata_images_per_s'], grain['workers'])
  workers = [r['workers'] for r in records if r['what'] == 'input_workers']
  assert workers == sorted({max(1, grain['workers'] // 2), 2 * grain['workers']})


def device_benchmarks():
  from zfnet_jax.benchmarks import BENCHMARKS
  return BENCHMARKS


def test_smoke_table_has_a_row_with_numbers_for_every_measurement(smoke):
  records, table = smoke
  assert table.startswith(f'### 1 x cpu (cpu), {os.cpu_count()} host cores, jax {jax.__version__}')
  rows = [line.split(' | ') for line in table.splitlines() if line.startswith('| ') and not line.startswith('| part')]
  measured = [r for r in records if r['what'] not in ('devices', 'part')]
  assert len(rows) == len(measured)
  number = re.compile(r'^[\d,.]+( [a-z/]+)?$')
  for row, record in zip(rows, measured):
    assert row[0] == '| ' + record['part']
    if 'status' not in record:
      assert number.match(row[4]), row
  train = [row for row in rows if row[1] == 'train']
  assert len(train) == 2 and all(re.match(r'^\d+\.\d%$', row[7]) for row in train)  # MFU
  assert any('tf.data' in row[8] and 'train step (best)' in row[8] for row in rows if row[0] == '| input')


def test_peak_table_names_each_listed_device_kind_and_takes_an_override():
  kinds = {'NVIDIA H100 80GB HBM3': 'H100 SXM', 'NVIDIA H100 PCIe': 'H100 PCIe', 'NVIDIA H200': 'H200 SXM',
           'NVIDIA A100-SXM4-80GB': 'A100', 'NVIDIA A100 80GB PCIe': 'A100', 'TPU v4': 'TPU v4',
           'TPU v5 lite': 'TPU v5e', 'TPU v5': 'TPU v5p', 'TPU v5p': 'TPU v5p', 'TPU v6 lite': 'TPU v6e'}
  for kind, name in kinds.items():
    peaks, source = device.peak_tflops(kind)
    assert source == name and peaks['bfloat16'] >= peaks['float32'] > 0, kind
  assert device.peak_tflops('NVIDIA H100 80GB HBM3')[0] == {'bfloat16': 989.5, 'float32': 494.5}
  assert device.peak_tflops('cpu') == (None, "unknown device kind 'cpu': pass --peak_tflops=BF16,F32")
  assert device.peak_tflops('NVIDIA L4', '121,60') == ({'bfloat16': 121.0, 'float32': 60.0}, '--peak_tflops')
  with pytest.raises(ValueError, match=r'--peak_tflops takes BF16\[,F32\] TFLOP/s per device'):
    device.peak_tflops('cpu', '0')


def test_model_flops_of_zfnet_match_xla_count_of_its_forward_pass():
  config = config_lib.load(config_path('default'))
  model = network.create_model(config)
  flops = device.forward_flops(model.arch)
  assert flops == pytest.approx(2.48e9, rel=0.01)  # 224 px ZFNet: 2 x 1.24 G multiply-adds per image
  params = jax.eval_shape(lambda: network.init_params(model, jax.random.key(0)))
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jax.numpy.float32)
  xla = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, image).cost_analysis()['flops']
  assert xla == pytest.approx(flops, rel=0.1)  # XLA also counts ReLUs and pools, and not the padding


def test_unknown_part_and_a_timed_out_part_in_the_table():
  with pytest.raises(ValueError, match=r"--parts: unknown \['gpu'\]; the parts are devices,train,profile"):
    list(device.run(config_lib.load(config_path('digits')), device.harness.Options(config_path='c', parts='gpu')))
  table = device.markdown([{'what': 'part', 'part': 'train', 'status': 'timeout', 'exit_code': 124, 'seconds': 201,
                            'budget_s': 200}])
  assert table.splitlines()[-1] == '| train | part |  |  | - | - | - | - | timeout after 201 s (budget 200 s) |'
