"""Every jitted function that runs on a device lowers for GPU (CUDA, ROCm) and TPU, checked here on CPU.

`jax.export` lowers a jitted function for platforms this process has no devices of. Each entry of `CASES` is a
device function built as the package builds it, over the session's mesh of 8 CPU devices with explicit shardings,
at small shapes, and is exported once for each of `PLATFORMS`. A case fails on an op with no lowering on a
platform, a host callback inside it (`pure_callback`, `io_callback`, `jax.debug.*`), a float64 value, or an
XLA:CPU compiler option in what is exported. The exported train step must also hold what a data-parallel step
needs: the batch split over all 8 devices, the state replicated and donated; compiled here, its gradients are
all-reduced over the 8 devices (XLA's partitioner inserts the collectives, the same pass on every platform).
CPU-only compiler options must follow the mesh: the steps built for a GPU or TPU mesh carry none.

A new device function (attribution, feature visualisation, ...) gets an entry in `CASES`.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from zfnet_jax import config_lib, parallel
from conftest import config_path
from zfnet_jax.data import augment
from zfnet_jax.interpret import correspondence, deconvnet, featurevis, invariance, occlusion, topk
from zfnet_jax.model import network
from zfnet_jax.training import evaluation, optim, steps

PLATFORMS = ('cuda', 'rocm', 'tpu')
BATCH = 16  # 2 images per device
TINY = {'model.conv_features': (8, 8, 8, 8, 8), 'model.fc_features': (16, 16), 'model.num_classes': 10,
        'model.image_size': 64, 'input.resize_size': 72}  # default ZFNet's layout at 64 px: maps 32-15-8-3-3-3-1
CALLBACKS = ('callback', 'debug_print', 'debug_callback', 'outside_call')  # primitives and custom calls to the host


def tiny_config(**overrides):
  return config_lib.load(config_path('default'), {**TINY, **overrides})


def spec(shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype)


def train_case(mesh, dtype: str, crop: str = 'paper'):
  config = tiny_config(dtype=dtype, **{'input.crop': crop})
  model = network.create_model(config)
  tx = optim.create_optimizer(config.optim, optim.learning_rate_schedule(config.optim, 10, 100))
  init, train = steps.jit_steps(mesh, model, tx, config.seed, config.optim.filter_rms_radius,
                                inputs=augment.train_inputs_fn(config, None))
  state = jax.eval_shape(init, spec((), jax.random.key(0).dtype))
  r = config.input.resize_size
  return train, (state, {'image': spec((BATCH, r, r, 3), jnp.uint8), 'label': spec((BATCH,), jnp.int32)})


def eval_case(mesh, crops: int):
  config = tiny_config()
  model = network.create_model(config)
  fn = evaluation.jit_eval_step(mesh, model, augment.normalize_fn(config, None), crops)
  r = config.input.resize_size
  return fn, (params_spec(model), {'image': spec((BATCH, r, r, 3), jnp.uint8), 'label': spec((BATCH,), jnp.int32),
                                   'mask': spec((BATCH,), jnp.int32)})


def params_spec(model):
  return jax.eval_shape(functools.partial(network.init_params, model), jax.random.key(0))


def over_mesh(mesh, fn, shardings, static=()):
  """`fn` jitted as the analyses run it over `mesh`: `shardings` per argument, `'copies'` (replicated) or
  `'data'` (split over the batch axis)."""
  by_name = {'copies': parallel.replicated(mesh), 'data': parallel.sharded(mesh)}
  return jax.jit(fn, in_shardings=tuple(by_name[s] for s in shardings), static_argnums=static)


def interpret_case(mesh, name: str):
  """The analyses' device functions on the tiny network: images `[16, 64, 64, 3]` split over the mesh."""
  model = network.create_model(tiny_config())
  params, s = params_spec(model), model.arch.image_size
  images = spec((BATCH, s, s, 3), jnp.float32)
  if name == 'augment_inception':
    fn = functools.partial(augment.train_inputs, seed=0, size=s, crop='inception', flip=True, normalization='mean')
    return over_mesh(mesh, fn, ('data', 'copies')), (spec((BATCH, 72, 72, 3), jnp.uint8), spec((), jnp.int32))
  if name == 'deconv_record':
    return over_mesh(mesh, functools.partial(deconvnet.record, model), ('copies', 'data')), (params, images)
  if name == 'deconv_project':
    switches = jax.eval_shape(functools.partial(deconvnet.record, model), params, images).switches
    seeds = deconvnet.Seeds(*(spec((BATCH,), jnp.int32) for _ in range(4)), spec((BATCH,), jnp.float32))
    fn = lambda params, switches, seeds: deconvnet.project_patches(model.arch, params, switches, 5, seeds, chunk=8)
    return over_mesh(mesh, fn, ('copies', 'copies', 'copies')), (params, switches, seeds)
  if name == 'topk_update':
    layer_numbers = tuple(c.layer for c in model.arch.convs)
    states = {n: topk.topk_empty(8, 9) for n in layer_numbers}

    def update(states, params, images, ids, mask):  # stream_topk's step: one forward pass, every layer merged
      outputs = network.forward(model, params, images).layers
      return {n: topk.topk_update(states[n], outputs[f'layer{n}'], ids, mask) for n in layer_numbers}
    return (over_mesh(mesh, update, ('copies', 'copies', 'data', 'data', 'data')),
            (jax.eval_shape(lambda: states), params, images, spec((BATCH,), jnp.int32), spec((BATCH,), jnp.int32)))
  if name == 'occlusion':
    fn = functools.partial(occlusion.occlusion, model, size=9, stride=4)
    return over_mesh(mesh, fn, ('copies', 'copies', 'copies')), (params, spec((s, s, 3), jnp.float32),
                                                                 spec((), jnp.int32))
  if name == 'invariance_rotation':
    fn = lambda params, images, labels, amounts: invariance.invariance(model, params, images, labels, 'rotation',
                                                                        amounts)
    return (over_mesh(mesh, fn, ('copies', 'data', 'data', 'copies')),
            (params, images, spec((BATCH,), jnp.int32), spec((4,), jnp.float32)))
  if name == 'featurevis_step':  # one Adam step of 8 units x 2 diverse images, split over the mesh
    settings = featurevis.Settings(5, 'channel', False, 4, 2, 1.0, 0.05, 1.0, featurevis.REDIRECT_STEPS)
    programs = featurevis.jit_programs(model, settings, mesh)
    units, scalar = spec((8,), jnp.int32), spec((), jnp.int32)
    fourier, state = jax.eval_shape(programs.init, units, scalar)
    return programs.step, (params, units, scalar, spec((s, s, 3), jnp.float32), spec((3,), jnp.float32), fourier,
                           state, scalar)
  if name == 'correspondence':
    fn = functools.partial(correspondence.correspondence, model)
    return over_mesh(mesh, fn, ('copies', 'data', 'data')), (params, images, spec((BATCH, 4), jnp.int32))
  raise KeyError(name)


