"""Sweeps: train named variants of one config over seeds, and gather one results table and plot.

A sweep config is an ordinary config file (`get_config()`) that also has `get_variants()`, returning
`{name: {dotted field: value}}`, e.g. `{'zfnet': {}, 'fc_128': {'model.fc_features': (128, 128)}}`.
Sweep-wide overrides change every variant. Each run trains in `WORKDIR/VARIANT/seed_N` through
`loop.train_and_evaluate` and, when it is done, writes its row to `result.json` there. Re-running skips
runs whose `result.json` was written by the same config (their checkpoints and metrics are reused) and
resumes unfinished ones from their last checkpoint, so a sweep survives interruption. `WORKDIR` gets
`results.csv` / `results.json` (one row per run), `summary.csv` (mean and standard deviation over seeds
per variant) and `results.png`.

A row: `variant`, `seed`, `train_top1` (accuracy over the whole train split with evaluation
preprocessing: centre crop, no dropout), `eval_top1`, `eval_top5`, `eval_loss` (the eval split),
`params`, `steps`, `seconds` (wall-clock training and evaluation of the call that finished the run; a
resumed run counts only its last part) and `workdir`.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from zfnet_jax import config_lib, paths
from zfnet_jax.training import evaluation, loop, metric_writer

COLUMNS = ('variant', 'seed', 'train_top1', 'eval_top1', 'eval_top5', 'eval_loss', 'params', 'steps', 'seconds',
           'workdir')
RESULT_FILE = 'result.json'


class SweepConfigError(ValueError):
  """The sweep config has no variants, or a requested variant is not among them; the message says what to do."""


def load_variants(config_path: str) -> dict[str, dict[str, Any]]:
  """`get_variants()` of a sweep config file: `{variant name: {dotted field: value}}`."""
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'config file {config_path!r} does not exist (e.g. configs/digits_ablations.py)')
  spec = importlib.util.spec_from_file_location('_zfnet_sweep_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_variants'):
    raise SweepConfigError(f'{config_path} has no get_variants(): a sweep config defines get_config() and '
                           f"get_variants() -> {{name: {{'model.fc_features': (128, 128)}}, ...}} "
                           f'(see configs/digits_ablations.py)')
  return dict(module.get_variants())


def run_config(config_path: str, overrides: dict[str, Any], variant: dict[str, Any],
               seed: int) -> ml_collections.ConfigDict:
  """The config of one run: the file's config, then the sweep-wide overrides, the variant's, the seed."""
  return config_lib.load(config_path, {**overrides, **variant, 'seed': seed})


def read_result(run_dir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The finished row in `run_dir`, or None if the run is unfinished or was made by another config."""
  path = paths.join(run_dir, RESULT_FILE)
  if not paths.exists(path):
    return None
  saved = paths.read_json(path)
  if saved['config'] != json.loads(config.to_json()):
    metric_writer.log(f'{run_dir}: the config changed since {RESULT_FILE} was written; training again')
    return None
  return saved['row']


def run_one(config: ml_collections.ConfigDict, run_dir: str, variant: str) -> dict[str, Any]:
  """Trains (or resumes, or reuses) one run and returns its row; `loop.Preempted` if SIGTERM stopped it."""
  row = read_result(run_dir, config)
  if row is not None:
    metric_writer.log(f'{variant} seed {config.seed}: finished before, reusing {run_dir}')
    return row
  metric_writer.log(f'{variant} seed {config.seed}: training in {run_dir}')
  start = time.perf_counter()
  final = loop.train_and_evaluate(config, run_dir)
  train_metrics, step, num_params = evaluation.score_checkpoint(config, run_dir, config.dataset.train_split)
  row = {'variant': variant, 'seed': int(config.seed), 'train_top1': train_metrics['top1'],
         'eval_top1': final['top1'], 'eval_top5': final['top5'], 'eval_loss': final['loss'], 'params': num_params,
         'steps': step, 'seconds': round(time.perf_counter() - start, 1), 'workdir': run_dir}
  if jax.process_index() == 0:
    paths.write_json(paths.join(run_dir, RESULT_FILE), {'row': row, 'config': json.loads(config.to_json())}, indent=2)
  return row


