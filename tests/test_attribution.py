"""The attribution engine against independent computations: `jax.grad`, a vjp with ReLU's backward replaced,
today's deconvnet projection, and the completeness axiom of integrated gradients."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deconv_reference
from conftest import LAYOUTS, config_path, digits_config, record, small_config, small_net
from zfnet_jax import visualize
from zfnet_jax.interpret import attribution, deconvnet
from zfnet_jax.model import layers, network
from zfnet_jax.training import loop

pytestmark = pytest.mark.usefixtures('quick_compile')


@functools.lru_cache(maxsize=None)
def _net(layout):
  model, params = small_net(layout)
  size = model.arch.image_size
  images = jnp.asarray(np.random.default_rng(3).normal(size=(2, size, size, 1)), jnp.float32)
  return model, params, images


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 6))
def _attribute(arch, params, images, layer, method, targets, steps=32):
  return attribution.attribute(arch, params, images, targets, layer, method, steps=steps)


def _targets(*columns):
  return attribution.Targets(*(jnp.asarray(c, jnp.int32) for c in columns))


@jax.custom_vjp
def _guided_relu(x):
  return jax.nn.relu(x)


_guided_relu.defvjp(lambda x: (jax.nn.relu(x), x > 0), lambda positive, g: (jnp.where(positive, jax.nn.relu(g), 0),))


def _guided_logits(arch, params, images):
  """The logits, differentiable with ReLU's backward replaced by ReLU(g) on the forward mask (guided
  backprop); pooling by gather (deconv_reference), LRN and the dense layers as written here."""
  x = images
  for c in arch.convs:
    p = params[c.name]
    x = _guided_relu(jax.lax.conv_general_dilated(x, p['kernel'], (c.stride, c.stride), [(c.padding, c.padding)] * 2,
                                                  dimension_numbers=network.CONV_DIMS) + p['bias'])
    lrn = lambda v: layers.local_response_norm(v, arch.lrn_size, arch.lrn_k, arch.lrn_alpha, arch.lrn_beta)  # noqa: E731
    if c.lrn and (arch.lrn_position == 'before_pool' or not c.pool):
      x = lrn(x)
    if c.pool:
      x = deconv_reference.max_pool_by_gather(x, arch.pool_window, arch.pool_stride, arch.pool_ceil)
      if c.lrn and arch.lrn_position == 'after_pool':
        x = lrn(x)
  x = x.reshape(x.shape[0], -1)
  for n, _ in arch.fcs:
    x = _guided_relu(x @ params[f'fc{n}']['kernel'] + params[f'fc{n}']['bias'])
  return x @ params['fc8']['kernel'] + params['fc8']['bias']


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_gradient_equals_jax_grad_of_the_logit_and_of_a_unit(layout):
  model, params, images = _net(layout)
  arch = model.arch
  classes = [3, 7]
  got = _attribute(arch, params, images, 'logits', 'gradient', _targets(classes, [0, 0], [0, 0]))
  expected = jax.grad(lambda v: jnp.sum(network.forward(model, params, v).logits[jnp.arange(2), classes]))(images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  unit = _attribute(arch, params, images, 'layer2', 'gradient', _targets([1, 4], [2, 0], [3, 1]))
  expected = jax.grad(lambda v: jnp.sum(network.forward(model, params, v).layers['layer2'][jnp.arange(2), [2, 0],
                                                                                           [3, 1], [1, 4]]))(images)
  np.testing.assert_allclose(unit, expected, rtol=1e-4, atol=1e-5 * max(np.abs(expected).max(), 1e-6))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_guided_backprop_equals_a_vjp_with_relus_backward_replaced(layout):
  model, params, images = _net(layout)
  arch = model.arch
  got = _attribute(arch, params, images, 'logits', 'guided_backprop', _targets([2, 5], [0, 0], [0, 0]))
  expected = jax.grad(lambda v: jnp.sum(_guided_logits(arch, params, v)[jnp.arange(2), [2, 5]]))(images)
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_deconvnet_preset_equals_todays_projection(layout):
  model, params, images = _net(layout)
  arch = model.arch
  recording = record(model, params, images)
  for layer in (1, 3, 5):
    seeds = deconvnet.strongest(recording, layer, image=1)
    projected = np.asarray(deconvnet.project(arch, params, recording.switches, layer, seeds))
    n = seeds.channel.shape[0]
    got = _attribute(arch, params, jnp.repeat(images[1:], n, axis=0), f'layer{layer}', 'deconvnet',
                     attribution.Targets(seeds.channel, seeds.y, seeds.x))
    got = np.asarray(got) * np.asarray(seeds.value)[:, None, None, None]
    assert np.abs(projected).max() > 0
    np.testing.assert_allclose(got, projected, rtol=0, atol=1e-5 * np.abs(projected).max(), err_msg=f'layer {layer}')


def test_integrated_gradients_meet_completeness():
  model, params, images = _net('ceil_lrn')
  arch = model.arch
  targets = _targets([1, 6], [0, 0], [0, 0])
  gap = (attribution.score(arch, params, images, targets, 'logits')
         - attribution.score(arch, params, jnp.zeros_like(images), targets, 'logits'))
  errors = []
  for steps in (4, 256):
    maps = _attribute(arch, params, images, 'logits', 'integrated_gradients', targets, steps)
    errors.append(np.abs(np.asarray(maps.sum(axis=(1, 2, 3)) - gap)).max())
  assert errors[1] < 0.01 * np.abs(np.asarray(gap)).max() + 1e-4 and errors[1] <= errors[0] + 1e-6, (errors, gap)


def test_every_method_and_cube_point_gives_finite_maps_of_the_right_shape():
  model, params, images = _net('floor')
  arch = model.arch
  targets = _targets([0, 9], [0, 0], [0, 0])
  for method in (*attribution.METHODS, *attribution.all_rules()):
    maps = np.asarray(_attribute(arch, params, images, 'logits', method, targets, 4))
    shape = (2, *arch.map_sizes()['conv5'][1:] * 2, 1) if method == 'gradcam' else images.shape
    assert maps.shape == tuple(shape) and np.all(np.isfinite(maps)), method
  whole = _attribute(arch, params, images, 'layer3', 'deconvnet', _targets([1, 2], [-1, -1], [0, 0]))
  assert np.abs(np.asarray(whole)).max() > 0


def test_attribute_and_sanity_commands(tfds_dir, tmp_path):
  """`visualize attribute` writes each method's raw map `[H, W, C]` (Grad-CAM at its layer) and PNGs;
  `visualize sanity` writes its tables and figures, on a tiny digits network trained one step."""
  tiny = {'model.conv_features': (8, 6, 8, 8, 6), 'model.fc_features': (16, 16)}
  config = digits_config(tfds_dir, num_train_steps=1, batch_size=32, log_every_steps=1000,
                         **{k.replace('.', '__'): v for k, v in tiny.items()})
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir)
  common = ['--config', config_path('digits'), '--workdir', workdir, f'--config.dataset.data_dir={tfds_dir}',
            *(f'--config.{k}={",".join(map(str, v))}' for k, v in tiny.items())]
  out = tmp_path / 'attribute'
  visualize.main(['attribute', *common, '--index', '1', '--method', 'all', '--steps', '4', '--out', str(out)])
  size = config.model.image_size
  for method in attribution.METHODS:
    shape = np.load(out / f'{method}.npy').shape
    assert shape == ((3, 3, 1) if method == 'gradcam' else (size, size, 1)), method
    assert (out / f'{method}.png').exists()
  assert (out / 'attribute_all.png').exists()
  visualize.main(['attribute', *common, '--method', 'no_mask-no_switches-no_rectify', '--layer', '2', '--channel',
                  '1', '--out', str(tmp_path / 'cube')])
  assert np.load(tmp_path / 'cube' / 'no_mask-no_switches-no_rectify.npy').shape == (size, size, 1)
  out = tmp_path / 'sanity'
  visualize.main(['sanity', *common, '--methods', 'deconvnet', 'gradient', '--images', '2', '--steps', '2',
                  '--out', str(out)])
  rows = json.loads((out / 'sanity.json').read_text())
  assert {r['test'] for r in rows} == {'cascading', 'independent', 'random_class'}
  assert len(json.loads((out / 'bottlenecks.json').read_text())) == 8
  assert (out / 'sanity_cascade.png').exists() and (out / 'sanity_curves.png').exists()


def test_engine_on_a_network_with_removed_layers():
  """Table 3's ablations (configs/digits_ablations.py's no_3_4_6_7: conv layers 3, 4 and fc 6, 7 removed): the
  gradient is `jax.grad`, guided backprop the replaced-ReLU vjp, the deconvnet corner today's projection."""
  model, params = small_net('floor', **{'model.remove_layers': (3, 4, 6, 7)})
  arch = model.arch
  images = jnp.asarray(np.random.default_rng(4).normal(size=(2, arch.image_size, arch.image_size, 1)), jnp.float32)
  classes = [3, 7]
  got = _attribute(arch, params, images, 'logits', 'gradient', _targets(classes, [0, 0], [0, 0]))
  expected = jax.grad(lambda v: jnp.sum(network.forward(model, params, v).logits[jnp.arange(2), classes]))(images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  got = _attribute(arch, params, images, 'logits', 'guided_backprop', _targets(classes, [0, 0], [0, 0]))
  expected = jax.grad(lambda v: jnp.sum(_guided_logits(arch, params, v)[jnp.arange(2), classes]))(images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  recording = record(model, params, images)
  last = arch.convs[-1].layer
  seeds = deconvnet.strongest(recording, last, image=0)
  projected = np.asarray(deconvnet.project(arch, params, recording.switches, last, seeds))
  got = _attribute(arch, params, jnp.repeat(images[:1], seeds.channel.shape[0], axis=0), f'layer{last}', 'deconvnet',
                   attribution.Targets(seeds.channel, seeds.y, seeds.x))
  got = np.asarray(got) * np.asarray(seeds.value)[:, None, None, None]
  assert np.abs(projected).max() > 0
  np.testing.assert_allclose(got, projected, rtol=0, atol=1e-5 * np.abs(projected).max())


def test_bfloat16_maps_are_finite_and_close_to_float32():
  """`config.dtype=bfloat16`: the engine computes in the images' dtype. Its gradient is the bfloat16 model's own
  (`jax.grad` of `network.ConvNet` with that dtype); each map is finite and near the float32 map: cosine above
  0.95 here on random weights and noise images (0.96-1.0 measured: bfloat16 keeps 8 bits of mantissa and a ReLU
  whose input is near 0 may flip; SmoothGrad is left out: its noise is drawn in bfloat16, so other samples)."""
  model, params, images = _net('floor')
  arch = model.arch
  bf16 = network.create_model(small_config('floor', dtype='bfloat16'))
  assert bf16.dtype == jnp.bfloat16
  classes = [0, 9]
  targets = _targets(classes, [0, 0], [0, 0])
  low = images.astype(jnp.bfloat16)
  got = np.asarray(_attribute(arch, params, low, 'logits', 'gradient', targets), np.float32)
  own = jax.grad(lambda v: jnp.sum(network.forward(bf16, params, v).logits[jnp.arange(2), classes]))(low)
  np.testing.assert_allclose(got, np.asarray(own, np.float32), rtol=0.02, atol=0.02 * np.abs(got).max())
  for method in ('deconvnet', 'guided_backprop', 'gradient', 'gradient_x_input', 'integrated_gradients', 'gradcam'):
    want = np.asarray(_attribute(arch, params, images, 'logits', method, targets, 4))
    got = _attribute(arch, params, low, 'logits', method, targets, 4)
    assert got.dtype == jnp.bfloat16, method
    got = np.asarray(got, np.float32)
    assert np.all(np.isfinite(got)) and np.abs(got).max() > 0, method
    cosine = np.vdot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > 0.95, (method, cosine)


def test_gradcam_of_a_unit_target_equals_its_formula_by_jax_grad():
  """Grad-CAM at layer 2 of a unit of layer 4 and of a whole layer-4 map: ReLU(sum_c mean_hw(d target / d A_c) A_c),
  with the gradient by `jax.grad` through `network`'s own stage functions."""
  model, params, images = _net('floor')
  arch = model.arch
  acts = network.forward(model, params, images).layers['layer2']

  def layer4(a):
    for c in arch.convs[2:4]:
      a = network.conv_stage(arch, c, params[c.name], a)
      if c.pool:
        a = network.pool_stage(arch, c, a)[0]
    return a
  for y, x, value in ((1, 2, lambda o: o[0, 1, 2, 3]), (-1, 0, lambda o: 0.5 * jnp.sum(o[0, ..., 3] ** 2))):
    grads = jax.grad(lambda a: value(layer4(a)))(acts[:1])[0]
    want = np.maximum(np.sum(np.mean(grads, axis=(0, 1)) * acts[0], axis=-1, keepdims=True), 0)
    got = attribution.attribute(arch, params, images[:1], _targets([3], [y], [x]), 'layer4', 'gradcam', cam='layer2')
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
