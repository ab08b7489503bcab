"""`python -m zfnet_jax.visualize COMMAND --config CFG --workdir DIR [--out DIR] [options]`: the paper's figures.

Each command computes its arrays with `zfnet_jax.interpret` and draws them with `interpret.figures`; it works
on any network the config describes (ablations, AlexNet, LRN on or off).
Commands (each reads the checkpoint in `--workdir`, writes PNGs with their raw arrays beside them into
`--out` (default `WORKDIR/visualize/COMMAND`) and prints every path it wrote):
  project         one activation projected to pixel space (Section 2.1)
  topk            the top-9 activations of feature maps, projected, beside their image patches (Fig. 2)
  filters         the layer-1 filters (Fig. 6)
  occlusion       a grey square slid over an image: top conv layer's activity, true-class probability,
                  top class (Fig. 7)
  correspondence  Table 1's Delta (at the last conv and last hidden layers, or `--layers`) for one masked
                  part, against random masks
  invariance      feature distances (at the first and last hidden layers, or `--layers`) and true-class
                  probability under translation, scale, rotation (Fig. 5)
  evolution       the strongest activation of feature maps at every checkpoint of the run up to `--step` (Fig. 4)
  attribute       one image's maps by a method of the attribution engine (deconvnet, guided backprop, gradient,
                  gradient x input, integrated gradients, smoothgrad, Grad-CAM; `--method all`: side by side)
  sanity          the sanity checks (Adebayo et al., Nie et al., Mahendran & Vedaldi) on the checkpoint: CSV/JSON
                  tables, the cascading-randomisation figure and the similarity curves
  featurevis      the image each unit asks for, by optimisation (Olah et al. 2017): images.npy, inputs.npy, a PNG
                  grid and the objective each image reaches (activations.csv/json)
  report          a static site: every unit of every layer with its top-9 projections, and the above
                  (`OUT/index.html`, default `WORKDIR/report/`; see `interpret/report.py`)
Images come from the evaluation split (`--index`; `--count` of class `--label`) or from files (`--image`,
`--images`): any image format, preprocessed as for evaluation, or a `.npy` float32 `[H, W, C]` network
input used as is. Config fields are overridden as in training: `--config.dataset.data_dir=DIR`. A known
error prints as one `error:` line (exit status 1); `--verbose` (or `ZFNET_VERBOSE=1`) adds its traceback.

  python -m zfnet_jax.visualize topk --config configs/digits.py --workdir runs/digits
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zfnet_jax import cli, config_lib, progress
from zfnet_jax.data import augment, inputs, pipeline, sources, squares
from zfnet_jax.interpret import (attribution, correspondence, evolution, featurevis, figures, invariance, occlusion,
                                 projection, report, sanity, site, topk)
from zfnet_jax.model import network, receptive_field
from zfnet_jax.training import checkpointing, metric_writer


def load_run(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> report.Run:
  """The checkpoint at `step` (default: the newest that restores) of the run in `workdir`, the steps kept up to
  it with a loader for each (incomplete step folders left out, with a warning), and the run's metrics: what
  every command reads of a run."""
  model, params, step = checkpointing.load_params(config, workdir, step)
  mngr = checkpointing.manager(workdir)
  steps = [s for s in mngr.all_steps() if s <= step and _complete(mngr, s)]
  mngr.close()
  params_at = lambda s: params if s == step else checkpointing.load_params(config, workdir, s)[1]  # noqa: E731
  return report.Run(workdir, model, params, step, steps, params_at, metric_writer.read_curves(workdir))


def _complete(mngr, step: int) -> bool:
  try:
    checkpointing.check_complete(mngr, step)
    return True
  except FileNotFoundError as e:
    progress.warn(f'checkpoint step {step} in {mngr.directory} is left out: {e}')
    return False


def _names(config: ml_collections.ConfigDict) -> list[str]:
  return sources.class_names(config) or [str(c) for c in range(config.model.num_classes)]


def _one_image(args, config) -> tuple[np.ndarray, int | None, str]:
  """`(image, label or None, description)` from `--image` or `--index` of the split."""
  if args.image:
    return inputs.load_input(args.image, config), None, os.path.basename(args.image)
  images, labels, _ = pipeline.first_images(config, args.split, lambda i, _: i == args.index, 1)
  return images[0], int(labels[0]), f'{args.split} image {args.index}'


def _image_set(args, config) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`--images` files (with `--labels`), else `--count` images of the split (of class `--label` if given)."""
  if args.images:
    labels = args.labels or [0] * len(args.images)
    if len(labels) != len(args.images):
      raise ValueError(f'--labels needs one label per image: {len(args.images)} images, {len(labels)} labels')
    return np.stack([inputs.load_input(p, config) for p in args.images]), np.asarray(labels), \
        [os.path.basename(p) for p in args.images]
  want = (lambda i, label: True) if args.label is None else (lambda i, label: label == args.label)
  images, labels, indices = pipeline.first_images(config, args.split, want, args.count)
  return images, labels, [f'{args.split} {i}' for i in indices]


