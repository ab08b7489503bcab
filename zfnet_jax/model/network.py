"""One config-driven conv net that covers ZFNet, AlexNet and the paper's ablations.

`Architecture.from_config(config.model)` turns the flat, command-line-friendly fields of a config into
a validated list of layers, named by their layer number in the paper (`conv1`..`conv5`, `fc6`, `fc7`,
`fc8`), so that an ablation that removes layers 3 and 4 keeps `conv5` called `conv5`. `ConvNet` is the
Flax module; `Architecture` is also what the deconvnet and the receptive-field code read.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from zfnet_jax.model import layers

CONV_LAYERS = (1, 2, 3, 4, 5)
FC_LAYERS = (6, 7)


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One convolutional stage: conv -> ReLU [-> LRN] [-> max-pool] [-> LRN] (LRN place configurable)."""
  layer: int
  features: int
  kernel: int
  stride: int
  padding: int
  pool: bool
  lrn: bool

  @property
  def name(self) -> str:
    return f'conv{self.layer}'


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The whole network, validated. Map sizes follow from `image_size`."""
  convs: tuple[ConvSpec, ...]
  fcs: tuple[tuple[int, int], ...]  # (paper layer number, width) of the hidden fully connected layers
  num_classes: int
  image_size: int
  in_channels: int = 3
  pool_window: int = 3
  pool_stride: int = 2
  pool_ceil: bool = False
  lrn_position: str = 'after_pool'  # or 'before_pool' (pytorchcv)
  lrn_size: int = 5
  lrn_k: float = 2.0
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  dropout_rate: float = 0.5

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> 'Architecture':
    """Builds and validates the architecture described by `config.model`."""
    per_layer = {
        'conv_features': m.conv_features, 'conv_kernels': m.conv_kernels,
        'conv_strides': m.conv_strides, 'conv_paddings': m.conv_paddings}
    for field, values in per_layer.items():
      if len(values) != len(CONV_LAYERS):
        raise ValueError(f'config.model.{field} needs one value per conv layer 1-5, got {tuple(values)}')
    for layer in tuple(m.pool_layers) + tuple(m.lrn_layers):
      if layer not in CONV_LAYERS:
        raise ValueError(f'config.model.pool_layers / lrn_layers name conv layers 1-5, got {layer}')
    if len(m.fc_features) != len(FC_LAYERS):
      raise ValueError(f'config.model.fc_features needs widths for layers 6 and 7, got {tuple(m.fc_features)}')
    for layer in m.remove_layers:
      if layer not in (3, 4, 5, 6, 7):
        raise ValueError(f'config.model.remove_layers may name layers 3-7 (the paper removes 3,4 and/or 6,7), '
                         f'got {layer}')
    if m.lrn_position not in ('after_pool', 'before_pool'):
      raise ValueError(f"config.model.lrn_position must be 'after_pool' or 'before_pool', got {m.lrn_position!r}")
    convs = tuple(
        ConvSpec(layer=n, features=int(m.conv_features[i]), kernel=int(m.conv_kernels[i]),
                 stride=int(m.conv_strides[i]), padding=int(m.conv_paddings[i]),
                 pool=n in m.pool_layers, lrn=n in m.lrn_layers and m.lrn)
        for i, n in enumerate(CONV_LAYERS) if n not in m.remove_layers)
    fcs = tuple((n, int(w)) for n, w in zip(FC_LAYERS, m.fc_features) if n not in m.remove_layers)
    arch = cls(convs=convs, fcs=fcs, num_classes=int(m.num_classes), image_size=int(m.image_size),
               in_channels=int(m.in_channels), pool_window=int(m.pool_window), pool_stride=int(m.pool_stride),
               pool_ceil=m.pool_mode == 'ceil', lrn_position=m.lrn_position, lrn_size=int(m.lrn_size),
               lrn_k=float(m.lrn_k), lrn_alpha=float(m.lrn_alpha), lrn_beta=float(m.lrn_beta),
               dropout_rate=float(m.dropout_rate))
    if m.pool_mode not in ('floor', 'ceil'):
      raise ValueError(f"config.model.pool_mode must be 'floor' or 'ceil', got {m.pool_mode!r}")
    for spec in convs + tuple(fcs):
      if (spec.features if isinstance(spec, ConvSpec) else spec[1]) < 1:
        raise ValueError(f'every layer needs at least one feature: {spec}')
    arch.map_sizes()  # raises if a map shrinks away
    return arch

  @property
  def layer_numbers(self) -> tuple[int, ...]:
    """The paper's numbers of the layers present, conv then fc hidden layers (e.g. `(1, 2, 5, 6, 7)`)."""
    return tuple(c.layer for c in self.convs) + tuple(n for n, _ in self.fcs)

  def map_sizes(self) -> dict[str, tuple[int, int]]:
    """Spatial size of every conv layer's output before and after pooling, for `image_size` input.

    Returns:
      `{'conv1': (conv_out, pooled_out), ...}`; `pooled_out == conv_out` where a layer has no pool.
    """
    size, sizes = self.image_size, {}
    for c in self.convs:
      conv_out = (size + 2 * c.padding - c.kernel) // c.stride + 1
      if conv_out < 1:
        raise ValueError(f'{c.name} ({c.kernel}x{c.kernel}/{c.stride}, padding {c.padding}) shrinks its '
                         f'{size}x{size} input to nothing: use a larger config.model.image_size or smaller '
                         f'kernels/strides')
      size = conv_out
      if c.pool:
        size = layers.pool_output_size(conv_out, self.pool_window, self.pool_stride, self.pool_ceil)
        if size < 1:
          raise ValueError(f'the {self.pool_window}x{self.pool_window} pool after {c.name} does not fit its '
                           f'{conv_out}x{conv_out} map: use a larger config.model.image_size')
      sizes[c.name] = (conv_out, size)
    return sizes

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able description, stored with checkpoints and exported weights to detect mismatches."""
    return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as they come back from JSON


TRAINING_ONLY_FIELDS = ('dropout_rate',)  # architecture fields that do not change the forward pass or the weights


def architecture_differences(saved: dict[str, Any], current: Architecture) -> list[str]:
  """The one compatibility rule for weights: `'FIELD: saved V vs config W'` for each field of `saved` (an
  `Architecture.to_dict()`) that differs from `current` and matters to the forward pass. Empty: the weights
  fit `current` and compute the function they computed (training-only fields, e.g. dropout, may differ)."""
  def flat(arch: dict[str, Any]) -> dict[str, Any]:  # each conv layer's fields as their own entries
    out = {k: v for k, v in arch.items() if k != 'convs' and k not in TRAINING_ONLY_FIELDS}
    out.update({f'conv{c["layer"]}.{k}': v for c in arch.get('convs', []) for k, v in c.items() if k != 'layer'})
    return out
  old, new = flat(saved), flat(current.to_dict())
  return [f'{k}: saved {old.get(k)!r} vs config {new.get(k)!r}' for k in sorted(old.keys() | new.keys())
          if old.get(k) != new.get(k)]


KERNEL_INITS = {
    'paper': nn.initializers.normal(stddev=0.01),  # N(0, 0.01^2), as in the paper
    'fan_in': nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),  # He et al.
}


CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def conv_stage(arch: Architecture, spec: ConvSpec, p: dict, x: jax.Array, whole: bool = True) -> jax.Array:
  """Layer `spec`'s conv -> ReLU, with LRN where it comes before the pool (or the layer has no pool).

  Args:
    p: `{'kernel': [k, k, C_in, F], 'bias': [F]}`, in the compute dtype of `x`.
    x: `[B, H, W, C_in]` the layer's input map; with `whole=False` a window already cut from it, padding
      included, so the conv is a valid one.
  Returns:
    `[B, H', W', F]`.
  """
  pad = spec.padding if whole else 0
  x = lax.conv_general_dilated(x, p['kernel'], (spec.stride, spec.stride), [(pad, pad)] * 2,
                               dimension_numbers=CONV_DIMS) + p['bias']
  x = jax.nn.relu(x)
  if spec.lrn and (arch.lrn_position == 'before_pool' or not spec.pool):
    x = _lrn(arch, x)
  return x


def pool_stage(arch: Architecture, spec: ConvSpec, x: jax.Array, whole: bool = True,
               record: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """Layer `spec`'s max-pool, with LRN where it comes after the pool: `[B, H, W, C]` -> `([B, Ho, Wo, C],
  switches)`; the switches (int32 `[B, Ho, Wo, C]`, see `layers.max_pool_with_switches`) only with `record`,
  else None. `whole=False` pools a window cut from the map in floor mode, over exactly it."""
  ceil = arch.pool_ceil and whole
  switches = None
  if record:
    x, switches = layers.max_pool_with_switches(x, arch.pool_window, arch.pool_stride, ceil)
  else:
    x = layers.max_pool(x, arch.pool_window, arch.pool_stride, ceil)
  if spec.lrn and arch.lrn_position == 'after_pool':
    x = _lrn(arch, x)
  return x, switches


def dense(p: dict, x: jax.Array) -> jax.Array:
  """`[B, D]` -> `[B, F]` with `p = {'kernel': [D, F], 'bias': [F]}` (no activation)."""
  return x @ p['kernel'] + p['bias']


def head(arch: Architecture, params: Any, x: jax.Array,
         after_hidden: Callable[[int, jax.Array], jax.Array] = lambda n, h: h) -> jax.Array:
  """The fully connected layers: the last conv map `[B, n, n, C]` -> logits `[B, num_classes]`.

  Each hidden layer is dense -> ReLU; `after_hidden(layer, h)` sees its output and returns what goes on
  (`ConvNet` records it and applies dropout there)."""
  x = x.reshape((x.shape[0], -1))
  for n, _ in arch.fcs:
    x = after_hidden(n, jax.nn.relu(dense(params[f'fc{n}'], x)))
  return dense(params['fc8'], x)


def _lrn(arch: Architecture, x: jax.Array) -> jax.Array:
  return layers.local_response_norm(x, arch.lrn_size, arch.lrn_k, arch.lrn_alpha, arch.lrn_beta)


class _Weights(nn.Module):
  """Declares one layer's `kernel` (drawn by `init`) and zero `bias`, as `nn.Conv` / `nn.Dense` would."""
  kernel_shape: tuple[int, ...]
  init: Callable

  @nn.compact
  def __call__(self) -> dict:
    return {'kernel': self.param('kernel', self.init, self.kernel_shape, jnp.float32),
            'bias': self.param('bias', nn.initializers.zeros_init(), self.kernel_shape[-1:], jnp.float32)}


class ConvNet(nn.Module):
  """ZFNet-family classifier: the stage functions above, over parameters named `conv{n}`, `fc{n}`, `fc8`.

  Layer outputs (after ReLU, pooling and normalisation; for fc layers after ReLU) are sown into the
  `intermediates` collection as `layer1`..`layer7` when it is mutable; with `record=True` the
  max-pool switches are sown into `switches` as `pool{n}` (for the deconvnet) and the pre-pool maps
  into `intermediates` as `conv{n}_prepool`.
  """
  arch: Architecture
  dtype: Any = jnp.float32
  kernel_init: str = 'fan_in'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, record: bool = False) -> jax.Array:
    """`[B, H, W, in_channels]` images -> `[B, num_classes]` float32 logits (fc8 runs in float32)."""
    a = self.arch
    init = KERNEL_INITS[self.kernel_init]
    cast = lambda p: jax.tree_util.tree_map(lambda v: v.astype(self.dtype), p)  # noqa: E731
    x = x.astype(self.dtype)
    for c in a.convs:
      p = _Weights((c.kernel, c.kernel, x.shape[-1], c.features), init, name=c.name)()
      x = conv_stage(a, c, cast(p), x)
      if c.pool:
        if record:
          self.sow('intermediates', f'{c.name}_prepool', x)
        x, switches = pool_stage(a, c, x, record=record)
        if record:
          self.sow('switches', f'pool{c.layer}', switches)
      self.sow('intermediates', f'layer{c.layer}', x)
    params = {}
    width = x.shape[1] * x.shape[2] * x.shape[3]
    for n, features in a.fcs:
      params[f'fc{n}'] = cast(_Weights((width, features), init, name=f'fc{n}')())
      width = features
    # the classifier in float32 whatever the compute dtype: bf16 logits tie and round the loss
    params['fc8'] = _Weights((width, a.num_classes), init, name='fc8')()

    def hidden(n: int, h: jax.Array) -> jax.Array:
      self.sow('intermediates', f'layer{n}', h)
      return nn.Dropout(a.dropout_rate, deterministic=not train)(h)
    return head(a, params, x, hidden).astype(jnp.float32)


class Forward(NamedTuple):
  """One forward pass (evaluation mode) with what the analyses read."""
  logits: jax.Array  # [B, num_classes] float32
  layers: dict[str, jax.Array]  # 'layer1'..: conv [B, H, W, C] (after ReLU, pool, LRN); fc 'layer6', 'layer7' [B, F]
  switches: dict[str, jax.Array]  # with record=True: 'pool{n}' int32 [B, Ho, Wo, C] max-pool switches; else {}


def forward(model: ConvNet, params: Any, images: jax.Array, record: bool = False) -> Forward:
  """`[B, H, W, C]` images through `model` in evaluation mode, keeping every layer's output (and, with
  `record`, the max-pool switches the deconvnet unpools through). The layers present are those of
  `model.arch`: an ablation without layers 6 and 7 has no 'layer6' or 'layer7'."""
  collections = ['intermediates', 'switches'] if record else ['intermediates']
  logits, state = model.apply({'params': params}, images, record=record, mutable=collections)
  layers_out = {k: v[0] for k, v in state['intermediates'].items() if k.startswith('layer')}
  return Forward(logits, layers_out, {k: v[0] for k, v in state.get('switches', {}).items()})


def create_model(config: ml_collections.ConfigDict) -> ConvNet:
  """The `ConvNet` that `config.model` describes, with `config.dtype` for compute."""
  if config.model.kernel_init not in KERNEL_INITS:
    raise ValueError(f'config.model.kernel_init must be one of {sorted(KERNEL_INITS)}, '
                     f'got {config.model.kernel_init!r}')
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if config.dtype not in dtypes:
    raise ValueError(f'config.dtype must be one of {sorted(dtypes)}, got {config.dtype!r}')
  return ConvNet(Architecture.from_config(config.model), dtype=dtypes[config.dtype],
                 kernel_init=config.model.kernel_init)


def init_params(model: ConvNet, rng: jax.Array) -> dict:
  """Float32 parameters for `model`, shaped for its `image_size` input."""
  a = model.arch
  x = jnp.zeros((1, a.image_size, a.image_size, a.in_channels), jnp.float32)
  return model.init(rng, x)['params']


def count_params(params: Any) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
