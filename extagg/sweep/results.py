"""The sweep's tables from the finished units: per image and reduced (typed rows of
:mod:`extagg.evaluation.results`), as CSV and JSON lines, and the summary table.

Reduction is exact and independent of the order in which units finished (or on which rank): per-image values
are taken in plan order and summed with ``math.fsum``. Each measure's direction (declared by its metric) decides
every "best" star, ranking and figure; floors (``floor:...`` subsets) are shown next to the value they qualify.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterable, Optional

import attrs

from ..evaluation.results import IMAGE_FIELDS, RESULT_FIELDS, ImageValue, Result, jsonable, reduce_values
from ..evaluation.run import directions
from ..metric_spec import FLOOR_PREFIX, Direction
from .plan import SweepPlan
from .store import Unit

PER_IMAGE_FIELDS = IMAGE_FIELDS
SUMMARY_FIELDS = RESULT_FIELDS
Row = Result


def per_image_values(plan: SweepPlan, done: dict[Unit, list]) -> list[ImageValue]:
    """One :class:`ImageValue` per (unit, subset, measure, class) in plan order."""
    asked = plan.layout.asked
    out = []
    for unit in plan.all_units():
        values = done.get(unit)
        if values is None:
            continue
        method, layer, metric, image = unit
        for subset, measure, cls, v in values:
            out.append(ImageValue(asked.get(method, method), method, layer, metric, measure, subset, image, v, cls))
    return out


def reduce_rows(plan: SweepPlan, done: dict[Unit, list]) -> list[Result]:
    """The summary rows: one per (method, layer, metric, measure, subset)."""
    return reduce_values(per_image_values(plan, done), directions(plan.calls))


def to_csv(rows: Iterable[dict], fields: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else "" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def to_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows)


@attrs.frozen
class Headline:
    """The number a summary shows for one metric call: its first measure on the metric's headline subset, per
    (method, layer), with the floors of the same measure beside it."""

    metric: str
    measure: str
    subset: str
    direction: Direction
    table: dict  # (canonical method, layer) -> Result
    floors: dict  # floor subset -> {(canonical method, layer): Result}


def headline(plan: SweepPlan, rows: list[Result], metric: str) -> Optional[Headline]:
    call = plan.call(metric)
    measure = call.metric.measures[0]
    mine = [r for r in rows if r.metric == metric and r.measure == measure.name]
    subsets = list(dict.fromkeys(r.subset for r in mine if not r.subset.startswith(FLOOR_PREFIX)))
    if not subsets:
        return None
    subset = None
    if call.metric.headline is not None:
        subset = call.metric.headline(subsets, **call.kwargs)
    subset = subset if subset in subsets else subsets[0]
    table = {(r.canonical, r.layer): r for r in mine if r.subset == subset}
    floors: dict = {}
    for r in mine:
        if r.subset.startswith(FLOOR_PREFIX) and not r.subset.endswith("-difficult"):
            floors.setdefault(r.subset, {})[r.canonical, r.layer] = r
    return Headline(metric, measure.name, subset, measure.direction, table, floors)


def headline_tables(plan: SweepPlan, rows: list[Result]) -> list[Headline]:
    """The headline of every metric call with rows, in plan order."""
    return [h for h in (headline(plan, rows, m) for m in plan.metrics) if h is not None and h.table]


def _cell(r: Result, star: bool) -> str:
    text = f"{r.value:.3f}" if math.isfinite(r.value) else "nan"
    text += "*" if star else " "
    if r.nan:
        text += f" ({r.n}/{r.n + r.nan})"
    return text


def summary_table(plan: SweepPlan, rows: list[Result]) -> str:
    """Per metric call, a methods x layers table of the headline number: ``*`` marks each method's best layer by
    the measure's direction, ``(n/total)`` the images where it is defined when some are not, and the floors
    follow as rows of their own."""
    lines = []
    layers = [*plan.layers, *plan.combinations, *plan.layout.external_layers()]
    short = {layer: (layer.replace("combine:", "c:") if len(layer) < 14 else "..." + layer[-11:]) for layer in layers}
    asked = plan.layout.asked
    for h in headline_tables(plan, rows):
        cols = [layer for layer in layers if any((m, layer) in h.table for m in plan.methods)]
        n_images = max((r.n + r.nan for r in h.table.values()), default=0)
        lines.append(f"{h.metric}: {h.measure} [{h.subset}] ({h.direction.phrase}; "
                     f"{n_images} image(s) per cell)")
        names = {m: asked.get(m, m) + ("" if asked.get(m, m) == m else f" = {m}") for m in plan.methods}
        width = max(len(x) for x in [*names.values(), *(f"  {s}" for s in h.floors), "method"])
        lines.append(" " * width + "  " + "  ".join(f"{short[c]:>18}" for c in cols))
        for m in plan.methods:
            cells = {c: h.table[m, c] for c in cols if (m, c) in h.table}
            if not cells:
                continue
            best = h.direction.best([r.value for r in cells.values()])
            text = [(_cell(cells[c], cells[c].value == best) if c in cells else "-") for c in cols]
            lines.append(f"{names[m]:<{width}}  " + "  ".join(f"{t:>18}" for t in text))
            for floor, table in h.floors.items():
                text = [(_cell(table[m, c], False) if (m, c) in table else "-") for c in cols]
                lines.append(f"{'  ' + floor:<{width}}  " + "  ".join(f"{t:>18}" for t in text))
        lines.append("")
    return "\n".join(lines)
