"""The model: parameter counts, feature-map sizes of both ZFNet layouts, ablations, layers against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path
from zfnet_jax import config_lib
from zfnet_jax.model import network
from zfnet_jax.training import optim


def layer_shapes(config):
  """Output shape of every layer, from an abstract forward pass of the real module (no compute)."""
  model = network.create_model(config)
  a = model.arch
  x = jax.ShapeDtypeStruct((2, a.image_size, a.image_size, a.in_channels), jnp.float32)

  def forward(x):
    params = network.init_params(model, jax.random.key(0))
    logits, state = model.apply({'params': params}, x, mutable=['intermediates'])
    return params, logits, state['intermediates']

  params, logits, inter = jax.eval_shape(forward, x)
  return params, logits, {k: v[0].shape[1:] for k, v in inter.items()}


@pytest.mark.parametrize('name, sizes', [
    ('default', (55, 13, 13, 13, 6)),  # the seed's table: conv maps 112, 28, 13, 13, 13
    ('zfnet_paper', (55, 13, 13, 13, 6)),  # the paper / pytorchcv: conv maps 110, 26, 13, 13, 13
])
def test_zfnet_parameter_count_and_map_sizes(name, sizes):
  config = config_lib.load(config_path(name))
  params, logits, shapes = layer_shapes(config)
  assert network.count_params(params) == 62_357_608
  assert logits.shape == (2, 1000)
  widths = (96, 256, 384, 384, 256)
  for n, (size, width) in enumerate(zip(sizes, widths), start=1):
    assert shapes[f'layer{n}'] == (size, size, width), n
  assert shapes['layer6'] == (4096,) and shapes['layer7'] == (4096,)
  conv_sizes = {'default': (112, 28), 'zfnet_paper': (110, 26)}[name]
  arch = network.create_model(config).arch
  assert (arch.map_sizes()['conv1'][0], arch.map_sizes()['conv2'][0]) == conv_sizes


def test_alexnet_and_table3_ablations():
  _, _, shapes = layer_shapes(config_lib.load(config_path('alexnet')))
  assert shapes['layer1'] == (27, 27, 96) and shapes['layer5'] == (6, 6, 256)
  params, _, shapes = layer_shapes(config_lib.load(config_path('alexnet'), {'model.remove_layers': (3, 4, 6, 7)}))
  assert sorted(params) == ['conv1', 'conv2', 'conv5', 'fc8']
  assert params['conv5']['kernel'].shape == (3, 3, 256, 256)  # conv5 now reads conv2's 256 maps
  assert params['fc8']['kernel'].shape == (6 * 6 * 256, 1000)
  params, _, _ = layer_shapes(config_lib.load(config_path('default'), {
      'model.conv_features': (96, 256, 512, 1024, 512), 'model.fc_features': (8192, 8192)}))
  assert params['conv4']['kernel'].shape == (3, 3, 512, 1024)
  assert params['fc7']['kernel'].shape == (8192, 8192)


def test_bad_model_configs_fail_clearly():
  with pytest.raises(ValueError, match='pool after conv2 does not fit its 2x2 map'):
    network.create_model(config_lib.load(config_path('default'), {'model.image_size': 16}))
  with pytest.raises(ValueError, match='conv1 .* shrinks its 4x4 input to nothing'):
    network.create_model(config_lib.load(config_path('alexnet'), {'model.image_size': 4}))
  with pytest.raises(ValueError, match='remove_layers may name layers 3-7'):
    network.create_model(config_lib.load(config_path('default'), {'model.remove_layers': (1,)}))
  with pytest.raises(config_lib.ConfigFieldError, match='unknown config field config.model.fc_featurs: did you mean '
                     'config.model.fc_features'):
    config_lib.load(config_path('default'), {'model.fc_featurs': (1, 1)})


def test_filter_rms_renormalisation():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  kernel[..., 0] *= 0.01  # one small filter stays untouched
  params = {'conv1': {'kernel': jnp.asarray(kernel), 'bias': jnp.ones(5)}, 'fc6': {'kernel': jnp.ones((4, 4)) * 9}}
  out = optim.renormalize_filters(params, 0.1)
  rms = np.sqrt(np.mean(np.asarray(out['conv1']['kernel']) ** 2, axis=(0, 1, 2)))
  np.testing.assert_allclose(rms[1:], 0.1, rtol=1e-5)
  np.testing.assert_array_equal(out['conv1']['kernel'][..., 0], kernel[..., 0])
  np.testing.assert_array_equal(out['fc6']['kernel'], params['fc6']['kernel'])
  np.testing.assert_array_equal(out['conv1']['bias'], params['conv1']['bias'])