CASES = {
    'train_float32': functools.partial(train_case, dtype='float32'),
    'train_bfloat16': functools.partial(train_case, dtype='bfloat16'),
    'train_inception_crops': functools.partial(train_case, dtype='float32', crop='inception'),
    'eval_1_crop': functools.partial(eval_case, crops=1),
    'eval_10_crops': functools.partial(eval_case, crops=10),
    **{name: functools.partial(interpret_case, name=name) for name in (
        'augment_inception', 'deconv_record', 'deconv_project', 'topk_update', 'occlusion', 'invariance_rotation',
        'correspondence', 'featurevis_step')},
}


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8 and jax.devices()[0].platform == 'cpu'
  return parallel.make_mesh()


@pytest.fixture(scope='module')
def built(mesh):
  """`{case: (jitted, argument specs)}`, each built on first use."""
  cache = {}

  def get(case):
    if case not in cache:
      cache[case] = CASES[case](mesh)
    return cache[case]
  return get


@pytest.fixture(scope='module')
def exported(built):
  """`exported(case, platform)`: the case's `jax.export.Exported` for `platform`, made once."""
  cache = {}

  def get(case, platform):
    if (case, platform) not in cache:
      fn, args = built(case)
      try:
        cache[case, platform] = jax.export.export(fn, platforms=(platform,))(*args)
      except Exception as e:  # noqa: BLE001  (any failure to lower is the finding)
        cache[case, platform] = f'{case} does not lower for {platform}: {type(e).__name__}: {e}'[:3000]
    if isinstance(cache[case, platform], str):
      pytest.fail(cache[case, platform], pytrace=False)
    return cache[case, platform]
  return get


