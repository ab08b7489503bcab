"""The report's pages: static HTML, one CSS file and a few lines of plain JavaScript, no network.

`write_site(out, data)` writes, from what `report.build` returns, `index.html` (config, architecture,
checkpoint, training curves, layer-1 filters), `layerN.html` per conv layer (every unit, `id="unit-N"`,
its top-k projections beside their patches as crops of the layer's sprite sheets) and `analyses.html`
(occlusion, invariance, evolution). Links are relative, so the folder opens from `file://` and from any
static web server. Charts are inline SVG.
"""
from __future__ import annotations

import html
import os
from typing import Any, Sequence

COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f')

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
nav { margin-bottom: 1em; } nav a { margin-right: 0.6em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td:nth-child(2), td:nth-child(3) { text-align: left; }
pre { background: #f7f7f7; padding: 0.6em; max-height: 24em; overflow: auto; font-size: 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; } svg text { font-size: 11px; }
.units { display: flex; flex-wrap: wrap; gap: 10px; }
.unit { border: 1px solid #ddd; padding: 4px; } .unit h3 { margin: 0 0 4px 0; font-size: 13px; }
.unit.dead { opacity: 0.45; } .unit.dead h3::after { content: " (dead: never fires on these images)"; color: #b00; }
.unit:target { outline: 3px solid #e80; }
.cell { background-repeat: no-repeat; image-rendering: pixelated; }
.classes { font-size: 12px; margin: 2px 0 0 0; max-width: 40em; }
.values { font: 11px monospace; margin: 2px 0 0 0; max-width: 40em; word-wrap: break-word; }
#jump { position: sticky; top: 0; background: #fff; padding: 6px 0; z-index: 1; }
body.hide-dead .unit.dead { display: none; }
img.pixels { image-rendering: pixelated; }
.visuals { display: flex; gap: 8px; align-items: flex-start; }
.fv { background-repeat: no-repeat; image-rendering: pixelated; flex: none; }
"""

JUMP_JS = """
const box = document.getElementById('filter');
box.addEventListener('keydown', e => {
  if (e.key !== 'Enter') return;
  e.preventDefault();
  const unit = document.getElementById('unit-' + box.value.trim());
  if (unit) { location.hash = unit.id; box.setCustomValidity(''); }
  else { box.setCustomValidity('no such unit'); box.reportValidity(); }
});
document.getElementById('hide-dead').addEventListener('change', e =>
  document.body.classList.toggle('hide-dead', e.target.checked));
const order = document.getElementById('sort');
if (order) order.addEventListener('change', () => {
  const list = document.querySelector('.units');
  const key = el => order.value === 'unit' ? Number(el.dataset.unit) : -Number(el.dataset[order.value]);
  [...list.children].sort((a, b) => key(a) - key(b)).forEach(el => list.appendChild(el));
});
"""


def page(title: str, body: str, nav: str) -> str:
  return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f'<link rel="stylesheet" href="report.css"></head>\n<body>\n<nav>{nav}</nav>\n{body}\n</body></html>\n')


def navigation(layers: Sequence[int]) -> str:
  links = ['<a href="index.html">index</a>'] + [f'<a href="layer{n}.html">layer {n}</a>' for n in layers]
  return ' '.join(links + ['<a href="analyses.html">occlusion, invariance, evolution</a>',
                           '<a href="sanity.html">sanity checks</a>'])


def svg_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
              width: int = 380, height: int = 230) -> str:
  """A line chart of `(label, xs, ys)` series as inline SVG, axes from the data's range."""
  points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if y is not None]
  if not points:
    return ''
  x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
  y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
  x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
  left, right, top, bottom = 48, 20, 22, 34
  sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
  sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<text x="{width / 2}" y="14" text-anchor="middle">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
           f'<text x="{(width + left) / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>']
  for v in (y0, (y0 + y1) / 2, y1):
    parts.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
  for v in (x0, x1):
    parts.append(f'<text x="{sx(v):.1f}" y="{height - bottom + 14}" text-anchor="middle">{v:.4g}</text>')
  for i, (label, xs, ys) in enumerate(series):
    colour = COLOURS[i % len(COLOURS)]
    path = ' '.join(f'{sx(x):.1f},{sy(y):.1f}' for x, y in zip(xs, ys) if y is not None)
    parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
    parts.append(f'<text x="{width - right - 4}" y="{top + 12 * (i + 1)}" text-anchor="end" fill="{colour}">'
                 f'{html.escape(label)}</text>')
  return ''.join(parts) + '</svg>'


def index_page(data: dict[str, Any]) -> str:
  layers = sorted(data['layers'])
  rows = ''.join(f'<tr><td>{r["layer"]}</td><td>{r["kind"]}</td><td>{html.escape(r["shape"])}</td><td>{r["maps"]}</td>'
                 f'<td>{r["map_size"]}</td><td>{r["receptive_field"]}</td><td>{r["params"]:,}</td></tr>'
                 for r in data['architecture'])
  total = sum(r['params'] for r in data['architecture'])
  evaluation = data.get('eval')
  figures = (', '.join(f'{k} {v:.4f}' for k, v in evaluation.items() if k in ('top1', 'top5', 'loss'))
             + f' on {int(evaluation.get("num_examples", 0))} examples (at step {evaluation["step"]})'
             if evaluation else 'no evaluation recorded in metrics.jsonl')
  curves = data['curves']
  charts = []
  for metric in ('loss', 'top1'):
    series = [(split, [r['step'] for r in records], [r.get(metric) for r in records])
              for split, records in sorted(curves.items()) if any(metric in r for r in records)]
    charts.append(svg_chart(series, metric, 'training step'))
  layer_links = ''.join(
      f'<li><a href="layer{n}.html">layer {n}</a>: {data["layers"][n]["units"]} units, '
      f'{sum(data["layers"][n]["dead"])} dead' + (
          f'; feature visualisations beat the dataset for {data["layers"][n]["featurevis"]["live_beating"]} of '
          f'{data["layers"][n]["featurevis"]["live"]} live units' if data['layers'][n].get('featurevis') else '')
      + '</li>' for n in layers)
  body = f"""<h1>Report: step {data['step']} of {html.escape(data['workdir'])}</h1>
<p>Checkpoint step {data['step']}; evaluation: {html.escape(figures)}.</p>
<h2>Layers</h2><ul>{layer_links}
<li><a href="analyses.html">occlusion (Fig. 7), invariance (Fig. 5), evolution (Fig. 4)</a></li></ul>
<h2>Architecture</h2>
<table><tr><th>layer</th><th>kind</th><th>shape</th><th>maps</th><th>map size</th><th>receptive field</th>
<th>parameters</th></tr>
{rows}<tr><td></td><td>total</td><td></td><td></td><td></td><td></td><td>{total:,}</td></tr></table>
<h2>Training curves</h2><div class="charts">{''.join(charts) or '<p>no metrics.jsonl in the workdir</p>'}</div>
<h2>Layer-1 filters (Fig. 6)</h2>
<p>Each filter on its own scale, grey at zero.</p><img class="pixels" src="{data['filters']}" alt="layer-1 filters">
<h2>Config</h2><pre>{html.escape(data['config'])}</pre>"""
  return page('report', body, navigation(layers))


def unit_classes(layer: dict[str, Any], u: int) -> str:
  """What unit `u` responds to: its top classes by mean activation and among its strongest images, and its class
  selectivity (`report.draw_layers`); empty for a layer built without class statistics."""
  if 'classes' not in layer:
    return ''
  c = layer['classes'][u]
  by_mean = ', '.join(html.escape(str(name)) for _, name, _ in c['by_mean'][:3])
  in_top = ', '.join(f'{html.escape(str(name))} ({count})' for _, name, count in c['in_top'][:3])
  return (f'<p class="classes">top classes: {by_mean or "-"}; in its top images: {in_top or "-"}; '
          f'class selectivity {layer["class_selectivity"][u]:.2f}</p>')


def unit_featurevis(layer: dict[str, Any], u: int) -> str:
  """Unit `u`'s feature visualisations (`report.write_featurevis`) as a crop of their sprite sheet, with the
  objective they reach against the dataset's best in the tooltip; empty for a layer without them."""
  fv = layer.get('featurevis')
  if not fv:
    return ''
  reached = ', '.join(f'{v:.3g}' for v in fv['activation'][u])
  title = (f'feature visualisation: map mean {reached} (the best {layer["images"]} images: '
           f'{fv["dataset_best"][u]:.3g})' + ('; after the objective\'s images, the negative\'s' if fv['negative']
                                              else ''))
  return sprite_cell('fv', html.escape(title), fv['sheets'], fv['units_per_sheet'], u, fv['width'], fv['tile'])


def sprite_cell(kind: str, title: str, sheets: Sequence[str], units_per_sheet: int, u: int, width: int,
                height: int) -> str:
  """Unit `u`'s row of a layer's sprite sheets (`units_per_sheet` rows of `height` px per sheet) as a `div` of class
  `kind`; `title` already escaped."""
  sheet, row = divmod(u, units_per_sheet)
  return (f'<div class="{kind}" title="{title}" style="width:{width}px;height:{height}px;'
          f'background-image:url({sheets[sheet]});background-position:0 -{row * height}px"></div>')


def featurevis_note(layer: dict[str, Any]) -> str:
  """The layer page's sentence on its feature visualisations; empty without them."""
  fv = layer.get('featurevis')
  if not fv:
    return ''
  k = fv['diversity']
  what = (f'{k} diverse images that maximise its map mean' if k > 1 else 'the image that maximises its map mean') + (
      f', then {k if k > 1 else "the one"} that minimise{"" if k > 1 else "s"} it (the negative)' if fv['negative']
      else '')
  return (f'<p>Left of each unit\'s top {layer["k"]}: {what}, found by optimisation (Olah et al. 2017, Lucid\'s '
          f'recipe). For {fv["live_beating"]} of the {fv["live"]} live units the map mean it reaches beats every one '
          f'of the {layer["images"]} images (hover for the values).</p>')


def layer_page(layer: dict[str, Any], split: str, layers: Sequence[int]) -> str:
  n, k, tile = layer['layer'], layer['k'], layer['tile']
  height, width = tile, layer['cell_width']
  units = []
  for u in range(layer['units']):
    values = ' '.join('-' if v is None else f'{v:.3g}' for v in layer['value'][u])
    if layer.get('featurevis'):
      fv = layer['featurevis']
      values += (f' | map mean: visualisation {max(fv["activation"][u][:fv["diversity"]]):.3g}, best image '
                 f'{fv["dataset_best"][u]:.3g}')
    if layer.get('selectivity') and layer['selectivity'][u] is not None:
      values += f' | selectivity {layer["selectivity"][u]:.2f}'
    where = '; '.join(f'image {i} ({y}, {x})' for i, y, x, v in
                      zip(layer['image'][u], layer['y'][u], layer['x'][u], layer['value'][u]) if v is not None)
    sort_keys = f' data-unit="{u}"' + (f' data-class-selectivity="{layer["class_selectivity"][u]}"'
                                       if 'class_selectivity' in layer else '')
    units.append(f'<section class="unit{" dead" if layer["dead"][u] else ""}" id="unit-{u}"{sort_keys}>'
                 f'<h3><a href="#unit-{u}">unit {u}</a></h3><div class="visuals">{unit_featurevis(layer, u)}'
                 f'{sprite_cell("cell", where, layer["sheets"], layer["units_per_sheet"], u, width, height)}</div>'
                 f'{unit_classes(layer, u)}<p class="values">{values}</p></section>')
  dead = sum(layer['dead'])
  sort = ('<label>sort by <select id="sort"><option value="unit">unit</option><option value="classSelectivity">'
          'class selectivity</option></select></label>' if 'class_selectivity' in layer else '')
  body = f"""<h1>Layer {n}: {layer['units']} units</h1>
<p>Each unit (feature map) with its top {k} activations over {layer['images']} {html.escape(split)} images, strongest
first: on the left the deconvnet projections (each on its own scale, grey at zero), on the right the
{layer['window']}-px image patches they come from (Fig. 2). Below, the activation values. {dead} units never fire
on these images (dead). Hover a unit for its images and positions. Under each unit, what it responds to: its
classes of highest mean activation, the commonest classes among its top 100 images, and its class selectivity
(1: one class only, 0: all alike), which the units can be sorted by.</p>{featurevis_note(layer)}
<form id="jump" onsubmit="return false"><input id="filter" placeholder="unit number, Enter" size="18"
 aria-label="jump to unit"> <label><input type="checkbox" id="hide-dead"> hide dead units</label> {sort}</form>
<div class="units">{''.join(units)}</div>
<script>{JUMP_JS}</script>"""
  return page(f'layer {n}', body, navigation(layers))


def analyses_page(data: dict[str, Any], layers: Sequence[int]) -> str:
  parts = ['<h1>Occlusion, invariance, evolution</h1>', '<h2>Occlusion (Fig. 7)</h2>']
  for i, e in enumerate(data['occlusion']):
    parts.append(f'<figure><img src="{e["sprite"]}" alt="occlusion {i}"><figcaption>{data["split"]} image {i}, '
                 f'class {e["label"]} (predicted {e["predicted"]}, p = {e["p_true"]:.3f}). A grey {e["square"]}-px '
                 f'square at every position: left the image, middle the total activity of the top conv layer\'s '
                 f'map {e["feature"]} (range {e["activity_range"][0]:.3g} to {e["activity_range"][1]:.3g}), right '
                 f'p(true class) (range {e["probability_range"][0]:.3f} to {e["probability_range"][1]:.3f}), by '
                 f'square position.</figcaption></figure>')
  parts.append('<h2>Invariance (Fig. 5)</h2>')
  charts = []
  for kind, curve in data['invariance'].items():
    for key in [k for k in curve if k.startswith('layer')] + ['probability']:
      series = [(f'image {i}', curve['amount'], ys) for i, ys in enumerate(curve[key])]
      charts.append(svg_chart(series, f'{kind}: {key if key == "probability" else key + " distance"}', kind,
                              width=300, height=200))
  parts.append('<p>Euclidean feature distance to the untransformed image, and p(true class).</p>'
               f'<div class="charts">{"".join(charts)}</div>')
  parts.append('<h2>Feature evolution (Fig. 4)</h2>')
  if data['evolution'] is None:
    parts.append('<p>Not drawn: the run kept a single checkpoint.</p>')
  else:
    steps = ', '.join(str(s) for s in data['evolution']['steps'])
    for n, e in sorted(data['evolution']['layers'].items(), key=lambda item: int(item[0])):
      parts.append(f'<figure><img class="pixels" src="{e["sprite"]}" alt="evolution layer {n}"><figcaption>layer {n}: '
                   f'units {", ".join(map(str, e["channels"]))} (rows), strongest activation projected at steps '
                   f'{steps} (columns)</figcaption></figure>')
  return page('analyses', '\n'.join(parts), navigation(layers))


def sanity_page(data: dict[str, Any], layers: Sequence[int]) -> str:
  """The sanity checks (`report.sanity_part`): per method, similarity to the original maps as layers are
  randomised, and between the predicted and a random class."""
  part = data.get('sanity')
  if not part:
    return page('sanity checks', '<h1>Sanity checks</h1><p>Not built: run the report with <code>--sanity_images 8'
                '</code> (or <code>python -m zfnet_jax.visualize sanity</code> for every method).</p>',
                navigation(layers))
  rows = part['rows']
  charts = []
  for test in ('cascading', 'independent'):
    for metric in ('spearman_signed', 'spearman_abs', 'ssim', 'hog_spearman'):
      series = []
      for method in dict.fromkeys(r['method'] for r in rows):
        mine = [r for r in rows if r['test'] == test and r['method'] == method]
        series.append((method, list(range(len(mine) + 1)), [1.0] + [r[metric] for r in mine]))
      charts.append(svg_chart(series, f'{test}: {metric}', 'layers randomised, from the logits down', width=300,
                              height=200))
  order = ', '.join(r['layers'] for r in rows if r['test'] == 'cascading' and r['method'] == rows[0]['method'])
  table = ''.join(f'<tr><td>{html.escape(r["method"])}</td><td>{r["spearman_signed"]:.2f}</td>'
                  f'<td>{r["spearman_abs"]:.2f}</td><td>{r["ssim"]:.2f}</td><td>{r["hog_spearman"]:.2f}</td></tr>'
                  for r in rows if r['test'] == 'random_class')
  body = f"""<h1>Sanity checks (Adebayo et al. 2018; Nie et al. 2018)</h1>
<p>Maps of the predicted class for {part['images']} {html.escape(data['split'])} images; each point the mean
similarity to the original maps after re-initialising (with the config's initialisers) the layers up to step x
(cascading: {html.escape(order)}) or that layer alone (independent). A method that passes changes its maps: its
curves fall. Each unit's selectivity (Mahendran &amp; Vedaldi) is on its layer page.</p>
<div class="charts">{''.join(charts)}</div>
<h2>Random class (Nie et al.)</h2><table><tr><th>method</th><th>Spearman signed</th><th>Spearman |map|</th>
<th>SSIM</th><th>HOG Spearman</th></tr>{table}</table>"""
  return page('sanity checks', body, navigation(layers))


def write_site(out: str, data: dict[str, Any]) -> list[str]:
  """Writes every page and the CSS into `out`; returns the pages' paths."""
  layers = sorted(data['layers'])
  pages = {'index.html': index_page(data), 'analyses.html': analyses_page(data, layers),
           'sanity.html': sanity_page(data, layers),
           **{f'layer{n}.html': layer_page(data['layers'][n], data['split'], layers) for n in layers}}
  with open(os.path.join(out, 'report.css'), 'w') as f:
    f.write(CSS)
  paths = []
  for name, text in pages.items():
    paths.append(os.path.join(out, name))
    with open(paths[-1], 'w') as f:
      f.write(text)
  return paths
