"""The analyses: streaming top-k (the one home of its numbers), Fig. 4's map choice, occlusion (the one
home of its numbers), correspondence, invariance transforms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path, record, small_net
from zfnet_jax import benchmarks, config_lib, parallel
from zfnet_jax.interpret import correspondence, deconvnet, evolution, invariance, occlusion, topk
from zfnet_jax.model import network


def _numpy_topk(acts: np.ndarray, mask: np.ndarray, k: int):
  """Per image and map the strongest position; per map the k strongest images: `[C, k]` value, image, y, x."""
  n, h, w, c = acts.shape
  flat = acts.reshape(n, h * w, c)
  best, where = flat.max(axis=1), flat.argmax(axis=1)  # [N, C]
  best = np.where(mask[:, None] > 0, best, -np.inf)
  order = np.argsort(-best, axis=0, kind='stable')[:k].T  # [C, k]
  pick = lambda a: np.take_along_axis(a.T, order, axis=1)  # noqa: E731
  return pick(best), order, pick(where // w), pick(where % w)


def test_streaming_topk_over_batches_equals_topk_over_the_whole_set():
  rng = np.random.default_rng(0)
  acts = rng.normal(size=(23, 5, 4, 7)).astype(np.float32)
  mask = np.ones(23, np.int32)
  mask[[3, 17]] = 0  # padding examples never count, however strong
  acts[3] += 100
  update = jax.jit(topk.topk_update)
  expected = _numpy_topk(acts, mask, 9)
  whole = update(topk.topk_empty(7, 9), acts, np.arange(23), mask)
  for got, want in zip(whole, expected):
    np.testing.assert_array_equal(got, want)
  for sizes in ([8, 8, 7], [1] * 23, [5, 18]):
    state, seen = topk.topk_empty(7, 9), 0
    for size in sizes:
      state = update(state, acts[seen:seen + size], np.arange(seen, seen + size), mask[seen:seen + size])
      seen += size
    for got, want in zip(state, whole):
      np.testing.assert_array_equal(got, want)


def test_stream_topk_merges_batches_sharded_over_devices_and_project_topk_projects_them():
  model, params = small_net('floor')
  arch = model.arch
  images = np.random.default_rng(1).normal(size=(24, arch.image_size, arch.image_size, 1)).astype(np.float32)
  mask = np.ones(24, np.int32)
  mask[-3:] = 0
  batches = [{'image': images[i:i + 8], 'mask': mask[i:i + 8]} for i in range(0, 24, 8)]
  tops = topk.stream_topk(model, params, batches, (2, 5), k=4, mesh=parallel.make_mesh(jax.local_devices()))
  assert jax.local_device_count() == 8  # conftest: every batch is split over 8 devices
  _, state = jax.jit(lambda x: model.apply({'params': params}, x, mutable=['intermediates']))(images)
  for layer in (2, 5):
    expected = _numpy_topk(np.asarray(state['intermediates'][f'layer{layer}'][0]), mask, 4)
    for got, want in zip(tops[layer], expected):
      np.testing.assert_allclose(got, want, rtol=1e-6)
  channels = {2: np.asarray([0, 5]), 5: np.asarray([3])}
  projections = topk.project_topk(model, params, batches, tops, channels, chunk=4)
  recording = record(model, params, jnp.asarray(images))
  for layer, result in projections.items():
    seeds = deconvnet.Seeds(*(jnp.asarray(np.ravel(f)) for f in result.top[1:2]),
                            jnp.asarray(np.repeat(channels[layer], 4), jnp.int32),
                            *(jnp.asarray(np.ravel(f)) for f in result.top[2:]),
                            jnp.asarray(np.ravel(result.top.value)))
    direct = jax.jit(deconvnet.project_patches, static_argnums=(0, 3))(arch, params, recording.switches, layer, seeds)
    r = direct.patches.shape[1]
    np.testing.assert_allclose(result.reconstruction.reshape(direct.patches.shape), direct.patches, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(result.window.reshape(-1, 2), np.stack([direct.top, direct.left], -1))
    for (top, left), image, patch in zip(result.window.reshape(-1, 2), result.top.image.ravel(),
                                         result.patch.reshape(-1, r, r, 1)):
      np.testing.assert_array_equal(patch, images[image, top:top + r, left:left + r])


def test_evolution_maps_spread_evenly_over_those_that_fire():
  value = np.asarray([-np.inf, 0.5, 0.0, 2.0, 1.0, 3.0, -1.0])[:, None]  # maps 1, 3, 4, 5 fire
  top = topk.TopK(value, *(np.zeros((7, 1), np.int32) for _ in range(3)))
  assert list(evolution.choose_maps(top, 2)) == [1, 5]
  assert list(evolution.choose_maps(top, 3)) == [1, 3, 5]
  assert list(evolution.choose_maps(top, 6)) == [0, 1, 2, 3, 4, 5]  # every map that fires, then the first dead
  assert list(evolution.choose_maps(top, 0)) == list(evolution.choose_maps(top, 9)) == list(range(7))


@pytest.mark.parametrize('layout,size,stride,local_fraction,removed', [
    ('floor', 20, 11, 0.5, ()),  # conv1-pool2 on windows, the rest on whole maps
    ('ceil_lrn', 13, 9, 0.9, ()),  # partial pooling windows at the far edges
    ('ceil_lrn', 13, 9, 0.0, ()),  # everything on whole maps
    ('floor', 20, 11, 0.5, (3, 4, 6, 7)),  # an ablated network: fewer conv steps, no fc hidden layers
])
def test_occlusion_entries_equal_forward_passes_on_occluded_images(layout, size, stride, local_fraction, removed):
  model, params = small_net(layout, **{'model.remove_layers': removed})
  arch = model.arch
  image = jnp.asarray(np.random.default_rng(2).normal(size=(arch.image_size,) * 2 + (1,)), jnp.float32)
  maps = jax.jit(functools.partial(occlusion.occlusion, model, size=size, stride=stride, chunk=16,
                                   local_fraction=local_fraction))(params, image, 3)
  n = len(maps.rows)
  assert maps.activity.shape == (n, n) and maps.rows[-1] + size <= arch.image_size < maps.rows[-1] + size + stride
  occluded = jnp.stack([image.at[y:y + size, x:x + size].set(0.0) for y in maps.rows for x in maps.cols])
  logits, state = jax.jit(lambda x: model.apply({'params': params}, x, mutable=['intermediates']))(
      jnp.concatenate([image[None], occluded]))
  top = state['intermediates']['layer5'][0]
  assert maps.feature == jnp.argmax(jnp.max(top[0], axis=(0, 1)))
  probs = jax.nn.softmax(logits[1:])
  np.testing.assert_allclose(maps.activity, top[1:, ..., maps.feature].sum((1, 2)).reshape(n, n), rtol=1e-5)
  np.testing.assert_allclose(maps.probability, probs[:, 3].reshape(n, n), rtol=1e-4)
  np.testing.assert_array_equal(maps.top_class, jnp.argmax(probs, -1).reshape(n, n))
  assert np.ptp(np.asarray(maps.activity)) > 0  # the square does change the activity


def test_correspondence_measure():
  eps = jnp.asarray([[1.0, -2.0, 0.0, 3.0], [2.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, -1.0]])
  # pairs (0,1): 0 of 4 signs differ; (0,2) and (1,2): 2 of 4; mean over the 6 ordered pairs = 1/3
  np.testing.assert_allclose(correspondence.sign_disagreement(eps), (0 + 0.5 + 0.5) * 2 / 6)
  images = jnp.ones((2, 6, 5, 1))
  masked = correspondence.mask_boxes(images, jnp.asarray([[1, 2, 2, 3], [0, 0, 1, 1]]), fill=0.0)
  assert masked[0, 1:3, 2:5].sum() == 0 and masked[0].sum() == 30 - 6 and masked[1].sum() == 30 - 1
  boxes = correspondence.random_boxes(np.random.default_rng(0), np.asarray([[1, 2, 4, 5]] * 50), 6)
  assert np.all(boxes[:, 2:] == [4, 5]) and np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] <= [2, 1])
  assert len({tuple(b) for b in boxes[:, :2]}) == 6  # every position inside the image occurs


def test_invariance_transforms():
  image = jnp.asarray(np.random.default_rng(3).normal(size=(9, 9, 2)), jnp.float32)
  transform = jax.jit(invariance.transform, static_argnums=1)
  np.testing.assert_allclose(transform(image, 'translation', 2.0)[2:], image[:-2], atol=1e-6)
  assert not np.any(np.asarray(transform(image, 'translation', 2.0)[:2]))
  np.testing.assert_allclose(transform(image, 'scale', 1.0), image, atol=1e-6)
  np.testing.assert_allclose(transform(image, 'rotation', 360.0), image, atol=1e-4)
  np.testing.assert_allclose(transform(image, 'rotation', 90.0), jnp.rot90(image, k=1), atol=1e-4)
  np.testing.assert_allclose(transform(image, 'scale', 2.0)[4, 4], image[4, 4], atol=1e-6)  # about the centre


def test_benchmark_deconv_and_occlusion_records():
  config = config_lib.load(config_path('digits'), {  # small and fast to compile; without layers 3 and 4
      'model.kernel_init': 'paper', 'model.remove_layers': (3, 4), 'model.conv_features': (8, 8, 8, 8, 8),
      'model.fc_features': (16, 16)})
  options = benchmarks.Options(config_path='configs/digits.py', steps=1, warmup=0)
  deconv = benchmarks.BENCHMARKS['deconv'](config, options)
  assert [r['layer'] for r in deconv] == [1, 2, 5] and [r['batch'] for r in deconv] == [8, 8, 8]
  assert all(0 < r['projections_per_s'] < r['images_per_s'] and r['flops_per_step'] > 0 for r in deconv)
  [occlusion] = benchmarks.BENCHMARKS['occlusion'](config, options)
  assert (occlusion['window'], occlusion['stride'], occlusion['positions']) == (9, 4, 196)
  assert occlusion['seconds_per_image'] > 0 and occlusion['what'] == 'occlusion'


@pytest.mark.parametrize('name,overrides', [
    *((f'digits without {removed}', {'model.remove_layers': removed})
      for removed in ((), (7,), (6, 7), (3, 4), (3, 4, 6, 7), (3, 4, 5, 6, 7))),
    ('alexnet', {}), ('zfnet_paper', {}), ('digits', {'model.lrn': True, 'model.lrn_position': 'before_pool'})])
def test_invariance_and_correspondence_take_their_layers_from_the_network(name, overrides):
  config = config_lib.load(config_path(name.split()[0]), overrides)
  model = network.create_model(config)
  arch = model.arch
  params = jax.eval_shape(functools.partial(network.init_params, model), jax.random.key(0))
  images = jax.ShapeDtypeStruct((2, arch.image_size, arch.image_size, arch.in_channels), jnp.float32)
  present = [c.layer for c in arch.convs] + [n for n, _ in arch.fcs]
  assert arch.layer_numbers == tuple(present)
  curves = jax.eval_shape(functools.partial(invariance.invariance, model, kind='scale'), params, images,
                          jnp.zeros(2, jnp.int32), amounts=jnp.ones(3))
  assert sorted(curves) == sorted({f'layer{present[0]}', f'layer{present[-1]}', 'probability'})
  assert all(v.shape == (2, 3) for v in curves.values())
  deltas = jax.eval_shape(functools.partial(correspondence.correspondence, model), params, images,
                          jnp.zeros((2, 4), jnp.int32))
  assert sorted(deltas) == sorted({arch.convs[-1].layer, present[-1]})
