"""`python -m zfnet_jax.visualize COMMAND --config CFG --workdir DIR [--out DIR] [options]`: the paper's figures.

Commands (each reads the checkpoint in `--workdir`, writes PNGs with their raw arrays beside them into
`--out` (default `WORKDIR/visualize/COMMAND`) and prints every path it wrote):
  project         one activation projected to pixel space (Section 2.1)
  topk            the top-9 activations of feature maps, projected, beside their image patches (Fig. 2)
  filters         the layer-1 filters (Fig. 6)
  occlusion       a grey square slid over an image: layer-5 activity, true-class probability, top class (Fig. 7)
  correspondence  Table 1's Delta at layers 5 and 7 for one masked part, against random masks
  invariance      feature distances and true-class probability under translation, scale, rotation (Fig. 5)
  evolution       the strongest activation of feature maps at every checkpoint of the run (Fig. 4)
  report          a static site: every unit of every layer with its top-9 projections, and the above
                  (`OUT/index.html`, default `WORKDIR/report/`; see `interpret/report.py`)
Images come from the evaluation split (`--index`, `--indices`) or from files (`--image`, `--images`):
any image format, preprocessed as for evaluation, or a `.npy` float32 `[H, W, C]` network input used
as is. Config fields are overridden as in training: `--config.dataset.data_dir=DIR`.

  python -m zfnet_jax.visualize topk --config configs/digits.py --workdir runs/digits
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zfnet_jax import config_lib
from zfnet_jax.data import pipeline, preprocess, sources
from zfnet_jax.interpret import correspondence, deconvnet, figures, invariance, occlusion, report, site, topk
from zfnet_jax.model import network, receptive_field
from zfnet_jax.training import checkpointing


# ------------------------------------------------------------------------------------------------ inputs

def batches(config: ml_collections.ConfigDict, split: str, max_images: int | None) -> Iterator[dict[str, np.ndarray]]:
  """The split's evaluation batches (fixed order), with `mask` 0 from image `max_images` on."""
  stream, _, _ = pipeline.eval_batches(config, split)
  seen = 0
  for batch in stream:
    if max_images is not None:
      batch['mask'] = np.where(seen + np.arange(len(batch['mask'])) < max_images, batch['mask'], 0)
      if seen >= max_images:
        return
    seen += len(batch['mask'])
    yield batch