def _layers(args, available: tuple[int, ...], default: tuple[int, ...], what: str) -> tuple[int, ...]:
  """`--layers` as numbers, each one of `available` (`what` says which kind); `default` without it."""
  wanted = tuple(int(v) for v in args.layers.split(',')) if args.layers else default
  if not wanted or not set(wanted) <= set(available):
    raise ValueError(f'--layers must name {what} of this network, {list(available)}; got {args.layers}')
  return wanted


def _conv_layers(args, model: network.ConvNet) -> tuple[int, ...]:
  convs = tuple(c.layer for c in model.arch.convs)
  return _layers(args, convs, convs, 'conv layers')


def _batches(args, config):
  """The split's batches (`--max_images` of them) as the top-k passes read them, once per call."""
  return lambda: pipeline.split_batches(config, args.split, args.max_images)


def run_project(args, config, run: report.Run, write: figures.Writer) -> None:
  image, _, source = _one_image(args, config)
  proj = projection.project_activation(run.model, run.params, image, args.layer, args.channel, args.position)
  name = f'project_layer{args.layer}_map{proj.channel}_y{proj.position[0]}_x{proj.position[1]}'
  np.save(write.path(name + '.npy'), proj.reconstruction)
  write.figure(name + '.png', figures.project_figure(image, proj, config, source, args.layer,
                                                     squares.pixel_mean(config)))


def run_topk(args, config, run: report.Run, write: figures.Writer) -> None:
  tops, results = topk.top_projections(run.model, run.params, _batches(args, config), _conv_layers(args, run.model),
                                       args.k, args.maps, np.random.default_rng(args.seed))
  pixel_mean = squares.pixel_mean(config)
  for n, result in results.items():
    write.arrays(f'topk_layer{n}.npz', channel=result.channel, value=result.top.value, image=result.top.image,
                 y=result.top.y, x=result.top.x, reconstruction=result.reconstruction, patch=result.patch,
                 window=result.window, receptive_field=result.receptive_field,
                 all_value=tops[n].value, all_image=tops[n].image, all_y=tops[n].y, all_x=tops[n].x)
    size = receptive_field.nominal(run.model.arch, n)[0]
    fig = figures.topk_figure(result, config, f'layer {n}: top {args.k} activations of {len(result.channel)} feature '
                                              f'maps over {args.split} (projection | image patch, {size} px field)',
                              pixel_mean)
    write.figure(f'topk_layer{n}.png', fig)


def run_filters(args, config, run: report.Run, write: figures.Writer) -> None:
  first = run.model.arch.convs[0]
  kernel = np.asarray(run.params[first.name]['kernel'])  # [k, k, C_in, F]
  np.save(write.path('filters_layer1.npy'), kernel)
  write.figure('filters_layer1.png', figures.filters_figure(kernel, first.stride))


