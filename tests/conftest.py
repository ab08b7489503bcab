"""Shared fixtures. The whole session sees 8 CPU devices, so sharded and 1-device runs can be compared.

Compile time dominates these tests: fixtures that train are session-scoped and shared.
"""
import os

# Collectives between the 8 fake devices wait for all 8 threads; on a loaded 2-core machine that can take
# longer than XLA's 40 s default before it aborts the process.
PATIENT_COLLECTIVES = ('--xla_cpu_collective_call_terminate_timeout_seconds=900 '
                       '--xla_cpu_collective_timeout_seconds=900')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 '
                           + PATIENT_COLLECTIVES)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from zfnet_jax import config_lib, input_pipeline  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
  return os.path.join(REPO, 'configs', f'{name}.py')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data dir with the bundled digits prepared once for the session."""
  path = str(tmp_path_factory.mktemp('tfds'))
  input_pipeline.hide_accelerators_from_tf()
  config = config_lib.load(config_path('digits'), {'dataset.data_dir': path})
  input_pipeline.get_builder(config.dataset)
  return path


def digits_config(tfds_dir: str, **overrides):
  """The digits config on the session's tfds dir; `overrides` use `__` for dots (`optim__momentum=0`)."""
  return config_lib.load(config_path('digits'), {
      'dataset.data_dir': tfds_dir, **{k.replace('__', '.'): v for k, v in overrides.items()}})


@pytest.fixture(scope='session')
def trained_digits(tfds_dir, tmp_path_factory):
  """`(config, workdir)` of a short real digits run (4 epochs, ~45% test top-1) with a checkpoint."""
  from zfnet_jax import train
  workdir = str(tmp_path_factory.mktemp('digits_run'))
  config = digits_config(tfds_dir, num_epochs=4, eval_every_epochs=4, log_every_steps=1000,
                         optim__schedule='constant', optim__warmup_epochs=0.0)
  train.train_and_evaluate(config, workdir)
  return config, workdir