def split_images(config: ml_collections.ConfigDict, split: str, keep: Callable[[int, int], bool],
                 count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first `count` images `i` of the split with `keep(i, label)`: `(images, labels, indices)`."""
  images, labels, indices, seen = [], [], [], 0
  for batch in batches(config, split, None):
    for image, label, mask in zip(batch['image'], batch['label'], batch['mask']):
      if mask and keep(seen, int(label)):
        images.append(image), labels.append(int(label)), indices.append(seen)
      seen += int(mask)
      if len(images) == count:
        return np.stack(images), np.asarray(labels), np.asarray(indices)
  raise ValueError(f'split {split!r} has only {len(images)} of the {count} images asked for')


# ---------------------------------------------------------------------------------------------- commands

def _names(config) -> list[str]:
  return sources.class_names(config) or [str(c) for c in range(config.model.num_classes)]


def _one_image(args, config) -> tuple[np.ndarray, int | None, str]:
  """`(image, label or None, description)` from `--image` or `--index` of the split."""
  if args.image:
    return preprocess.load_input(args.image, config), None, os.path.basename(args.image)
  images, labels, _ = split_images(config, args.split, lambda i, _: i == args.index, 1)
  return images[0], int(labels[0]), f'{args.split} image {args.index}'


def run_project(args, config, model, params, write: figures.Writer) -> None:
  arch, layer = model.arch, args.layer
  if layer not in [c.layer for c in arch.convs]:
    raise ValueError(f'--layer must be a conv layer of this network, {[c.layer for c in arch.convs]}; got {layer}')
  image, _, source = _one_image(args, config)
  recording = jax.jit(deconvnet.record, static_argnums=0)(model, params, image[None])
  act = np.asarray(recording.layers[f'layer{layer}'][0])
  channel = int(np.argmax(act.max(axis=(0, 1)))) if args.channel is None else args.channel
  if not 0 <= channel < act.shape[-1]:
    raise ValueError(f'--channel must be in 0..{act.shape[-1] - 1} for layer {layer}, got {channel}')
  if args.position is None:
    y, x = np.unravel_index(np.argmax(act[..., channel]), act.shape[:2])
  else:
    y, x = args.position
    if not (0 <= y < act.shape[0] and 0 <= x < act.shape[1]):
      raise ValueError(f'--position must lie in the {act.shape[0]}x{act.shape[1]} map of layer {layer}')
  value = float(act[y, x, channel])
  seeds = deconvnet.Seeds(*(jnp.asarray([v], jnp.int32) for v in (0, channel, y, x)), jnp.asarray([value]))
  proj = jax.jit(deconvnet.project_patches, static_argnums=(0, 3))(arch, params, recording.switches, layer, seeds)
  recon = np.asarray(deconvnet.paste(proj, arch.image_size)[0])
  name = f'project_layer{layer}_map{channel}_y{y}_x{x}'
  np.save(write.path(name + '.npy'), recon)
  top, left = int(proj.top[0]), int(proj.left[0])
  r = proj.patches.shape[1]
  box = receptive_field.receptive_field(arch, layer, y, x)
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
  axes[0].imshow(figures.to_display(image, config))
  axes[0].add_patch(plt.Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1], box[2] - box[0], fill=False,
                                  edgecolor='red', linewidth=1.5))
  axes[0].set_title(f'{source}\nreceptive field (red)', fontsize=9)
  axes[1].imshow(figures.to_display(image[top:top + r, left:left + r], config), interpolation='nearest')
  axes[1].set_title('image patch', fontsize=9)
  axes[2].imshow(figures.reconstruction_display(recon[top:top + r, left:left + r]), interpolation='nearest')
  axes[2].set_title(f'projection of layer {layer}, map {channel}\nat ({y}, {x}), activation {value:.3g}', fontsize=9)
  for ax in axes:
    ax.set_axis_off()
  write.figure(name + '.png', fig)


def choose_maps(top: topk.TopK, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` feature maps (0: all), at random among those that fire at all, in index order."""
  value = np.asarray(top.value)[:, 0]
  if count <= 0 or count >= len(value):
    return np.arange(len(value))
  alive, dead = np.flatnonzero(value > 0), np.flatnonzero(value <= 0)
  picked = rng.choice(alive, min(count, len(alive)), replace=False)
  return np.sort(np.concatenate([picked, dead[:count - len(picked)]]))


def run_topk(args, config, model, params, write: figures.Writer) -> None:
  layer_numbers = _layers(args, model)
  tops = topk.stream_topk(model, params, batches(config, args.split, args.max_images), layer_numbers, k=args.k)
  rng = np.random.default_rng(args.seed)
  channels = {n: choose_maps(tops[n], args.maps, rng) for n in layer_numbers}
  results = topk.project_topk(model, params, batches(config, args.split, args.max_images), tops, channels)
  for n, result in results.items():
    write.arrays(f'topk_layer{n}.npz', channel=result.channel, value=result.top.value, image=result.top.image,
                 y=result.top.y, x=result.top.x, reconstruction=result.reconstruction, patch=result.patch,
                 window=result.window, receptive_field=result.receptive_field,
                 all_value=tops[n].value, all_image=tops[n].image, all_y=tops[n].y, all_x=tops[n].x)
    size = receptive_field.nominal(model.arch, n)[0]
    fig = figures.topk_figure(result, config, f'layer {n}: top {args.k} activations of {len(result.channel)} feature '
                                       f'maps over {args.split} (projection | image patch, {size} px field)')
    write.figure(f'topk_layer{n}.png', fig)


def run_filters(args, config, model, params, write: figures.Writer) -> None:
  first = model.arch.convs[0]
  kernel = np.asarray(params[first.name]['kernel'])  # [k, k, C_in, F]
  np.save(write.path('filters_layer1.npy'), kernel)
  tiles = figures.reconstruction_display(np.moveaxis(kernel, -1, 0))  # each filter on its own scale, grey = 0
  zoom = max(1, 48 // first.kernel)
  tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
  rms = np.sqrt(np.mean(kernel ** 2, axis=(0, 1, 2)))
  dead = int(np.sum(rms < 0.05 * np.median(rms)))
  grid = figures.mosaic(tiles, int(np.ceil(np.sqrt(len(tiles)))), gap=2)
  fig, _ = figures.image_figure(grid, f'layer-1 filters: {len(tiles)} of {first.kernel}x{first.kernel}, stride '
                               f'{first.stride} ({dead} with RMS below 5% of the median)')
  write.figure('filters_layer1.png', fig)


def run_occlusion(args, config, model, params, write: figures.Writer) -> None:
  image, label, source = _one_image(args, config)
  names = _names(config)
  logits = jax.jit(network.forward, static_argnums=0)(model, params, image[None]).logits
  label = args.label if args.label is not None else label if label is not None else int(np.argmax(logits[0]))
  size = args.size or max(1, model.arch.image_size // 7)
  stride = args.stride or max(1, size // 2)
  occlude = jax.jit(occlusion.occlusion, static_argnums=(0, 4, 5))
  maps = occlude(model, params, jnp.asarray(image), label, size, stride)
  feature, top_layer = int(maps.feature), model.arch.convs[-1].layer
  recording = jax.jit(deconvnet.record, static_argnums=0)(model, params, image[None])
  seeds = deconvnet.strongest(recording, top_layer)
  seeds = deconvnet.Seeds(*(f[feature:feature + 1] for f in seeds))
  recon = jax.jit(deconvnet.project, static_argnums=(0, 3))(model.arch, params, recording.switches, top_layer, seeds)
  write.arrays('occlusion.npz', activity=maps.activity, probability=maps.probability, top_class=maps.top_class,
               feature=feature, rows=maps.rows, cols=maps.cols, size=size, stride=stride, label=label,
               image=image, projection=recon[0])
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
  s = model.arch.image_size
  extent = (maps.cols[0] + size / 2 - stride / 2, maps.cols[-1] + size / 2 + stride / 2,
            maps.rows[-1] + size / 2 + stride / 2, maps.rows[0] + size / 2 - stride / 2)  # square centres
  axes[0].imshow(figures.to_display(image, config))
  axes[0].add_patch(plt.Rectangle((-0.5, -0.5), size, size, color=(0.5, 0.5, 0.5), alpha=0.9))
  axes[0].set_title(f'(a) {source}, true class {names[label]}\ngrey square {size} px, stride {stride}', fontsize=9)
  panels = [(maps.activity, f'(b) total activity of layer-{top_layer} map {feature}', 'viridis'),
            (maps.probability, f'(d) p({names[label]})', 'magma')]
  for ax, (values, title, cmap) in zip((axes[1], axes[3]), panels):
    shown = ax.imshow(np.asarray(values), extent=extent, cmap=cmap, interpolation='nearest')
    bar = fig.colorbar(shown, ax=ax, fraction=0.046)
    bar.formatter.set_useOffset(False)
    ax.set_title(title + '\nby square position', fontsize=9)
  axes[2].imshow(figures.reconstruction_display(np.asarray(recon[0])))
  axes[2].set_title(f'(c) projection of map {feature}\'s strongest activation', fontsize=9)
  top_class = np.asarray(maps.top_class)
  present = np.unique(top_class)
  shown = axes[4].imshow(np.searchsorted(present, top_class), extent=extent, cmap='tab20',
                         vmin=-0.5, vmax=19.5, interpolation='nearest')
  axes[4].set_title('(e) most probable class\nby square position', fontsize=9)
  axes[4].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=shown.cmap(shown.norm(i)))
                          for i in range(min(len(present), 20))],
                 labels=[names[c] for c in present[:20]], fontsize=7, loc='upper left', bbox_to_anchor=(1, 1))
  for ax in axes:
    ax.set_xlim(-0.5, s - 0.5), ax.set_ylim(s - 0.5, -0.5), ax.set_xticks([]), ax.set_yticks([])
  write.figure('occlusion.png', fig)


def _image_set(args, config) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`--images` files (with `--labels`), else `--count` images of the split (of class `--label` if given)."""
  if args.images:
    labels = args.labels or [0] * len(args.images)
    if len(labels) != len(args.images):
      raise ValueError(f'--labels needs one label per image: {len(args.images)} images, {len(labels)} labels')
    return np.stack([preprocess.load_input(p, config) for p in args.images]), np.asarray(labels), \
        [os.path.basename(p) for p in args.images]
  want = (lambda i, label: True) if args.label is None else (lambda i, label: label == args.label)
  images, labels, indices = split_images(config, args.split, want, args.count)
  return images, labels, [f'{args.split} {i}' for i in indices]


def run_correspondence(args, config, model, params, write: figures.Writer) -> None:
  images, _, sources = _image_set(args, config)
  boxes = np.asarray(args.box * (len(images) if len(args.box) == 1 else 1))
  if boxes.shape != (len(images), 4):
    raise ValueError(f'give one --box T,L,H,W for all images or one per image ({len(images)}), got {len(args.box)}')
  measure = jax.jit(correspondence.correspondence, static_argnums=(0, 4))
  layer_numbers = (5, 7)
  part = {n: float(v) for n, v in measure(model, params, images, boxes, layer_numbers).items()}
  rng = np.random.default_rng(args.seed)
  random = {n: [] for n in layer_numbers}
  for _ in range(args.random_draws):
    for n, v in measure(model, params, images, correspondence.random_boxes(rng, boxes, model.arch.image_size),
                        layer_numbers).items():
      random[n].append(float(v))
  write.arrays('correspondence.npz', boxes=boxes, images=images, **{f'delta_layer{n}': part[n] for n in part},
               **{f'random_delta_layer{n}': random[n] for n in random})
  print('layer  Delta(masked part)  Delta(random masks, mean +- std over %d draws)' % args.random_draws)
  for n in layer_numbers:
    print(f'{n:5d}  {part[n]:18.4f}  {np.mean(random[n]):.4f} +- {np.std(random[n]):.4f}')
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, len(images) + 1, figsize=(2.4 * (len(images) + 1), 2.8))
  masked = correspondence.mask_boxes(jnp.asarray(images), jnp.asarray(boxes))
  for ax, image, source in zip(axes, np.asarray(masked), sources):
    ax.imshow(figures.to_display(image, config))
    ax.set_title(source, fontsize=8)
    ax.set_axis_off()
  x = np.arange(len(layer_numbers))
  axes[-1].bar(x - 0.2, [part[n] for n in layer_numbers], 0.4, label='masked part')
  axes[-1].bar(x + 0.2, [np.mean(random[n]) for n in layer_numbers], 0.4,
               yerr=[np.std(random[n]) for n in layer_numbers], label='random masks')
  axes[-1].set_xticks(x, [f'layer {n}' for n in layer_numbers])
  axes[-1].set_title('Delta (lower: more\nconsistent change)', fontsize=8)
  axes[-1].legend(fontsize=7)
  write.figure('correspondence.png', fig)


def run_invariance(args, config, model, params, write: figures.Writer) -> None:
  images, labels, sources = _image_set(args, config)
  s = model.arch.image_size
  amounts = {'translation': np.linspace(-0.27 * s, 0.27 * s, 13), 'scale': np.linspace(1.0, 1.8, 9),
             'rotation': np.arange(0.0, 361.0, 10.0)}
  curve = jax.jit(invariance.invariance, static_argnums=(0, 4))
  results = {kind: {k: np.asarray(v) for k, v in curve(model, params, images, labels, kind,
                                                        jnp.asarray(amounts[kind], jnp.float32)).items()}
             for kind in invariance.TRANSFORMS}
  write.arrays('invariance.npz', labels=labels, **{f'{kind}_amount': amounts[kind] for kind in results},
               **{f'{kind}_{k}': v for kind, r in results.items() for k, v in r.items()})
  plt = figures.pyplot()
  fig, axes = plt.subplots(3, 3, figsize=(12, 10))
  units = {'translation': 'vertical shift (pixels)', 'scale': 'scale (ratio)', 'rotation': 'rotation (degrees)'}
  names = _names(config)
  for row, kind in enumerate(invariance.TRANSFORMS):
    for col, (key, ylabel) in enumerate((('layer1', 'layer-1 distance'), ('layer7', 'layer-7 distance'),
                                         ('probability', 'p(true class)'))):
      ax = axes[row, col]
      for i in range(len(images)):
        ax.plot(amounts[kind], results[kind][key][i], marker='.', label=f'{sources[i]} ({names[labels[i]]})')
      ax.set_xlabel(units[kind], fontsize=9)
      ax.set_ylabel(ylabel, fontsize=9)
  axes[0, 2].legend(fontsize=7)
  fig.suptitle('Invariance (Fig. 5): Euclidean feature distance to the untransformed image, and the '
               'true-class probability')
  fig.tight_layout()
  write.figure('invariance.png', fig)


def run_evolution(args, config, model, params, write: figures.Writer) -> None:
  mngr = checkpointing.manager(args.workdir)
  checkpoints = list(mngr.all_steps())
  mngr.close()
  layer_numbers = _layers(args, model)
  results = []
  for step in checkpoints:
    _, step_params, _ = checkpointing.load_params(config, args.workdir, step)
    tops = topk.stream_topk(model, step_params, batches(config, args.split, args.max_images), layer_numbers, k=1)
    if not results:  # the same maps at every checkpoint: chosen among those alive at the last one
      _, last_params, _ = checkpointing.load_params(config, args.workdir, checkpoints[-1])
      last = tops if len(checkpoints) == 1 else topk.stream_topk(
          model, last_params, batches(config, args.split, args.max_images), layer_numbers, k=1)
      rng = np.random.default_rng(args.seed)
      channels = {n: choose_maps(last[n], args.maps, rng) for n in layer_numbers}
    results.append(topk.project_topk(model, step_params, batches(config, args.split, args.max_images), tops,
                                         channels))
  write.arrays('evolution.npz', steps=np.asarray(checkpoints),
               **{f'layer{n}_channel': channels[n] for n in layer_numbers},
               **{f'layer{n}_value': np.stack([r[n].top.value[:, 0] for r in results]) for n in layer_numbers},
               **{f'layer{n}_reconstruction': np.stack([r[n].reconstruction[:, 0] for r in results])
                  for n in layer_numbers})
  plt = figures.pyplot()
  rows = max(len(channels[n]) for n in layer_numbers)
  fig, axes = plt.subplots(1, len(layer_numbers), figsize=(0.9 * len(checkpoints) * len(layer_numbers) + 1.5,
                                                          0.9 * rows + 1.2), squeeze=False, layout='constrained')
  for ax, n in zip(axes[0], layer_numbers):
    tiles = np.stack([figures.reconstruction_display(r[n].reconstruction[:, 0]) for r in results], axis=1)  # [M, T, ...]
    ax.imshow(figures.mosaic(tiles.reshape(-1, *tiles.shape[2:]), len(checkpoints), gap=max(1, tiles.shape[2] // 16)),
              interpolation='nearest')
    size = tiles.shape[2] + max(1, tiles.shape[2] // 16)
    ax.set_yticks(np.arange(len(channels[n])) * size + size / 2, [f'map {c}' for c in channels[n]], fontsize=7)
    ax.set_xticks(np.arange(len(checkpoints)) * size + size / 2, [str(s) for s in checkpoints], fontsize=7,
                  rotation=90)
    ax.set_title(f'layer {n}', fontsize=9)
    ax.set_xlabel('training step', fontsize=7)
  fig.suptitle('Feature evolution (Fig. 4): each map\'s strongest activation over the split, projected, '
               'at every checkpoint', fontsize=9)
  write.figure('evolution.png', fig)


def run_report(args, config) -> None:
  out = args.out or os.path.join(args.workdir, 'report')
  layer_numbers = tuple(int(v) for v in args.layers.split(',')) if args.layers else None
  data = report.build(config, args.workdir, out, max_images=args.images, layers=layer_numbers, step=args.step,
                      split=args.split, k=args.k, occlusion_images=args.examples, invariance_images=args.examples)
  site.write_site(out, data)
  print(os.path.join(out, 'index.html'))


def _layers(args, model) -> tuple[int, ...]:
  available = [c.layer for c in model.arch.convs]
  wanted = tuple(int(v) for v in args.layers.split(',')) if args.layers else tuple(available)
  if not set(wanted) <= set(available):
    raise ValueError(f'--layers must name conv layers of this network, {available}; got {args.layers}')
  return wanted


# ------------------------------------------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--config', required=True, help='config file, e.g. configs/digits.py; override fields '
                      'with --config.FIELD=VALUE')
  common.add_argument('--workdir', required=True, help='the training run (its checkpoints/ folder)')
  common.add_argument('--out', help='output folder (default: WORKDIR/visualize/COMMAND)')
  common.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  common.add_argument('--split', help='dataset split (default: config.dataset.eval_split)')
  common.add_argument('--seed', type=int, default=0, help='for random choices (feature maps, random masks)')
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
  maps_help = 'feature maps per layer to project and draw, chosen at random among those that fire (0: all)'

  parser = argparse.ArgumentParser(prog='python -m zfnet_jax.visualize', description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('project', parents=[common, one], help='project one activation to pixel space')
  p.add_argument('--layer', type=int, required=True, help='conv layer 1-5 (its output after ReLU, pool, LRN)')
  p.add_argument('--channel', type=int, help='feature map (default: the one with the strongest activation)')
  p.add_argument('--position', type=int, nargs=2, metavar=('Y', 'X'), help='default: the map\'s strongest')
  p = sub.add_parser('topk', parents=[common, dataset], help='Fig. 2: top-k activations, projected')
  p.add_argument('--k', type=int, default=9, help='activations kept per feature map (9 in the paper)')
  p.add_argument('--maps', type=int, default=16, help=maps_help)
  sub.add_parser('filters', parents=[common], help='Fig. 6: layer-1 filters')
  p = sub.add_parser('occlusion', parents=[common, one], help='Fig. 7: occlusion sensitivity')
  p.add_argument('--label', type=int, help='true class (default: the split\'s label, or the predicted class)')
  p.add_argument('--size', type=int, help='square side in pixels (default: image size / 7)')
  p.add_argument('--stride', type=int, help='square stride (default: size / 2)')
  p = sub.add_parser('correspondence', parents=[common, many], help='Table 1: correspondence of a masked part')
  p.add_argument('--box', nargs='+', required=True, type=lambda v: [int(i) for i in v.split(',')],
                 help='TOP,LEFT,HEIGHT,WIDTH in network-input pixels: one for all images, or one per image')
  p.add_argument('--random_draws', type=int, default=10, help='random-mask draws for the baseline')
  sub.add_parser('invariance', parents=[common, many], help='Fig. 5: invariance curves')
  p = sub.add_parser('evolution', parents=[common, dataset], help='Fig. 4: features across checkpoints')
  p.add_argument('--maps', type=int, default=8, help=maps_help)
  p = sub.add_parser('report', parents=[common], help='a static site: every unit of every layer, and the figures',
                     description='Writes OUT/index.html (--out default for this command: WORKDIR/report/), '
                     'a layer page per conv layer and analyses.html; re-running reuses what is built.')
  p.add_argument('--images', type=int, default=1000, help='the first N images of the split for the top-k')
  p.add_argument('--layers', help='comma-separated conv layers to give pages (default: all)')
  p.add_argument('--k', type=int, default=9, help='activations kept per unit (9 in the paper)')
  p.add_argument('--examples', type=int, default=3, help='images for the occlusion maps and invariance curves')
  return parser


COMMAND_FUNCTIONS = {'project': run_project, 'topk': run_topk, 'filters': run_filters, 'occlusion': run_occlusion,
                     'correspondence': run_correspondence, 'invariance': run_invariance, 'evolution': run_evolution}


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
    return run_report(args, config)
  model, params, _ = checkpointing.load_params(config, args.workdir, args.step)
  write = figures.Writer(args.out or os.path.join(args.workdir, 'visualize', args.command))
  COMMAND_FUNCTIONS[args.command](args, config, model, params, write)


if __name__ == '__main__':
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # tfds and Orbax log every file they touch at INFO
  main(sys.argv[1:])