def run(config_path: str, workdir: str, seeds: Sequence[int] = (0,), variants: Sequence[str] | None = None,
        overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Trains every (variant, seed) of the sweep config not yet finished; writes and returns the rows.

  Args:
    config_path: a sweep config file (`get_config()` and `get_variants()`).
    workdir: runs go to `workdir/VARIANT/seed_N`; the tables and the plot to `workdir`.
    seeds: `config.seed` of each run.
    variants: names to run, in this order (default: all of `get_variants()`).
    overrides: dotted fields applied to every variant before its own overrides.
  """
  all_variants = load_variants(config_path)
  names = list(variants) if variants else list(all_variants)
  unknown = [n for n in names if n not in all_variants]
  if unknown:
    raise SweepConfigError(f'unknown variant(s) {unknown} in {config_path}; it has: {", ".join(all_variants)}')
  configs = {(n, s): run_config(config_path, overrides or {}, all_variants[n], s) for n in names for s in seeds}
  rows = []
  try:
    for (name, seed), config in configs.items():
      rows.append(run_one(config, paths.join(workdir, name, f'seed_{seed}'), name))
  except loop.Preempted:
    metric_writer.log('Stopped by SIGTERM; run the same command again to finish the sweep.')
    raise
  finally:  # the finished runs' rows, also when preempted
    if jax.process_index() == 0 and rows:
      write_results(rows, workdir)
  return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per variant, in first-seen order: number of seeds, and mean and standard deviation (ddof 0) of
  `train_top1`, `eval_top1`, `eval_top5`, and `params`."""
  out = []
  for name in dict.fromkeys(r['variant'] for r in rows):
    mine = [r for r in rows if r['variant'] == name]
    entry = {'variant': name, 'seeds': len(mine), 'params': mine[0]['params']}
    for key in ('train_top1', 'eval_top1', 'eval_top5'):
      values = np.array([r[key] for r in mine])
      entry[f'{key}_mean'], entry[f'{key}_std'] = float(values.mean()), float(values.std())
    out.append(entry)
  return out


def write_results(rows: Sequence[dict[str, Any]], workdir: str) -> None:
  """`results.csv`, `results.json`, `summary.csv` and `results.png` in `workdir`."""
  paths.makedirs(workdir)
  write_csv(rows, paths.join(workdir, 'results.csv'), COLUMNS)
  paths.write_json(paths.join(workdir, 'results.json'), list(rows), indent=2)
  table = summary(rows)
  write_csv(table, paths.join(workdir, 'summary.csv'), tuple(table[0]))
  save_figure(plot(rows), paths.join(workdir, 'results.png'))


def write_csv(rows: Sequence[dict[str, Any]], path: str, columns: Sequence[str]) -> None:
  """`rows` as CSV with a header of `columns` (other keys left out), local or `gs://`."""
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  paths.write_text(path, text.getvalue())


def save_figure(fig: Figure, path: str) -> None:
  """A matplotlib figure as a PNG at `path` (local or `gs://`)."""
  data = io.BytesIO()
  fig.savefig(data, format='png', dpi=120)
  paths.write_text(path, data.getvalue())


def plot(rows: Sequence[dict[str, Any]], title: str = '') -> Figure:
  """Top-1 error (%) per variant: each seed a dot, the mean a bar; eval split filled, train split hollow.
  The error axis is linear up to 1% and logarithmic above. A notebook shows the figure inline.
  """
  table = summary(rows)
  names = [t['variant'] for t in table]
  fig = Figure(figsize=(1.2 * len(names) + 2, 3.5))
  ax = fig.subplots()
  x = np.arange(len(names))
  ax.bar(x - 0.2, [100 * (1 - t['eval_top1_mean']) for t in table], 0.4, color='tab:blue', alpha=0.35,
         label='eval top-1 error (mean)')
  ax.bar(x + 0.2, [100 * (1 - t['train_top1_mean']) for t in table], 0.4, color='tab:orange', alpha=0.35,
         label='train top-1 error (mean)')
  for i, name in enumerate(names):
    mine = [r for r in rows if r['variant'] == name]
    ax.plot([i - 0.2] * len(mine), [100 * (1 - r['eval_top1']) for r in mine], 'o', color='tab:blue', ms=4)
    ax.plot([i + 0.2] * len(mine), [100 * (1 - r['train_top1']) for r in mine], 'o', mfc='none',
            color='tab:orange', ms=4)
  ax.set_xticks(x, names, rotation=20, ha='right')
  ax.set_yscale('symlog', linthresh=1.0)  # linear below 1%, logarithmic above: 0.5% and 90% both readable
  ticks = [0, 0.5, 1, 2, 5, 10, 20, 50, 100]
  ax.set_yticks(ticks, [f'{t:g}' for t in ticks])
  ax.set_ylim(0, 100)
  ax.set_ylabel('top-1 error (%)')
  ax.set_title(title or f'{len(rows)} runs; dots: one seed each')
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