def run_occlusion(args, config, run: report.Run, write: figures.Writer) -> None:
  image, label, source = _one_image(args, config)
  result = occlusion.sensitivity(run.model, run.params, image, args.label if args.label is not None else label,
                                 args.size, args.stride)
  maps, top_layer = result.maps, run.model.arch.convs[-1].layer
  proj = projection.project_activation(run.model, run.params, image, top_layer, int(maps.feature))
  write.arrays('occlusion.npz', activity=maps.activity, probability=maps.probability, top_class=maps.top_class,
               feature=maps.feature, rows=maps.rows, cols=maps.cols, size=result.size, stride=result.stride,
               label=result.label, image=image, projection=proj.reconstruction)
  write.figure('occlusion.png', figures.occlusion_figure(result, image, proj.reconstruction, config, _names(config),
                                                         source, top_layer, squares.pixel_mean(config)))


def run_correspondence(args, config, run: report.Run, write: figures.Writer) -> None:
  arch = run.model.arch
  layer_numbers = _layers(args, arch.layer_numbers, correspondence.default_layers(arch), 'layers')
  images, _, names = _image_set(args, config)
  boxes = np.asarray(args.box * (len(images) if len(args.box) == 1 else 1))
  if boxes.shape != (len(images), 4):
    raise ValueError(f'give one --box T,L,H,W for all images or one per image ({len(images)}), got {len(args.box)}')
  part, random = correspondence.with_random_baseline(run.model, run.params, images, boxes, layer_numbers,
                                                     args.random_draws, np.random.default_rng(args.seed))
  write.arrays('correspondence.npz', boxes=boxes, images=images, **{f'delta_layer{n}': part[n] for n in part},
               **{f'random_delta_layer{n}': random[n] for n in random})
  print('layer  Delta(masked part)  Delta(random masks, mean +- std over %d draws)' % args.random_draws)
  for n in layer_numbers:
    print(f'{n:5d}  {part[n]:18.4f}  {np.mean(random[n]):.4f} +- {np.std(random[n]):.4f}')
  masked = np.asarray(correspondence.mask_boxes(images, boxes))
  write.figure('correspondence.png', figures.correspondence_figure(masked, names, part, random, config,
                                                                   squares.pixel_mean(config)))


def run_invariance(args, config, run: report.Run, write: figures.Writer) -> None:
  arch = run.model.arch
  layer_numbers = _layers(args, arch.layer_numbers, invariance.default_layers(arch), 'layers')
  images, labels, names = _image_set(args, config)
  amounts, results = invariance.all_transforms(run.model, run.params, images, labels, layer_numbers)
  write.arrays('invariance.npz', labels=labels, **{f'{kind}_amount': amounts[kind] for kind in results},
               **{f'{kind}_{k}': v for kind, r in results.items() for k, v in r.items()})
  class_names = _names(config)
  write.figure('invariance.png', figures.invariance_figure(
      amounts, results, [f'{name} ({class_names[label]})' for name, label in zip(names, labels)]))


def run_evolution(args, config, run: report.Run, write: figures.Writer) -> None:
  result = evolution.evolution(run.model, run.steps, run.params_at, _batches(args, config),
                               _conv_layers(args, run.model), args.maps)
  layers = list(result.channels)
  write.arrays('evolution.npz', steps=np.asarray(result.steps),
               **{f'layer{n}_channel': result.channels[n] for n in layers},
               **{f'layer{n}_value': result.values[n] for n in layers},
               **{f'layer{n}_reconstruction': result.reconstructions[n] for n in layers})
  write.figure('evolution.png', figures.evolution_figure(result.steps, result.channels, result.reconstructions))


