"""Sweeps: one row per (variant, seed), and an interrupted sweep re-run trains only what is missing."""
import csv
import os
import shutil

import pytest

from conftest import config_path
from zfnet_jax.experiments import sweep
from zfnet_jax.training import loop


@pytest.fixture
def count_training(monkeypatch):
  """The workdirs `loop.train_and_evaluate` is called on, in order (it still trains)."""
  calls = []
  real = loop.train_and_evaluate

  def counted(config, workdir):
    calls.append(workdir)
    return real(config, workdir)

  monkeypatch.setattr(loop, 'train_and_evaluate', counted)
  return calls


def test_rerun_trains_only_the_missing_runs(tfds_dir, tmp_path, count_training):
  workdir = str(tmp_path / 'sweep')
  overrides = {'dataset.data_dir': tfds_dir, 'num_train_steps': 2, 'log_every_steps': 1000, 'eval_batch_size': 512}
  run = lambda: sweep.run(config_path('digits_ablations'), workdir, seeds=[0], variants=['zfnet', 'fc_128'],
                          overrides=overrides)
  first = run()
  zfnet_dir, fc_dir = (os.path.join(workdir, name, 'seed_0') for name in ('zfnet', 'fc_128'))
  assert count_training == [zfnet_dir, fc_dir]
  assert [(r['variant'], r['seed'], r['steps']) for r in first] == [('zfnet', 0, 2), ('fc_128', 0, 2)]
  assert first[0]['params'] > first[1]['params']  # fc 256 -> 128
  for r in first:
    assert 0 <= r['train_top1'] <= 1 and 0 <= r['eval_top1'] <= r['eval_top5'] <= 1

  kept_metrics = os.path.join(zfnet_dir, 'metrics.jsonl')
  kept_mtime = os.stat(kept_metrics).st_mtime_ns
  shutil.rmtree(fc_dir)  # as if the sweep had been killed before fc_128 ran
  count_training.clear()
  second = run()
  assert count_training == [fc_dir]
  assert os.stat(kept_metrics).st_mtime_ns == kept_mtime
  assert second[0] == first[0]
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [(r['variant'], r['seed']) for r in table] == [('zfnet', '0'), ('fc_128', '0')]
  assert os.path.exists(os.path.join(workdir, 'results.png'))
  assert [s['variant'] for s in sweep.summary(second)] == ['zfnet', 'fc_128']


def test_unknown_variant_fails_before_training(tmp_path, count_training):
  with pytest.raises(sweep.SweepConfigError, match='fc_128'):
    sweep.run(config_path('digits_ablations'), str(tmp_path), variants=['fc128'])
  assert count_training == []
