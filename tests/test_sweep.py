"""Sweeps: one row per (variant, seed), and a re-run trains only what is missing, changed or preempted.

The bookkeeping runs on a stand-in for the one function that trains (`loop.train_and_evaluate`); each
row's train top-1 is still the real evaluation of the run's checkpoint. A real sweep (two variants,
real training) runs in notebooks/ablations.ipynb (tests/test_notebooks.py).
"""
import csv
import os

import pytest

from conftest import config_path, random_params
from zfnet_jax.experiments import sweep
from zfnet_jax.model import network
from zfnet_jax.training import checkpointing, loop


@pytest.fixture
def stand_in_training(monkeypatch):
  """`loop.train_and_evaluate` replaced by a stand-in that saves a checkpoint of random parameters at step
  `num_train_steps` and returns made-up final metrics (eval top-1 = seed / 10), or raises `loop.Preempted`
  for a workdir in `calls.preempt`; `calls` lists the workdirs it was called on, in order."""
  class Calls(list):
    preempt = ()

  calls = Calls()

  def train_and_evaluate(config, workdir):
    calls.append(workdir)
    if workdir in calls.preempt:
      raise loop.Preempted(1, config.num_train_steps, workdir)
    model = network.create_model(config)
    mngr = checkpointing.manager(workdir)
    checkpointing.save(mngr, config.num_train_steps, {'params': random_params(model, config.seed)}, model.arch)
    mngr.wait_until_finished()
    mngr.close()
    return {'loss': 2.0 + config.seed, 'top1': config.seed / 10, 'top5': 0.5, 'num_examples': 360}

  monkeypatch.setattr(loop, 'train_and_evaluate', train_and_evaluate)
  return calls


def read_csv(path: str) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_rerun_trains_only_what_is_missing_changed_or_preempted(tfds_dir, tmp_path, stand_in_training):
  workdir = str(tmp_path / 'sweep')
  overrides = {'dataset.data_dir': tfds_dir, 'num_train_steps': 3, 'eval_batch_size': 512}
  run = lambda **changed: sweep.run(config_path('digits_ablations'), workdir, seeds=[0, 1],  # noqa: E731
                                    variants=['zfnet', 'fc_128'], overrides={**overrides, **changed})
  dirs = [os.path.join(workdir, name, f'seed_{seed}') for name in ('zfnet', 'fc_128') for seed in (0, 1)]
  first = run()
  assert stand_in_training == dirs
  assert [(r['variant'], r['seed'], r['steps'], r['eval_top1'], r['eval_loss'], r['workdir']) for r in first] == [
      ('zfnet', 0, 3, 0.0, 2.0, dirs[0]), ('zfnet', 1, 3, 0.1, 3.0, dirs[1]),
      ('fc_128', 0, 3, 0.0, 2.0, dirs[2]), ('fc_128', 1, 3, 0.1, 3.0, dirs[3])]
  assert first[0]['params'] == first[1]['params'] > first[2]['params'] == first[3]['params']  # fc 256 -> 128
  assert all(0 <= r['train_top1'] <= 1 for r in first) and first[0]['train_top1'] != first[1]['train_top1']
  assert [(s['variant'], s['seeds'], s['eval_top1_mean'], s['eval_top1_std']) for s in sweep.summary(first)] == [
      ('zfnet', 2, pytest.approx(0.05), pytest.approx(0.05)), ('fc_128', 2, pytest.approx(0.05), pytest.approx(0.05))]
  assert [r['variant'] for r in read_csv(os.path.join(workdir, 'summary.csv'))] == ['zfnet', 'fc_128']
  assert os.path.exists(os.path.join(workdir, 'results.png'))

  # fc_128 seed 1 preempted on a re-run: the sweep stops "unfinished" and the tables keep the finished rows
  os.remove(os.path.join(dirs[3], sweep.RESULT_FILE))
  kept = os.stat(os.path.join(dirs[0], sweep.RESULT_FILE)).st_mtime_ns
  stand_in_training.clear()
  stand_in_training.preempt = (dirs[3],)
  with pytest.raises(loop.Preempted):
    run()
  assert stand_in_training == [dirs[3]]
  assert [r['workdir'] for r in read_csv(os.path.join(workdir, 'results.csv'))] == dirs[:3]
  # the same command again trains only that run, and reuses the others' rows as written
  stand_in_training.clear()
  stand_in_training.preempt = ()
  second = run()
  assert stand_in_training == [dirs[3]] and second[:3] == first[:3]
  assert {**second[3], 'seconds': None} == {**first[3], 'seconds': None}
  assert os.stat(os.path.join(dirs[0], sweep.RESULT_FILE)).st_mtime_ns == kept
  assert [(r['variant'], r['seed']) for r in read_csv(os.path.join(workdir, 'results.csv'))] == [
      ('zfnet', '0'), ('zfnet', '1'), ('fc_128', '0'), ('fc_128', '1')]
  # a changed config trains every run again
  stand_in_training.clear()
  assert [r['steps'] for r in run(num_train_steps=4)] == [4] * 4 and stand_in_training == dirs


def test_unknown_variant_fails_before_training(tmp_path, stand_in_training):
  with pytest.raises(sweep.SweepConfigError, match='fc_128'):
    sweep.run(config_path('digits_ablations'), str(tmp_path), variants=['fc128'])
  assert stand_in_training == []