def _black(config, image: np.ndarray) -> np.ndarray:
  """The network input `[S, S, C]` of a black image under the config's normalisation."""
  mean, std = augment.channel_stats(image.shape[-1])
  if config.input.normalization == 'mean_std':
    return np.broadcast_to(-mean / std, image.shape).astype(np.float32)
  return np.broadcast_to(-np.asarray(squares.pixel_mean(config)).mean(axis=(0, 1)), image.shape).astype(np.float32)


def _method(name: str) -> str | attribution.Rules:
  """A method name, or a cube point by its name (e.g. `no_mask-no_switches-rectify`)."""
  named = {r.name: r for r in attribution.all_rules()}
  if name in attribution.METHODS:
    return name
  if name in named:
    return named[name]
  raise ValueError(f'unknown --method {name!r}: use all, one of {", ".join(attribution.METHODS)} or a cube point '
                   f'({", ".join(named)})')


def run_attribute(args, config, run: report.Run, write: figures.Writer) -> None:
  image, label, source = _one_image(args, config)
  arch = run.model.arch
  methods = list(attribution.METHODS) if args.method == 'all' else [args.method]
  images = jnp.asarray(image[None])
  classes = args.target if args.target is not None else int(sanity.predicted(run.model, run.params, images)[0])
  baseline = _black(config, image) if args.baseline == 'black' else 0.0
  maps = {}
  for name in methods:
    method = _method(name)
    if name == 'gradcam' or args.layer is None:
      layer = f'layer{args.layer}' if name == 'gradcam' and args.layer is not None else 'logits'
      targets = attribution.Targets(*(jnp.asarray([v], jnp.int32) for v in (classes, 0, 0)))
    else:
      y, x = args.position if args.position else (-1, -1)
      layer, targets = f'layer{args.layer}', attribution.Targets(*(jnp.asarray([v], jnp.int32)
                                                                  for v in (args.channel, y, x)))
    maps[name] = np.asarray(attribution.attribute(arch, run.params, images, targets, layer, method, steps=args.steps,
                                                  baseline=baseline))[0]
    np.save(write.path(f'{name}.npy'), maps[name])
    write.figure(f'{name}.png', figures.attribution_figure(image, {name: maps[name]}, config, source))
  what = (f'class {classes}' if args.layer is None else f'layer {args.layer}, map {args.channel}'
          + (f' at {tuple(args.position)}' if args.position else ' (whole map)'))
  if len(methods) > 1:
    write.figure('attribute_all.png', figures.attribution_figure(image, maps, config, f'{source}: {what}'))


def _write_rows(write: figures.Writer, name: str, rows: list[dict]) -> None:
  with open(write.path(name + '.csv'), 'w', newline='') as f:
    out = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    out.writeheader()
    out.writerows(rows)
  with open(write.path(name + '.json'), 'w') as f:
    json.dump(rows, f, indent=1)


def run_sanity(args, config, run: report.Run, write: figures.Writer) -> None:
  start = time.perf_counter()
  methods = tuple(args.methods)
  if args.random_weights:
    images = np.stack([inputs.load_input(f, config) for f in args.image_files])
    rows = (sanity.image_recovery(run.model, run.params, images, methods, args.steps)
            + sanity.random_class(run.model, run.params, images, methods, args.seed, args.steps))
    _write_rows(write, 'recovery', rows)
    print(f'image recovery on {len(images)} images, {len(methods)} methods: {time.perf_counter() - start:.0f} s')
    return
  images, _, _ = pipeline.first_images(config, args.split, lambda i, _: True, args.images)
  rows, cascade = sanity.randomisation(run.model, run.params, images, methods, args.seed, args.steps)
  rows += sanity.random_class(run.model, run.params, images, methods, args.seed, args.steps)
  if args.permuted_workdir:
    permuted = load_run(config, args.permuted_workdir)
    rows += sanity.data_randomisation(run.model, run.params, permuted.params, images, methods, args.steps)
  _write_rows(write, 'sanity', rows)
  layer = args.layer or run.model.arch.convs[-1].layer
  _write_rows(write, 'selectivity', sanity.selectivity(run.model.arch, run.params, images, layer, seed=args.seed))
  _write_rows(write, 'bottlenecks', sanity.bottleneck_table(run.model.arch, run.params, images, layer,
                                                            seed=args.seed))
  write.figure('sanity_cascade.png', figures.sanity_figure(images[0], {m: {k: v[0] for k, v in c.items()}
                                                                       for m, c in cascade.items()}, config))
  write.figure('sanity_curves.png', figures.similarity_curves_figure(
      [r for r in rows if r['test'] in ('cascading', 'independent')], sanity.METRICS))
  print(f'sanity checks on {len(images)} images, {len(methods)} methods: {time.perf_counter() - start:.0f} s')


