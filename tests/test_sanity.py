"""The sanity checks: metrics against scipy/scikit-image on known inputs, the permuted-label switch, the
randomisation, random-class and selectivity tables on a tiny network."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from skimage import feature, metrics

from conftest import digits_config, small_net
from zfnet_jax.data import pipeline
from zfnet_jax.interpret import attribution, sanity, site

pytestmark = pytest.mark.usefixtures('quick_compile')


def test_metrics_equal_scipy_and_scikit_image_on_known_inputs():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(32, 32, 1))
  b = a + rng.normal(size=(32, 32, 1))
  got = sanity.similarity(a, b)
  assert got['spearman_signed'] == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)
  assert got['spearman_abs'] == pytest.approx(stats.spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic)
  unit = lambda m: (m - m.min()) / (m.max() - m.min())  # noqa: E731
  assert got['ssim'] == pytest.approx(metrics.structural_similarity(unit(a[..., 0]), unit(b[..., 0]), data_range=1))
  hog = lambda m: feature.hog(unit(m[..., 0]), pixels_per_cell=(16, 16), cells_per_block=(1, 1))  # noqa: E731
  assert got['hog_spearman'] == pytest.approx(stats.spearmanr(hog(a), hog(b)).statistic)
  # Known values: a map against itself, against its negative, a monotone transform.
  assert sanity.similarity(a, a) == pytest.approx({k: 1.0 for k in sanity.METRICS})
  assert sanity.similarity(a, -a)['spearman_signed'] == pytest.approx(-1.0)
  assert sanity.similarity(a, -a)['spearman_abs'] == pytest.approx(1.0)
  assert sanity.similarity(a, np.exp(a))['spearman_signed'] == pytest.approx(1.0)


def test_permuted_label_switch_permutes_the_train_labels_reproducibly(tfds_dir):
  true = pipeline.open_split(digits_config(tfds_dir), 'train').labels
  first = pipeline.open_split(digits_config(tfds_dir, dataset__permute_labels_seed=3), 'train').labels
  again = pipeline.open_split(digits_config(tfds_dir, dataset__permute_labels_seed=3), 'train').labels
  other = pipeline.open_split(digits_config(tfds_dir, dataset__permute_labels_seed=4), 'train').labels
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(np.sort(first), np.sort(true))  # a permutation: the same label counts
  assert np.mean(first != true) > 0.5 and np.any(first != other)
  test = digits_config(tfds_dir, dataset__permute_labels_seed=3)
  np.testing.assert_array_equal(pipeline.open_split(test, test.dataset.eval_split).labels,
                                pipeline.open_split(digits_config(tfds_dir), test.dataset.eval_split).labels)


@functools.lru_cache(maxsize=None)
def _net():
  model, params = small_net('floor')
  size = model.arch.image_size
  return model, params, np.random.default_rng(5).normal(size=(2, size, size, 1)).astype(np.float32)


def test_randomisation_tables_and_random_class():
  model, params, images = _net()
  methods = ('deconvnet', 'gradient', 'gradcam')
  rows, cascade = sanity.randomisation(model, params, images, methods, steps=4)
  order = sanity.top_down(model.arch)
  assert len(rows) == 2 * len(order) * len(methods)
  assert [r['layers'] for r in rows if r['test'] == 'cascading' and r['method'] == 'gradient'] == list(order)
  assert all(np.isfinite([r[k] for k in sanity.METRICS]).all() for r in rows)
  assert set(cascade['deconvnet']) == {'original', *order}
  # The gradient of a fully randomised network is another map.
  last = [r for r in rows if r['test'] == 'cascading' and r['method'] == 'gradient'][-1]
  assert last['spearman_signed'] < 0.9
  # Randomising a layer changes only that layer's parameters.
  changed = sanity.randomised(model, params, ('conv3',), 1)
  assert not np.allclose(changed['conv3']['kernel'], params['conv3']['kernel'])
  assert changed['conv2'] is params['conv2']
  same = sanity.random_class(model, params, images, methods, steps=4)
  assert [r['method'] for r in same] == list(methods)
  page = site.sanity_page({'sanity': {'images': 2, 'rows': rows + same}, 'split': 'test'}, [1, 2])
  assert '<svg' in page and 'gradcam' in page and 'href="sanity.html"' in page
  assert 'Not built' in site.sanity_page({'sanity': None, 'split': 'test'}, [1])
  identical = sanity.data_randomisation(model, params, params, images, ('gradient',), steps=4)
  assert identical[0]['spearman_signed'] == pytest.approx(1.0)


def test_selectivity_and_the_bottleneck_cube():
  model, params, images = _net()
  arch = model.arch
  rows = sanity.selectivity(arch, params, images, 3)
  assert [r['unit'] for r in rows] == list(range(arch.convs[2].features))
  fired = [r for r in rows if not np.isnan(r['other'])]
  assert fired and all(-1 <= r['selectivity'] <= 2 for r in fired)
  table = sanity.bottleneck_table(arch, params, images, 3, units=4)
  assert len(table) == 8 and {r['rules'] for r in table} >= set(attribution.CUBE)
  # Units project through the same switches, so a unit's projection and the noise's share their support.
  deconv = sanity.selectivity(arch, params, images, 3, attribution.CUBE['deconvnet'], jnp.arange(2))
  assert len(deconv) == 2
