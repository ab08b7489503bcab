"""Transfer and per-layer probes (Section 5, Tables 4-7): a frozen network's features, a new linear classifier.

The paper's protocol (Caltech-101: 15 or 30 training images per class, 5 folds): in each of K random
folds, every class gives N training images and the rest of its images, up to a cap, for testing; the
score is the **mean per-class accuracy** (each class's test accuracy, then their mean), averaged over
the folds. The features at layer L (1-7) are the network's `layerL` output (after ReLU, pooling and
normalisation; conv maps flattened); layer 0 is the input pixels, a baseline. They are standardised on
the fold's training images, then classified by
- `softmax`: multinomial logistic regression (L2, `C`), the paper's "new softmax classifier";
- `svm`: a linear SVM (one-vs-rest hinge, `C`), as in Table 7.
Optionally, the baseline of a network with the same architecture and recipe trained from scratch on the
same N images per class (written as a folder dataset, trained by `loop.train_and_evaluate`).
Memory: the features of every image the folds use are kept for each layer at once; at ImageNet scale,
layer 1 alone is 290k values per image.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
from matplotlib.figure import Figure

from zfnet_jax import paths
from zfnet_jax.data import pipeline, sources
from zfnet_jax.experiments import sweep
from zfnet_jax.model import inference, network
from zfnet_jax.training import checkpointing, loop, metric_writer

CLASSIFIERS = ('softmax', 'svm')
PIXELS = 0  # "layer 0": the preprocessed input image, the baseline that features should beat
COLUMNS = ('layer', 'classifier', 'per_class', 'folds', 'mean_per_class_accuracy', 'std', 'features')


class Fold(NamedTuple):
  """Indices into the pooled target examples: `train` (N per class) and `test` (disjoint from it)."""
  train: np.ndarray
  test: np.ndarray


@dataclasses.dataclass(frozen=True)
class Protocol:
  """N training images per class, the rest up to `test_cap` per class (None: all) for testing, K folds."""
  per_class: int = 30
  folds: int = 5
  test_cap: int | None = 50
  seed: int = 0


def sample_folds(labels: np.ndarray, protocol: Protocol) -> list[Fold]:
  """`protocol.folds` random splits of examples with `labels` `[N]`: per class, `per_class` to train, the
  rest (up to `test_cap`) to test. Every class needs more than `per_class` examples."""
  classes, counts = np.unique(labels, return_counts=True)
  short = {int(c): int(n) for c, n in zip(classes, counts) if n <= protocol.per_class}
  if short:
    raise ValueError(f'classes {short} (label: examples) have no more than per_class={protocol.per_class} '
                     f'examples, leaving none to test: lower --per_class or pool more splits (--target_splits)')
  rng = np.random.default_rng(protocol.seed)
  folds = []
  for _ in range(protocol.folds):
    train_idx, test_idx = [], []
    for c in classes:
      order = rng.permutation(np.flatnonzero(labels == c))
      train_idx.append(order[:protocol.per_class])
      test_idx.append(order[protocol.per_class:][:protocol.test_cap])
    folds.append(Fold(np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))))
  return folds


def mean_per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """The accuracy on each class present in `labels` `[N]`, then their mean (not the overall accuracy)."""
  return float(np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)]))


def target_config(source: ml_collections.ConfigDict, name: str | None = None, classes: Sequence[int] = (),
                  data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The source network's config reading another dataset (default: the source's), preprocessed as the
  source network's evaluation input; `classes` () keeps all of the target's classes."""
  config = source.copy_and_resolve_references()
  d = config.dataset
  d.name = name or source.dataset.name
  d.data_dir = data_dir or source.dataset.data_dir
  d.classes = tuple(classes)
  config.model.num_classes = len(classes) or sources.get_builder(d).info.features['label'].num_classes
  return config


