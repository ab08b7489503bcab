"""Every notebook in notebooks/ runs top to bottom (quick setting, `ZFNET_QUICK=1`); a failing cell fails its test.

The kernels see one CPU device (as a user's laptop), the session's prepared digits, one runs folder (so
`deconvnet.ipynb` reuses the checkpoint `quickstart.ipynb` trained) and the session's persistent XLA cache
(conftest; a program compiles once for all notebooks). Each test then checks what its notebook wrote there.
"""
import csv
import glob
import json
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
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}


def read_csv(path: str) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def check_quickstart(runs: str, text: str) -> None:
  """20 steps of the digits config, evaluated on the whole test split."""
  evals = [json.loads(line) for line in open(os.path.join(runs, 'digits_quick', 'metrics.jsonl'))
           if '"eval"' in line]
  assert evals[-1]['step'] == 20 and evals[-1]['num_examples'] == 360
  assert f"test top-1 {evals[-1]['top1']:.2%}" in text


def check_deconvnet(runs: str, text: str) -> None:
  """quickstart's checkpoint reused, not trained again."""
  assert 'Training already finished at step 20' in text and 'checkpoint step 20' in text


def check_ablations(runs: str, text: str) -> None:
  """A real two-variant sweep (tests/test_sweep.py checks the bookkeeping on a stand-in for training)."""
  rows = read_csv(os.path.join(runs, 'ablations_quick', 'results.csv'))
  assert [(r['variant'], r['seed'], r['steps']) for r in rows] == [('zfnet', '0', '10'), ('alexnet_stem', '0', '10')]
  assert all(0 <= float(r[k]) <= 1 for r in rows for k in ('train_top1', 'eval_top1', 'eval_top5'))
  assert rows[0]['params'] != rows[1]['params']
  assert os.path.exists(os.path.join(runs, 'ablations_quick', 'first_layer_filters.png'))


def check_transfer(runs: str, text: str) -> None:
  """Probes of layers 0, 2, 5, 7 and the scratch baseline on digits 5-9, from a network trained on 0-4."""
  with open(os.path.join(runs, 'transfer_digits_quick', 'results.json')) as f:
    results = json.load(f)
  assert results['target']['classes'] == [5, 6, 7, 8, 9]
  rows = results['rows']
  assert [(r['layer'], r['classifier']) for r in rows] == [(0, 'softmax'), (2, 'softmax'), (5, 'softmax'),
                                                           (7, 'softmax'), (None, 'scratch')]
  assert all(0 <= r['mean_per_class_accuracy'] <= 1 for r in rows)
  assert os.path.exists(os.path.join(runs, 'transfer_digits_quick', 'table7.png'))


@pytest.mark.parametrize('name', ORDER)
def test_notebook_runs(name, kernel_env):
  path = os.path.join(REPO, 'notebooks', f'{name}.ipynb')
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute(env=kernel_env)  # raises CellExecutionError, with the cell and traceback, if a cell fails
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs), f'{name}.ipynb drew no figure'
  text = ''.join(o.get('text', '') for o in outputs)
  globals()[f'check_{name}'](kernel_env['ZFNET_RUNS'], text)