def run_featurevis(args, config, run: report.Run, write: figures.Writer) -> None:
  layer = args.layer if args.layer is not None else (featurevis.CLASS_LAYER if args.objective == 'class' else None)
  if layer is None:
    raise ValueError('--layer is required (a conv layer 1-5 or fc layer 6, 7; 8 with --objective class)')
  units = [int(v) for v in args.units.split(',')] if args.units else None
  start = time.perf_counter()
  result = featurevis.optimise(run.model, run.params, config, layer, units, objective=args.objective,
                               negative=args.negative, steps=args.steps, diversity=args.diversity,
                               diversity_weight=args.diversity_weight, seed=args.seed,
                               learning_rate=args.learning_rate)
  seconds = time.perf_counter() - start
  squeeze = (lambda a: a[:, 0]) if args.diversity == 1 else (lambda a: a)  # noqa: E731
  np.save(write.path('images.npy'), squeeze(result.pixels))
  np.save(write.path('inputs.npy'), squeeze(result.inputs))
  best = None
  if args.compare:
    best = featurevis.dataset_best(run.model, run.params, _batches(args, config)(), (layer,), args.objective,
                                   args.negative)[layer][result.units]
  rows = [{'unit': int(u), 'k': j, 'activation': float(result.activation[i, j]),
           **({'dataset_best': float(best[i]), 'beats_dataset': bool(result.activation[i, j] > best[i])}
              if best is not None else {})}
          for i, u in enumerate(result.units) for j in range(args.diversity)]
  _write_rows(write, 'activations', rows)
  sign = 'minus ' if args.negative else ''
  name = f'featurevis_layer{layer}.png'
  report.save_png(os.path.dirname(write.path(name)), name, figures.featurevis_grid(result.pixels))
  if args.topk:
    if layer not in [c.layer for c in run.model.arch.convs]:
      raise ValueError(f'--topk draws the top images of conv units; layer {layer} is not a conv layer')
    tops = topk.stream_topk(run.model, run.params, _batches(args, config)(), (layer,), k=args.topk)
    projected = topk.project_topk(run.model, run.params, _batches(args, config)(), tops, {layer: result.units})
    name = f'featurevis_topk_layer{layer}.png'
    report.save_png(os.path.dirname(write.path(name)), name, figures.featurevis_beside_topk(
        result.pixels, projected[layer], config, squares.pixel_mean(config)))
  print(f'{len(result.units)} units x {args.diversity} images of layer {layer} ({sign}{args.objective}), '
        f'{args.steps} steps: {seconds:.0f} s')


def run_report(args, config, run: report.Run) -> None:
  out = args.out or os.path.join(args.workdir, 'report')
  layer_numbers = tuple(int(v) for v in args.layers.split(',')) if args.layers else None
  data = report.build(config, out, run, max_images=args.images, layers=layer_numbers, split=args.split, k=args.k,
                      occlusion_images=args.examples, invariance_images=args.examples,
                      sanity_images=args.sanity_images, featurevis_steps=args.featurevis_steps,
                      featurevis_diversity=args.featurevis_diversity, featurevis_negative=args.featurevis_negative,
                      featurevis_seed=args.seed)
  if data is not None:  # process 0
    site.write_site(out, data)
    print(os.path.join(out, 'index.html'))


