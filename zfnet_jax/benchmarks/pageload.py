"""`pageload`: each page of a built report opened in headless Chromium through Playwright, one record per page.

Every HTML page of `--site` (a folder `python -m zfnet_jax.visualize report` wrote) is opened from file:// in a
fresh browser context (nothing cached) `--steps` times; the time is the navigation's `loadEventEnd` (HTML
parsed, sprites fetched and decoded, styles applied). Chromium is /usr/bin/chromium or `$ZFNET_CHROMIUM`;
Playwright is imported only here.
"""
from __future__ import annotations

import os
import statistics

import ml_collections

from zfnet_jax.benchmarks import harness

VIEWPORT = {'width': 1280, 'height': 900}


def _page_bytes(site: str, page: str) -> int:
  """The bytes of `page` and of the files it owns (`layer3.html`: `layer3_*`, its sprites)."""
  return sum(os.path.getsize(os.path.join(site, f)) for f in os.listdir(site)
             if f == page or f.startswith(page[:-len('.html')] + '_'))


def run(config: ml_collections.ConfigDict, options: harness.Options) -> list[harness.Record]:
  """Per page, `what` `pageload PAGE`: `batch` the units on it (`section.unit`), `load_s` the median load time,
  `page_and_sprite_bytes`. `--screenshot PNG` also saves the largest layer page."""
  from playwright.sync_api import sync_playwright
  if not options.site:
    raise SystemExit('pageload needs --site, a folder written by python -m zfnet_jax.visualize report')
  pages = sorted(f for f in os.listdir(options.site) if f.endswith('.html'))
  url = lambda page: 'file://' + os.path.abspath(os.path.join(options.site, page))
  records = []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=os.environ.get('ZFNET_CHROMIUM', '/usr/bin/chromium'),
                                args=['--no-sandbox'])
    for name in pages:
      wall, units = [], 0
      for _ in range(options.steps):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(url(name), wait_until='load')
        wall.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
        units = page.eval_on_selector_all('section.unit', 'u => u.length')
        context.close()
      records.append(harness.record(options, config, f'pageload {name}', units,
                                    harness.Timings(wall, [0.0] * len(wall)), 0.0, load_s=statistics.median(wall),
                                    page_and_sprite_bytes=_page_bytes(options.site, name)))
    if options.screenshot:
      layers = [r for r in records if r['what'].startswith('pageload layer')]
      if not layers:
        raise SystemExit(f'--screenshot: {options.site} has no layerN.html page to photograph')
      biggest = max(layers, key=lambda r: r['batch'])
      page = browser.new_page(viewport=VIEWPORT)
      page.goto(url(biggest['what'].split()[1]))
      page.screenshot(path=options.screenshot)
    browser.close()
  return records