def pool_labels(target: ml_collections.ConfigDict, splits: Sequence[str],
                keep_images: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
  """`(labels [N], uint8 squares)` of the target splits pooled in order; squares only if `keep_images`."""
  labels, images = [], []
  for split in splits:
    records = pipeline.open_split(target, split)
    labels.append(records.labels)
    if keep_images:
      images += [records.example(k)['image'] for k in range(len(records))]
  return np.concatenate(labels).astype(np.int64), images


def available_layers(arch: network.Architecture) -> tuple[int, ...]:
  """0 (the input pixels, as a baseline) and the paper's layer numbers this network has (an ablation
  may have removed some of 3-7)."""
  return (PIXELS,) + tuple(c.layer for c in arch.convs) + tuple(n for n, _ in arch.fcs)


def layer_features(model: network.ConvNet, params: Any, target: ml_collections.ConfigDict, splits: Sequence[str],
                   layers: Sequence[int], labels: np.ndarray, keep: np.ndarray) -> dict[int, np.ndarray]:
  """`{layer: [len(keep), D]}` flattened features of the pooled examples at sorted indices `keep`.

  `labels` are `pool_labels`' (the same order); they are checked against the batches read here.
  """
  missing = sorted(set(layers) - set(available_layers(model.arch)))
  if missing:
    raise ValueError(f'layers {missing} are not in this network (it has {available_layers(model.arch)}): '
                     f'choose --layers among those')

  @jax.jit
  def forward(p: Any, images: jax.Array) -> dict[str, jax.Array]:
    inter = network.forward(model, p, images).layers
    return {f'features{l}': (images if l == PIXELS else inter[f'layer{l}']).reshape(images.shape[0], -1)
            for l in layers}

  out, offset = {l: [] for l in layers}, 0
  for split in splits:
    batches, _, size = pipeline.eval_batches(target, split)
    local = keep[(keep >= offset) & (keep < offset + size)] - offset
    if len(local):
      part = inference.collect(forward, params, batches, wanted=local)
      if not np.array_equal(part['label'], labels[offset + part['index']]):
        raise RuntimeError(f'{target.dataset.name} {split}: examples came in another order than in pool_labels')
      for l in layers:
        out[l].append(part[f'features{l}'])
    offset += size
  return {l: np.concatenate(v) for l, v in out.items()}


def fit_predict(classifier: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                c: float = 1.0) -> np.ndarray:
  """Trains `classifier` ('softmax' or 'svm') on standardised `[n, D]` features; predicts `test_x`'s labels."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import LinearSVC
  if classifier == 'softmax':
    head = LogisticRegression(C=c, max_iter=2000)
  elif classifier == 'svm':
    head = LinearSVC(C=c, max_iter=10_000, random_state=0)
  else:
    raise ValueError(f'classifier must be one of {CLASSIFIERS}, got {classifier!r}')
  return make_pipeline(StandardScaler(), head).fit(train_x, train_y).predict(test_x)


def probe(features: np.ndarray, labels: np.ndarray, folds: Sequence[Fold], classifier: str,
          c: float = 1.0) -> list[float]:
  """Mean per-class accuracy of `classifier` on each fold; `features` `[N, D]` and `labels` `[N]` are
  indexed by the folds."""
  return [mean_per_class_accuracy(labels[f.test], fit_predict(classifier, features[f.train], labels[f.train],
                                                              features[f.test], c)) for f in folds]


def write_folder_dataset(root: str, images: Sequence[np.ndarray], labels: np.ndarray, fold: Fold) -> str:
  """`root/{train,test}/CLASS/INDEX.png` from a fold's raw uint8 images; classes named so they sort as the
  labels. Returns the config value `folder:root`."""
  for split, index in (('train', fold.train), ('test', fold.test)):
    for i in index:
      folder = os.path.join(root, split, f'{labels[i]:04d}')
      os.makedirs(folder, exist_ok=True)
      image = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
      PIL.Image.fromarray(image).save(os.path.join(folder, f'{i}.png'))
  return sources.FOLDER_PREFIX + root


def scratch_config(source: ml_collections.ConfigDict, dataset: str, num_classes: int, num_train: int,
                   steps: int, seed: int) -> ml_collections.ConfigDict:
  """The source's architecture and recipe on a folder dataset of `num_train` images, for `steps` steps."""
  n_dev = jax.device_count()
  batch = min(source.batch_size, num_train // n_dev * n_dev)
  if batch < 1:
    raise ValueError(f'{num_train} training images cannot fill a batch on {n_dev} devices: raise --per_class')
  config = source.copy_and_resolve_references()
  config.dataset.name, config.dataset.classes = dataset, ()
  config.dataset.train_split, config.dataset.eval_split = 'train', 'test'
  config.model.num_classes = num_classes
  config.batch_size, config.num_train_steps, config.seed = batch, steps, seed
  config.eval_every_epochs, config.log_every_steps = steps, max(1, steps // 4)  # evaluate once, at the end
  return config


def predict(config: ml_collections.ConfigDict, workdir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`(labels [N], predicted labels [N])` of the latest checkpoint in `workdir` over the whole `split`."""
  model, params, _ = checkpointing.load_params(config, workdir)
  predicted = jax.jit(lambda p, x: {'predicted': jnp.argmax(model.apply({'params': p}, x), axis=-1)})
  out = inference.collect(predicted, params, pipeline.eval_batches(config, split)[0])
  return out['label'], out['predicted']


def scratch_baseline(source: ml_collections.ConfigDict, images: Sequence[np.ndarray], labels: np.ndarray,
                     folds: Sequence[Fold], steps: int, out: str) -> list[float]:
  """Mean per-class accuracy on each fold of a network trained from scratch on the fold's training images.

  Fold k trains in `out/scratch/fold_k`. Run again with the same folds and steps, a finished fold is only
  re-evaluated; a fold directory left by other folds or steps is deleted and trained anew.
  """
  accuracies = []
  for k, fold in enumerate(folds):
    workdir = os.path.join(out, 'scratch', f'fold_{k}')
    plan = {'train': fold.train.tolist(), 'test': fold.test.tolist(), 'steps': steps}
    plan_path = os.path.join(workdir, 'fold.json')
    if os.path.exists(workdir) and not _same_json(plan_path, plan):
      metric_writer.log(f'{workdir} was made for other folds or steps: training it anew')
      shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(plan_path, 'w') as f:
      json.dump(plan, f)
    dataset = write_folder_dataset(os.path.join(workdir, 'images'), images, labels, fold)
    config = scratch_config(source, dataset, len(np.unique(labels)), len(fold.train), steps, seed=k)
    loop.train_and_evaluate(config, workdir)
    accuracies.append(mean_per_class_accuracy(*predict(config, workdir, 'test')))
  return accuracies


def _same_json(path: str, value: Any) -> bool:
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f) == value


def run(source: ml_collections.ConfigDict, workdir: str, target: ml_collections.ConfigDict, splits: Sequence[str],
        protocol: Protocol, layers: Sequence[int] = (1, 2, 3, 4, 5, 6, 7), classifiers: Sequence[str] = ('softmax',),
        scratch_steps: int = 0, out: str | None = None, c: float = 1.0) -> list[dict[str, Any]]:
  """Probes the frozen network of `workdir` (trained with `source`) on `target` (see `target_config`).

  Returns one row per (layer, classifier), then a `scratch` row if `scratch_steps > 0`; each with the
  mean and standard deviation over folds of the mean per-class accuracy. Writes results.csv,
  results.json and results.png to `out` if given (`out` is needed for the scratch baseline).
  """
  unknown = sorted(set(classifiers) - set(CLASSIFIERS))
  if unknown:
    raise ValueError(f'unknown classifiers {unknown}: choose among {CLASSIFIERS}')
  if scratch_steps and not out:
    raise ValueError('the scratch baseline trains networks: give an output directory (--out)')
  sources.hide_accelerators_from_tf()
  model, params, step = checkpointing.load_params(source, workdir)
  labels, images = pool_labels(target, splits, keep_images=scratch_steps > 0)
  folds = sample_folds(labels, protocol)
  keep = np.unique(np.concatenate([np.concatenate(f) for f in folds]))
  features = layer_features(model, params, target, splits, layers, labels, keep)
  local = [Fold(np.searchsorted(keep, f.train), np.searchsorted(keep, f.test)) for f in folds]
  common = {'per_class': protocol.per_class, 'folds': protocol.folds}
  rows = []
  for layer in layers:
    for classifier in classifiers:
      accuracies = probe(features[layer], labels[keep], local, classifier, c)
      rows.append({'layer': layer, 'classifier': classifier, **common, 'mean_per_class_accuracy':
                   float(np.mean(accuracies)), 'std': float(np.std(accuracies)),
                   'features': int(features[layer].shape[1]), 'fold_accuracies': accuracies})
      row = rows[-1]
      metric_writer.log(f'layer {layer} {classifier}: {100 * row["mean_per_class_accuracy"]:.1f} +- '
                        f'{100 * row["std"]:.1f} % mean per-class accuracy ({row["features"]} features)')
  if scratch_steps:
    accuracies = scratch_baseline(source, images, labels, folds, scratch_steps, out)
    rows.append({'layer': None, 'classifier': 'scratch', **common, 'mean_per_class_accuracy':
                 float(np.mean(accuracies)), 'std': float(np.std(accuracies)), 'features': None,
                 'fold_accuracies': accuracies})
    metric_writer.log(f'trained from scratch: {100 * rows[-1]["mean_per_class_accuracy"]:.1f} +- '
                      f'{100 * rows[-1]["std"]:.1f} %')
  if out:
    paths.makedirs(out)
    sweep.write_csv(rows, paths.join(out, 'results.csv'), COLUMNS)
    paths.write_json(paths.join(out, 'results.json'), {
        'source': {'workdir': workdir, 'checkpoint_step': step, 'dataset': source.dataset.name,
                   'classes': list(source.dataset.classes)},
        'target': {'dataset': target.dataset.name, 'classes': list(target.dataset.classes),
                   'splits': list(splits), 'examples': int(len(labels))},
        'protocol': dataclasses.asdict(protocol), 'rows': rows}, indent=2)
    sweep.save_figure(plot(rows), paths.join(out, 'results.png'))
  return rows


def plot(rows: Sequence[dict[str, Any]], title: str = '', ax: Any = None) -> Figure:
  """Mean per-class accuracy (%) against layer, one line per classifier (error bars: std over folds); the
  from-scratch baseline as a dashed line. Draws into `ax` if given (e.g. a notebook's subplot), else into a
  new figure, and returns the figure."""
  fig = ax.figure if ax is not None else Figure(figsize=(5.5, 3.5))
  ax = ax if ax is not None else fig.subplots()
  for classifier in dict.fromkeys(r['classifier'] for r in rows if r['layer'] is not None):
    mine = [r for r in rows if r['classifier'] == classifier]
    ax.errorbar([r['layer'] for r in mine], [100 * r['mean_per_class_accuracy'] for r in mine],
                [100 * r['std'] for r in mine], marker='o', capsize=3, label=classifier)
  for r in rows:
    if r['classifier'] == 'scratch':
      ax.axhline(100 * r['mean_per_class_accuracy'], ls='--', color='grey', label='trained from scratch')
  ax.set_xlabel('layer (0: input pixels)')
  ax.set_ylabel('mean per-class accuracy (%)')
  if rows:
    ax.set_title(title or f'{rows[0]["per_class"]} training images per class, {rows[0]["folds"]} folds')
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
