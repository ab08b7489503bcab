"""Every notebook in notebooks/ runs top to bottom (quick setting, `ZFNET_QUICK=1`); a failing cell fails its test.

The kernels see one CPU device (as a user's laptop), the session's prepared digits, one runs folder (so
`deconvnet.ipynb` reuses the checkpoint `quickstart.ipynb` trained) and one persistent XLA cache (so a
program compiles once for all notebooks).
"""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import PATIENT_COLLECTIVES, REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, 'notebooks', '*.ipynb')))
ORDER = ('quickstart', 'deconvnet', 'ablations', 'transfer')  # quickstart first: deconvnet reuses its run


def test_every_notebook_is_tested():
  assert sorted(os.path.basename(p)[:-len('.ipynb')] for p in NOTEBOOKS) == sorted(ORDER)


@pytest.fixture(scope='module')
def kernel_env(tfds_dir, tmp_path_factory):
  return {**os.environ, 'ZFNET_QUICK': '1', 'ZFNET_RUNS': str(tmp_path_factory.mktemp('notebook_runs')),
          'TFDS_DATA_DIR': tfds_dir, 'XLA_FLAGS': PATIENT_COLLECTIVES, 'TF_CPP_MIN_LOG_LEVEL': '2',
          'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('notebook_xla_cache')),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


@pytest.mark.parametrize('name', ORDER)
def test_notebook_runs(name, kernel_env):
  path = os.path.join(REPO, 'notebooks', f'{name}.ipynb')
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute(env=kernel_env)  # raises CellExecutionError, with the cell and traceback, if a cell fails
  errors = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs
            if o.output_type == 'error']
  assert not errors
  figures = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs
             if 'data' in o and 'image/png' in o['data']]
  assert figures, f'{name}.ipynb drew no figure'
