"""The package's layout is a contract: import-linter's layers (pyproject.toml) and ruff's lint hold, and a
back-import across the layers is caught."""
import os
import shutil
import subprocess
import sys

from conftest import REPO

BIN = os.path.dirname(sys.executable)


def lint_imports(root: str) -> subprocess.CompletedProcess:
  """`lint-imports` with `root`'s pyproject.toml, importing the package from `root`."""
  return subprocess.run([os.path.join(BIN, 'lint-imports'), '--no-cache'], cwd=root, capture_output=True, text=True,
                        env={**os.environ, 'PYTHONPATH': root})


def test_layers_hold():
  result = lint_imports(REPO)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Contracts: 1 kept, 0 broken' in result.stdout


def test_a_back_import_breaks_the_layers(tmp_path):
  for name in ('zfnet_jax', 'pyproject.toml'):
    source, target = os.path.join(REPO, name), str(tmp_path / name)
    if os.path.isdir(source):
      shutil.copytree(source, target, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(source, target)
  layers = tmp_path / 'zfnet_jax' / 'model' / 'layers.py'
  layers.write_text(layers.read_text() + '\nfrom zfnet_jax.training import steps  # noqa: E402,F401\n')
  result = lint_imports(str(tmp_path))
  assert result.returncode != 0
  assert 'zfnet_jax.model.layers -> zfnet_jax.training.steps' in result.stdout


def test_ruff_passes():
  result = subprocess.run([sys.executable, '-m', 'ruff', 'check', 'zfnet_jax', 'tests', 'scripts'], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
