"""The report's HTML page: one file, styles and script inline, the data as an inline JSON block."""
from __future__ import annotations

import html
import json
from importlib import resources

from .gallery import css_gradient

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 1.5em 3em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav a{margin-right:1em}.muted{color:#666}.small{font-size:12px}
table.results{border-collapse:collapse;font-size:12.5px;width:100%}
table.results th,table.results td{border-bottom:1px solid #e4e4e4;padding:3px 6px;text-align:left;white-space:nowrap}
table.results th{cursor:pointer;background:#f4f4f6;position:sticky;top:0;user-select:none}
table.results th.sorted-asc::after{content:" \\25B2"}table.results th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.floor{color:#555}
.filters label{margin-right:1em}.filters select{max-width:22em}
.scroll{max-height:32em;overflow:auto;border:1px solid #ddd}
.chart{display:inline-block;vertical-align:top;margin:0 1em 1em 0}
.legend span{cursor:pointer;margin-right:1em;white-space:nowrap}.legend span.off{opacity:.35}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px;border-radius:2px}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:4px 7px;border-radius:4px;font-size:12px;
display:none;white-space:pre;z-index:9}
svg text{font-size:11px;fill:#333}svg .axis line,svg .axis path{stroke:#999}
table.grid{border-collapse:collapse}table.grid th{font-weight:normal;font-size:11px;padding:2px;max-width:96px;
overflow:hidden}table.grid th.method{text-align:right;padding-right:6px;max-width:none;white-space:nowrap}
table.grid td{padding:1px}img.thumb,img.photo{width:96px;height:auto;display:block;image-rendering:auto}
.cbar{display:inline-block;width:220px;height:12px;vertical-align:middle;border:1px solid #aaa;margin:0 .5em}
pre{background:#f6f6f8;padding:.8em;overflow:auto;font-size:12px}
"""


def _json(data) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def page(data: dict, gallery: str, thumbnails: int, mode: str, batches: int) -> str:
    """The whole page."""
    e = html.escape
    script = resources.files(__package__).joinpath("report.js").read_text(encoding="utf-8")
    plan = data["plan"]
    model = data.get("model") or data["config"].get("model", "?")
    n_images = len(data.get("images") or [])
    summary = (f"model {e(str(model))}; {n_images} image(s); {len(data['methods'])} method(s); "
               f"{len(data['layers'])} layer(s) and combination(s); {len(plan.get('metrics', []))} metric call(s); "
               f"seed {e(str(data['config'].get('seed')))}")
    if thumbnails:
        maps_note = (f"{thumbnails} map(s) from {batches} batch file(s) (<code>--save-maps {e(str(mode))}</code>). "
                     f"Each map is min-max normalised on its own: low <span class=\"cbar\" "
                     f"style=\"background:{css_gradient()}\"></span> high, over the photo in grey.")
    else:
        maps_note = ("No saved maps in this run directory (the sweep ran with <code>--save-maps none</code>, or "
                     "before maps were saved); rerun the sweep with <code>--save-maps thumbs</code> in a new run "
                     "directory to see them.")
    config = json.dumps({"config": data["config"], "versions": data["versions"]}, indent=1)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>extagg sweep report</title>
<style>{CSS}</style></head>
<body>
<h1>extagg sweep report</h1>
<p class="muted">{summary}</p>
<nav><a href="#results">Results</a><a href="#charts">Charts</a><a href="#gallery">Maps</a>
<a href="#config">Configuration</a></nav>

<h2 id="results">Results</h2>
<p class="small muted">One row per method, layer, metric call, measure and subset; click a header to sort (again to
reverse). <b>value</b>: the mean over the images where it is defined (<b>n</b>; <b>nan</b>: the others);
<b>95% CI</b>: a percentile bootstrap over the images ({data['reps']} resamples, seeded per cell); <b>floors</b>: what
chance or position alone gives (never ranked).</p>
<div class="filters" id="filters"></div>
<p class="small muted" id="count"></p>
<div class="scroll"><table class="results" id="results-table"><thead></thead><tbody></tbody></table></div>

<h2 id="charts">Charts</h2>
<div class="filters"><label>measure <select id="chart-measure"></select></label></div>
<div class="legend" id="legend"></div>
<div class="chart" id="chart-layers"></div><div class="chart" id="chart-ranking"></div>
<p class="small muted">Left: the value against the layer (layer combinations after the divider), one line per method,
the 95% interval as a bar, floors as dashed lines. Right: methods ranked by their best layer in the measure's
direction. Click a legend entry to hide or show a method; hover a point for its numbers.</p>

<h2 id="gallery">Maps</h2>
<p class="small muted">{maps_note}</p>
{gallery}

<h2 id="config">Configuration and versions</h2>
<pre>{e(config)}</pre>
<div id="tip"></div>
<script id="report-data" type="application/json">{_json(data)}</script>
<script>{script}</script>
</body></html>
"""
