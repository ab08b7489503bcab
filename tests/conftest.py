"""Shared fixtures. The whole session sees 8 CPU devices, so sharded and 1-device runs can be compared.

Compile time dominates these tests: fixtures that train are session-scoped and shared, and one persistent
XLA cache serves the session and every process it starts (CLI runs, notebook kernels). Each
`train_and_evaluate`, each launch, jits its steps anew, and a new `jax.jit` of the same program compiles
it again (~10 s of CPU for the digits train step) unless the cache has it; the cache hands back the same
executable, so results stay bit-identical.
"""
import atexit
import contextlib
import io
import os
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import NamedTuple
from unittest import mock

# Collectives between the 8 fake devices wait for all 8 threads; on a loaded 2-core machine that can take
# longer than XLA's 40 s default before it aborts the process.
PATIENT_COLLECTIVES = ('--xla_cpu_collective_call_terminate_timeout_seconds=900 '
                       '--xla_cpu_collective_timeout_seconds=900')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 '
                           + PATIENT_COLLECTIVES)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # before JAX is imported: it reads these once
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='zfnet_tests_xla_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.1'  # programs, not single eager operations
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zfnet_jax import config_lib  # noqa: E402
from zfnet_jax.data import sources  # noqa: E402
from zfnet_jax.interpret import deconvnet  # noqa: E402
from zfnet_jax.model import network  # noqa: E402
from zfnet_jax.training import loop  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
  return os.path.join(REPO, 'configs', f'{name}.py')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data dir with the bundled digits prepared once for the session."""
  path = str(tmp_path_factory.mktemp('tfds'))
  sources.hide_accelerators_from_tf()
  config = config_lib.load(config_path('digits'), {'dataset.data_dir': path})
  sources.get_builder(config.dataset)
  return path


def digits_config(tfds_dir: str, **overrides):
  """The digits config on the session's tfds dir; `overrides` use `__` for dots (`optim__momentum=0`)."""
  return config_lib.load(config_path('digits'), {
      'dataset.data_dir': tfds_dir, **{k.replace('__', '.'): v for k, v in overrides.items()}})


# The shared short digits run: 4 epochs of 22 steps at a constant learning rate (also test_train.py's golden steps)
TRAINED_DIGITS = dict(num_epochs=4, eval_every_epochs=4, log_every_steps=1000, optim__schedule='constant',
                      optim__warmup_epochs=0.0)


@pytest.fixture(scope='session')
def trained_digits(tfds_dir, tmp_path_factory):
  """`(config, workdir)` of a short real digits run (4 epochs, 20-45% test top-1 by seed; chance is 10%) with a
  checkpoint."""
  workdir = str(tmp_path_factory.mktemp('digits_run'))
  config = digits_config(tfds_dir, **TRAINED_DIGITS)
  loop.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture
def quick_compile():
  """XLA without most optimisations, for a test whose programs are small and run a few times: they compile about
  twice as fast (the deconvnet's projections: 6.5 s -> 3.5 s of CPU); results differ from the optimised ones by
  float reordering only. A module opts in with `pytestmark = pytest.mark.usefixtures('quick_compile')`; training
  runs many steps and stays optimised. JAX's in-memory caches do not key on the setting, so they are emptied
  afterwards: no later test runs a program compiled here (the persistent cache keys on it and keeps both)."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)
  jax.clear_caches()


class ImageNet(NamedTuple):
  manual_dir: str  # scripts/make_imagenet_archives.py's ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
  data_dir: str  # the tfds data dir scripts/prepare_imagenet.py prepared: imagenet2012 and its squares
  prepare_output: str  # what prepare_imagenet.py printed


# A tiny ZFNet on 112 px squares, 99 px crops: the ImageNet path in seconds.
TINY_IMAGENET = ['--config.model.conv_features=8,6,8,8,6', '--config.model.fc_features=16,16',
                 '--config.model.image_size=99', '--config.input.resize_size=112']


def run_script(name: str, *args: str) -> str:
  """Runs `scripts/NAME` as `python scripts/NAME ARGS...` would, in this process (no interpreter to start, no
  imports to repeat); returns what it printed. A failing script raises, e.g. `SystemExit` with its message."""
  out = io.StringIO()
  with mock.patch.object(sys, 'argv', [name, *args]), contextlib.redirect_stdout(out):
    runpy.run_path(os.path.join(REPO, 'scripts', name), run_name='__main__')
  return out.getvalue()


@pytest.fixture(scope='session')
def imagenet(tmp_path_factory) -> ImageNet:
  """Small ImageNet-format archives (24 train images in 4 synsets, 8 validation) prepared the way the README says:
  tfds's own `imagenet2012` builder, then 112 px squares. tests/test_scripts.py checks what both scripts made."""
  root = tmp_path_factory.mktemp('imagenet')
  manual, data = str(root / 'manual'), str(root / 'tfds')
  run_script('make_imagenet_archives.py', '--out', manual, '--max_side', '160')
  return ImageNet(manual, data, run_script('prepare_imagenet.py', '--manual_dir', manual, '--data_dir', data,
                                           *TINY_IMAGENET))


# Small nets with odd map sizes, so striding and pooling leave remainders: floor pooling (the seed's
# layout; 99 -> 50 -> 24 -> 12 -> 5 -> 5 -> 2) and ceil pooling with the paper's paddings and LRN
# (103 -> 50 -> 25 -> 11 -> 5 -> 5 -> 2, partial last windows).
LAYOUTS = {
    'floor': {'model.image_size': 99},
    'ceil_lrn': {'model.image_size': 103, 'model.pool_mode': 'ceil', 'model.conv_paddings': (1, 0, 1, 1, 1),
                 'model.lrn': True, 'model.lrn_position': 'before_pool', 'model.lrn_alpha': 0.5},
}


def random_params(model: network.ConvNet, seed: int = 0) -> dict:
  """He-scaled normal weights and small random biases, drawn with NumPy (no init program to compile)."""
  shapes = jax.eval_shape(functools.partial(network.init_params, model), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if len(leaf.shape) == 1:
      return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
  return jax.tree_util.tree_map(draw, shapes)


def small_config(layout: str, **overrides):
  """The digits config with tiny layer widths and a `LAYOUTS` geometry; `overrides` are dotted fields."""
  return config_lib.load(config_path('digits'), {
      'model.conv_features': (8, 6, 8, 8, 6), 'model.fc_features': (16, 16), **LAYOUTS[layout], **overrides})


def small_net(layout: str, **overrides) -> tuple[network.ConvNet, dict]:
  """`(model, random params)` of `small_config(layout, **overrides)`."""
  model = network.create_model(small_config(layout, **overrides))
  return model, random_params(model)


@functools.partial(jax.jit, static_argnums=0)
def record(model, params, images):
  """`deconvnet.record`, jitted once per model for the whole session."""
  return deconvnet.record(model, params, images)


def free_port() -> int:
  """A free TCP port on localhost, for a JAX coordinator."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch_processes(args: list[str], processes: int, env: dict[str, str]) -> list[subprocess.Popen]:
  """The command `args` as one process, or as `processes` gloo processes of one JAX job (a coordinator on a
  free localhost port, `--process_id` each); output piped, merged."""
  if processes > 1:
    args = [*args, f'--coordinator_address=localhost:{free_port()}', f'--num_processes={processes}']
  return [subprocess.Popen(args + ([f'--process_id={i}'] if processes > 1 else []), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]
