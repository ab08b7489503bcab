"""The transfer protocol (per-class sampling, mean per-class accuracy) and one real probe run. (Class subsets:
test_properties.py.)"""
import json
import os

import numpy as np
import pytest

from zfnet_jax.experiments import transfer


def unbalanced_labels() -> np.ndarray:
  """Classes 0, 1, 2 with 40, 25 and 13 examples, shuffled."""
  return np.random.default_rng(1).permutation(np.repeat([0, 1, 2], [40, 25, 13]))


@pytest.mark.parametrize('test_cap', [None, 10])
def test_folds_take_exactly_n_per_class_and_keep_train_and_test_apart(test_cap):
  labels = unbalanced_labels()
  folds = transfer.sample_folds(labels, transfer.Protocol(per_class=5, folds=4, test_cap=test_cap, seed=3))
  assert len(folds) == 4
  for fold in folds:
    assert np.array_equal(np.bincount(labels[fold.train]), [5, 5, 5])
    assert not set(fold.train) & set(fold.test)
    assert len(set(fold.test)) == len(fold.test)
    expected_test = [min(n - 5, test_cap or n) for n in (40, 25, 13)]
    assert np.array_equal(np.bincount(labels[fold.test]), expected_test)
  assert len({tuple(f.train) for f in folds}) == 4, 'folds should be different random draws'


def test_folds_need_examples_left_to_test():
  with pytest.raises(ValueError, match='per_class'):
    transfer.sample_folds(unbalanced_labels(), transfer.Protocol(per_class=13, folds=1))


def test_mean_per_class_accuracy_averages_classes_not_examples():
  labels = np.array([0] * 90 + [1] * 10)
  predictions = np.zeros(100, int)  # every class-0 example right, every class-1 example wrong
  assert np.mean(predictions == labels) == pytest.approx(0.9)
  assert transfer.mean_per_class_accuracy(labels, predictions) == pytest.approx(0.5)
  predictions[:45] = 1  # half of class 0 wrong as well
  assert transfer.mean_per_class_accuracy(labels, predictions) == pytest.approx(0.25)


def test_probe_and_scratch_baseline_on_digits(trained_digits, tmp_path):
  config, workdir = trained_digits
  target = transfer.target_config(config, classes=(5, 6, 7))
  protocol = transfer.Protocol(per_class=6, folds=2, test_cap=20)
  out = str(tmp_path / 'transfer')
  rows = transfer.run(config, workdir, target, ['test'], protocol, layers=(0, 5, 7), classifiers=('softmax', 'svm'),
                      scratch_steps=2, out=out)
  assert [(r['layer'], r['classifier']) for r in rows] == [
      (0, 'softmax'), (0, 'svm'), (5, 'softmax'), (5, 'svm'), (7, 'softmax'), (7, 'svm'), (None, 'scratch')]
  for r in rows:
    assert len(r['fold_accuracies']) == 2 and 0 <= r['mean_per_class_accuracy'] <= 1
  assert rows[0]['features'] == 64 * 64  # the 64x64 grey input
  assert max(r['mean_per_class_accuracy'] for r in rows[:-1]) > 0.6  # 3 classes: chance is 1/3
  fold_images = os.path.join(out, 'scratch', 'fold_0', 'images')
  assert sorted(os.listdir(os.path.join(fold_images, 'train'))) == ['0000', '0001', '0002']
  assert all(len(os.listdir(os.path.join(fold_images, 'train', c))) == 6 for c in ('0000', '0001', '0002'))
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['target']['classes'] == [5, 6, 7]
  assert os.path.exists(os.path.join(out, 'results.csv')) and os.path.exists(os.path.join(out, 'results.png'))
