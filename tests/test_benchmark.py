"""The benchmark harness: every subcommand's JSON record, on the digits config."""
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from conftest import REPO, config_path
from zfnet_jax import benchmark, config_lib

FIELDS = ('config', 'what', 'batch', 'devices', 'platform', 'dtype', 'images_per_s', 'step_time_s',
          'step_time_min_s', 'step_time_max_s', 'timed_steps', 'process_cpu_s_per_step', 'flops_per_step',
          'flops_per_s', 'peak_memory_bytes', 'peak_memory_source', 'compile_s', 'jax', 'date')


@pytest.mark.parametrize('what', ['train', 'infer'])
def test_each_measurement_is_one_json_record_with_every_field(what):
  config = config_lib.load(config_path('digits'), {'batch_size': 8})
  options = benchmark.Options(config_path='configs/digits.py', steps=2, warmup=1)
  [record] = [json.loads(json.dumps(r)) for r in benchmark.BENCHMARKS[what](config, options)]
  assert set(FIELDS) <= set(record), set(FIELDS) - set(record)
  assert (record['what'], record['batch'], record['devices'], record['timed_steps']) == (what, 8, jax.device_count(), 2)
  assert record['config'] == 'configs/digits.py' and record['dtype'] == 'float32'
  assert record['images_per_s'] > 0 and record['step_time_min_s'] <= record['step_time_s'] <= record['step_time_max_s']
  assert record['flops_per_step'] > 0 and record['flops_per_s'] > 0 and record['peak_memory_bytes'] > 0


def test_command_line_prints_one_json_line_and_rejects_unknown_subcommands():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  done = subprocess.run([sys.executable, '-m', 'zfnet_jax.benchmark', 'infer', '--config', 'configs/digits.py',
                         '--config.batch_size=4', '--steps', '1', '--warmup', '0'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  [line] = done.stdout.splitlines()
  assert json.loads(line)['batch'] == 4
  with pytest.raises(SystemExit, match=re.escape('usage: python -m zfnet_jax.benchmark train|infer')):
    benchmark.main(['benchmark', 'deconvolve'])


def test_input_measurement_of_the_grain_loader_from_a_resume_step(tfds_dir):
  config = config_lib.load(config_path('digits'), {'dataset.data_dir': tfds_dir, 'batch_size': 16})
  got = benchmark.measure_input(config, 'grain', start_step=88, num_steps=3)  # the last step of epoch 0
  assert set(got) == {'images_per_s', 'cpu_ms_per_image', 'first_batch_s', 'host_bytes_per_image', 'peak_rss_bytes'}
  assert got['host_bytes_per_image'] == 72 * 72 * 1 + 4  # a uint8 square and an int32 label
  assert got['images_per_s'] > 0 and got['first_batch_s'] > 0 and got['peak_rss_bytes'] > 0