def primitives(jaxpr) -> set[str]:
  """Every primitive name in a (closed) jaxpr and the jaxprs inside its equations (jit, scan, cond, custom rules)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(v, 'eqns') or hasattr(getattr(v, 'jaxpr', None), 'eqns'):
          names |= primitives(v)
  return names


def main_signature(text: str) -> str:
  start = text.index('func.func public @main(')
  return text[start:text.index(') -> (', start)]


@pytest.mark.parametrize('platform', PLATFORMS)
@pytest.mark.parametrize('case', list(CASES))
def test_each_device_function_lowers_for_each_platform_without_callbacks_f64_or_cpu_options(case, platform, built,
                                                                                           exported):
  fn, args = built(case)
  callbacks = sorted(p for p in primitives(fn.trace(*args).jaxpr) if any(c in p for c in CALLBACKS))
  assert not callbacks, f'{case} calls back to the host inside the step: {callbacks}'
  e = exported(case, platform)
  text = e.mlir_module()
  assert e.platforms == (platform,) and e.nr_devices == 8
  targets = set(re.findall(r'stablehlo\.custom_call @([\w.$-]+)', text))
  assert not [t for t in targets if any(c in t.lower() for c in CALLBACKS)], f'{case}: host callbacks {targets}'
  f64 = re.findall(r'[^\n]*[<x(]f64\b[^\n]*', text)
  assert not f64, f'{case} computes in float64 on {platform}: {f64[0][:300]}'
  assert 'xla_cpu' not in text, f'{case}: an XLA:CPU option in the module exported for {platform}'


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_exported_train_step_is_data_parallel_and_donates_the_state(dtype, built, exported, mesh):
  fn, (state, batch) = built(f'train_{dtype}')
  e = exported(f'train_{dtype}', 'cuda')
  text = e.mlir_module()
  assert 'sdy.mesh @mesh = <["data"=8]>' in text and 'mhlo.num_partitions = 8' in text
  state_leaves, batch_leaves = len(jax.tree_util.tree_leaves(state)), len(jax.tree_util.tree_leaves(batch))
  specs = [s.spec for s in e.in_shardings_jax(mesh)]
  assert specs == [jax.sharding.PartitionSpec()] * state_leaves + [jax.sharding.PartitionSpec('data')] * batch_leaves
  assert all(s.spec == jax.sharding.PartitionSpec() for s in e.out_shardings_jax(mesh))  # state, metrics replicated
  args = re.split(r'%arg\d+: ', main_signature(text))[1:]
  donated = [i for i, a in enumerate(args) if 'tf.aliasing_output' in a or 'jax.buffer_donor' in a]
  assert donated == list(range(state_leaves)), f'donated arguments {donated}, the state is 0..{state_leaves - 1}'
  assert ('bf16' in text) == (dtype == 'bfloat16')  # bfloat16 compute is really in the step
  if dtype == 'float32':  # the collectives, from XLA's partitioner (compiled here for the 8 CPU devices)
    hlo = fn.lower(state, batch).compile().as_text()
    reduced = 0
    for shapes, groups in re.findall(r' = (.*?) all-reduce(?:-start)?\(.*?replica_groups=(\S+)', hlo):
      assert groups.startswith("mesh['axis_0'=8,") or groups.startswith('{{0,1,2,3,4,5,6,7}}'), groups
      reduced += sum(int(np.prod([int(d) for d in dims.split(',') if d])) for dims in re.findall(r'f32\[([\d,]*)\]',
                                                                                                   shapes))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    assert reduced >= n_params, f'all-reduced {reduced} values, the gradients alone are {n_params}'
    assert not re.search(r'\ball-gather\(|\ball-to-all\(', hlo)  # batch rows never move between devices


def abstract_mesh(platform: str) -> AbstractMesh:
  """A mesh of 8 devices of `platform` as the package sees one on such a host, without the devices."""
  return AbstractMesh((8,), ('data',), abstract_device=AbstractDevice(device_kind=platform, num_cores=None,
                                                                     platform=platform))


def compile_options(fn, args, platform: str) -> dict:
  """The XLA options `fn`, lowered for `platform`, would be compiled with (what `jax.jit(compiler_options=...)` set)."""
  return dict(fn.trace(*args).lower(lowering_platforms=(platform,))._lowering._compiler_options_kvs)


@pytest.mark.parametrize('platform', ['gpu', *PLATFORMS])
def test_cpu_compiler_options_follow_the_mesh_and_never_reach_another_platform(platform, built):
  lowering_platform = 'cuda' if platform == 'gpu' else platform  # a CUDA device's `platform` is 'gpu'
  for case in ('train_float32', 'eval_10_crops'):
    on_cpu = compile_options(*built(case), 'cpu')
    assert on_cpu and all(k.startswith('xla_cpu_') for k in on_cpu), on_cpu  # the check sees options at all
    fn, args = CASES[case](abstract_mesh(platform))
    assert parallel.compiler_options(abstract_mesh(platform)) is None
    assert compile_options(fn, args, lowering_platform) == {}, f'{case} built for a {platform} mesh'
    e = jax.export.export(fn, platforms=(lowering_platform,))(*args)
    assert 'xla_cpu' not in e.mlir_module() and e.nr_devices == 8