# ------------------------------------------------------------------------------------------------- main

def _count_or_all(value: str) -> int | None:
  if value == 'all':
    return None
  if not value.isdigit() or int(value) < 1:
    raise argparse.ArgumentTypeError(f'expected a positive number of images or "all", got {value!r}')
  return int(value)


def _parents() -> tuple[argparse.ArgumentParser, ...]:
  """The option groups commands share: `(common, one image, many images, dataset)`."""
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--config', required=True, help='config file, e.g. configs/digits.py; override fields '
                      'with --config.FIELD=VALUE')
  common.add_argument('--workdir', required=True, help='the training run (its checkpoints/ folder)')
  common.add_argument('--out', help='output folder (default: WORKDIR/visualize/COMMAND)')
  common.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  common.add_argument('--split', help='dataset split (default: config.dataset.eval_split)')
  common.add_argument('--seed', type=int, default=0, help='for random choices (topk\'s feature maps, random masks)')
  one = argparse.ArgumentParser(add_help=False)
  one.add_argument('--image', help='an image file (any size) or a preprocessed .npy [H, W, C] float32')
  one.add_argument('--index', type=int, default=0, help='without --image: this image of the split')
  many = argparse.ArgumentParser(add_help=False)
  many.add_argument('--images', nargs='+', help='image files or .npy network inputs')
  many.add_argument('--labels', nargs='+', type=int, help='their true classes (with --images)')
  many.add_argument('--label', type=int, help='without --images: take images of this class from the split')
  many.add_argument('--count', type=int, default=5, help='without --images: how many images from the split')
  dataset = argparse.ArgumentParser(add_help=False)
  dataset.add_argument('--max_images', type=int, help='use only the first N images of the split')
  dataset.add_argument('--layers', help='comma-separated conv layers (default: all)')
  return common, one, many, dataset


