"""`sklearn_digits`: the 1,797 real 8x8 handwritten digits that ship with scikit-learn, as a tfds dataset.

UCI's optical recognition of handwritten digits (test part), 16 grey levels, 10 classes. Prepared
locally on first use with no download. Fixed split, stratified by class with seed 0:
'train' 1,437 images, 'test' 360. Pixel values 0-16 are scaled to 0-255 (`v * 255 // 16`).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled handwritten digits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 1,437 / 360 split, seed 0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = (digits.images.astype(np.int64) * 255 // 16).astype(np.uint8)[..., None]
    index = np.arange(len(images))
    train, test = train_test_split(index, test_size=TEST_FRACTION, random_state=0, stratify=digits.target)
    return {
        'train': self._generate_examples(images, digits.target, np.sort(train)),
        'test': self._generate_examples(images, digits.target, np.sort(test)),
    }

  def _generate_examples(self, images, labels, index):
    for i in index:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