def _parser() -> argparse.ArgumentParser:
  common, one, many, dataset = _parents()
  parser = argparse.ArgumentParser(prog='python -m zfnet_jax.visualize', description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('project', parents=[common, one], help='project one activation to pixel space')
  p.add_argument('--layer', type=int, required=True, help='conv layer 1-5 (its output after ReLU, pool, LRN)')
  p.add_argument('--channel', type=int, help='feature map (default: the one with the strongest activation)')
  p.add_argument('--position', type=int, nargs=2, metavar=('Y', 'X'), help='default: the map\'s strongest')
  p = sub.add_parser('topk', parents=[common, dataset], help='Fig. 2: top-k activations, projected')
  p.add_argument('--k', type=int, default=9, help='activations kept per feature map (9 in the paper)')
  p.add_argument('--maps', type=int, default=16, help='feature maps per layer to project and draw, chosen at random '
                 'among those that fire (0: all)')
  sub.add_parser('filters', parents=[common], help='Fig. 6: layer-1 filters')
  p = sub.add_parser('occlusion', parents=[common, one], help='Fig. 7: occlusion sensitivity')
  p.add_argument('--label', type=int, help='true class (default: the split\'s label, or the predicted class)')
  p.add_argument('--size', type=int, help='square side in pixels (default: image size / 7)')
  p.add_argument('--stride', type=int, help='square stride (default: size / 2)')
  p = sub.add_parser('correspondence', parents=[common, many], help='Table 1: correspondence of a masked part')
  p.add_argument('--box', nargs='+', required=True, type=lambda v: [int(i) for i in v.split(',')],
                 help='TOP,LEFT,HEIGHT,WIDTH in network-input pixels: one for all images, or one per image')
  p.add_argument('--random_draws', type=int, default=10, help='random-mask draws for the baseline')
  p.add_argument('--layers', help='comma-separated layers, conv or fc (default: the last conv and the last '
                 'hidden layer present; 5,7 in the full network)')
  p = sub.add_parser('invariance', parents=[common, many], help='Fig. 5: invariance curves')
  p.add_argument('--layers', help='comma-separated layers, conv or fc (default: the first and the last hidden '
                 'layer present; 1,7 in the full network)')
  p = sub.add_parser('evolution', parents=[common, dataset], help='Fig. 4: features across checkpoints')
  p.add_argument('--maps', type=int, default=evolution.MAPS, help='feature maps per layer, spread evenly over those '
                 'that fire at the last checkpoint (0: all); the report draws the same')
  p = sub.add_parser('attribute', parents=[common, one], help='attribution maps of one image, by method')
  p.add_argument('--method', default='all', help=f'all, {", ".join(attribution.METHODS)}, or a cube point such as '
                 'no_mask-no_switches-rectify')
  p.add_argument('--target', type=int, help='class (default: the predicted one); Grad-CAM\'s class')
  p.add_argument('--layer', type=int, help='a unit\'s layer (with --channel); for gradcam its conv layer (default: '
                 'the last with a map larger than 1x1)')
  p.add_argument('--channel', type=int, default=0, help='with --layer: the unit\'s channel')
  p.add_argument('--position', type=int, nargs=2, metavar=('Y', 'X'), help='with --layer: the unit\'s place '
                 '(default: the whole map, its own values sent down)')
  p.add_argument('--steps', type=int, default=32, help='integrated gradients\' steps')
  p.add_argument('--baseline', choices=('zero', 'black'), default='zero', help='integrated gradients\' baseline')
  p = sub.add_parser('sanity', parents=[common], help='sanity checks: randomisation, random class, selectivity')
  p.add_argument('--methods', nargs='+', default=list(sanity.DEFAULT_METHODS), choices=attribution.METHODS)
  p.add_argument('--images', type=int, default=8, help='the first N images of the split')
  p.add_argument('--steps', type=int, default=16, help='integrated gradients\' steps')
  p.add_argument('--layer', type=int, help='conv layer for neuron selectivity and the 2^3 table (default: the last)')
  p.add_argument('--random_weights', action='store_true', help='Nie et al.\'s image recovery on the config\'s '
                 'network with freshly initialised weights (--workdir is not read): edge similarity and random class')
  p.add_argument('--image_files', nargs='+', help='with --random_weights: the image files')
  p.add_argument('--permuted_workdir', help='a run trained with config.dataset.permute_labels_seed >= 0: adds '
                 'data randomisation')
  p = sub.add_parser('featurevis', parents=[common], help='feature visualisation: the image each unit asks for',
                     description='Optimises, for each unit, the input that maximises it (Olah et al. 2017; Lucid\'s '
                     'Fourier image, decorrelated colour, transforms and redirected ReLU) and writes images.npy: '
                     'float32 pixels in [0, 255], [U, H, W, C], or [U, K, H, W, C] with --diversity K > 1; '
                     'inputs.npy: the same images as the network takes them (normalised, to feed back); '
                     'featurevis_layerL.png (a grid; K images per row with --diversity); activations.csv/json (the '
                     'objective each image reaches without transforms; with --compare also the split\'s best); with '
                     '--topk K also featurevis_topk_layerL.png.')
  p.add_argument('--layer', type=int, help='conv layer 1-5, fc layer 6 or 7; 8 (the logits) with --objective class')
  p.add_argument('--units', help='comma-separated units (channels, fc units or classes; default: all)')
  p.add_argument('--objective', choices=featurevis.OBJECTIVES, default='channel', help='channel: the map\'s mean; '
                 'neuron: the map\'s centre; class: a logit')
  p.add_argument('--negative', action='store_true', help='maximise minus the objective')
  p.add_argument('--steps', type=int, default=512, help='Adam steps (Lucid: 512)')
  p.add_argument('--diversity', type=int, default=1, metavar='K', help='K images per unit, made different by '
                 'Lucid\'s Gram-matrix diversity term')
  p.add_argument('--diversity_weight', type=float, default=featurevis.DIVERSITY_WEIGHT, help='the diversity term\'s '
                 'weight')
  p.add_argument('--learning_rate', type=float, default=0.05, help='Adam\'s learning rate (Lucid: 0.05)')
  p.add_argument('--compare', action='store_true', help='also each unit\'s best value of the objective over the '
                 'split\'s images (--max_images), in activations.csv/json')
  p.add_argument('--topk', type=int, default=0, metavar='K', help='also featurevis_topk_layerL.png: each unit\'s '
                 'visualisations beside its top K activations over the split (deconvnet projections, image patches)')
  p.add_argument('--max_images', type=int, help='with --compare or --topk: only the first N images of the split')
  p = sub.add_parser('report', parents=[common], help='a static site: every unit of every layer, and the figures',
                     description='Writes OUT/index.html (--out default for this command: WORKDIR/report/), '
                     'a layer page per conv layer and analyses.html; re-running reuses what is built.')
  p.add_argument('--images', type=_count_or_all, default=None, metavar='N|all', help='the first N images of the '
                 'split for the top-k and class statistics (default: all, the whole split, with progress and ETA)')
  cli.add_multihost_arguments(p)
  p.add_argument('--layers', help='comma-separated conv layers to give pages (default: all)')
  p.add_argument('--k', type=int, default=9, help='activations kept per unit (9 in the paper)')
  p.add_argument('--examples', type=int, default=3, help='images for the occlusion maps and invariance curves')
  p.add_argument('--sanity_images', type=int, default=0, help='> 0: sanity.html (randomisation and random-class '
                 'checks on this many images) and each unit\'s selectivity on its layer page')
  p.add_argument('--featurevis_steps', type=int, default=report.FEATUREVIS_STEPS, help='optimisation steps of each '
                 'unit\'s feature visualisation on the layer pages (layers 2 and up; --seed seeds them); 0: none')
  p.add_argument('--featurevis_diversity', type=int, default=1, metavar='K', help='K diverse visualisations per unit')
  p.add_argument('--featurevis_negative', action='store_true', help='also each unit\'s negative visualisation')
  return parser


COMMAND_FUNCTIONS = {'project': run_project, 'topk': run_topk, 'filters': run_filters, 'occlusion': run_occlusion,
                     'correspondence': run_correspondence, 'invariance': run_invariance, 'evolution': run_evolution,
                     'attribute': run_attribute, 'sanity': run_sanity, 'featurevis': run_featurevis}


def main(argv: list[str]) -> None:
  """Runs one command; `argv` without the program name."""
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unrecognised arguments: {" ".join(unknown)} (config fields go as --config.FIELD=VALUE)')
  config = config_lib.from_args(args.config, rest)
  args.split = args.split or config.dataset.eval_split
  sources.hide_accelerators_from_tf()
  if args.command == 'report':
    cli.start_multihost(args.coordinator_address, args.num_processes, args.process_id, args.distributed)
  if getattr(args, 'random_weights', False):
    model = network.create_model(config)
    params = network.init_params(model, jax.random.key(args.seed))
    run = report.Run(args.workdir, model, params, 0, [0], lambda _: params, {})
  else:
    run = load_run(config, args.workdir, args.step)
  if args.command == 'report':
    return run_report(args, config, run)
  write = figures.Writer(args.out or os.path.join(args.workdir, 'visualize', args.command))
  COMMAND_FUNCTIONS[args.command](args, config, run, write)


if __name__ == '__main__':
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # tfds and Orbax log every file they touch at INFO
  with cli.errors_for_people('--verbose' in sys.argv[1:]):
    main([a for a in sys.argv[1:] if a != '--verbose'])
