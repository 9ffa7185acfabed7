"""Tidy tables from the finished units: per image and reduced, as CSV and JSON lines, and the summary table.

Reduction is exact and independent of the order in which units finished (or on which rank): sums are
``math.fsum`` (correctly rounded), over the per-image values in plan order. Rank correlations, similarities and
AUCs are averaged over the images where they are defined (``count``; ``nan`` = images where undefined, e.g. a
constant map); the pointing game sums hits and evaluations per class and averages the per-class accuracies.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterable, Optional

import attrs

from .plan import SweepPlan
from .store import Unit

PER_IMAGE_FIELDS = ("method", "layer", "metric", "subset", "image", "value")
SUMMARY_FIELDS = ("method", "layer", "metric", "subset", "value", "count", "nan", "std")
HEADLINE = {  # metric -> (subset to show, True if higher is better)
    "sensitivity": ("top-vs-bottom", False),
    "identity": ("all", True),
    "deletion": ("all", False),
    "insertion": ("all", True),
    "pointing": ("all", True),
}


@attrs.frozen
class Row:
    """One reduced number: ``metric`` of ``method`` at ``layer`` on ``subset`` over ``count`` images (items)."""

    method: str
    layer: str
    metric: str
    subset: str
    value: float
    count: int
    nan: int = 0
    std: float = math.nan


def per_image_rows(plan: SweepPlan, done: dict[Unit, dict]) -> list[dict]:
    """One row per (unit, subset, measure) in plan order."""
    rows = []
    for unit in plan.all_units():
        values = done.get(unit)
        if values is None:
            continue
        for key, v in values.items():
            subset, _, measure = key.partition("|")
            rows.append({"method": unit[0], "layer": unit[1], "metric": measure, "subset": subset,
                         "image": unit[3], "value": v})
    return rows


def _mean_row(method, layer, metric, subset, values: list[float]) -> Row:
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if not n:
        return Row(method, layer, metric, subset, math.nan, 0, len(values))
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / n)
    return Row(method, layer, metric, subset, mean, n, len(values) - n, std)


def reduce_rows(plan: SweepPlan, done: dict[Unit, dict]) -> list[Row]:
    """The summary: one row per (method, layer, metric, subset)."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in per_image_rows(plan, done):
        groups.setdefault((r["method"], r["layer"], r["metric"], r["subset"]), []).append(r["value"])
    out: list[Row] = []
    pointing: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for (method, layer, metric, subset), values in groups.items():
        if metric.startswith("pointing@"):
            pointing.setdefault((method, layer, subset), {}).setdefault(metric[len("pointing@"):], []).extend(values)
        else:
            out.append(_mean_row(method, layer, metric, subset, values))
    for (method, layer, subset), per_class in pointing.items():
        accuracies = [math.fsum(v) / len(v) for v in per_class.values()]
        evaluations = sum(len(v) for v in per_class.values())
        out.append(Row(method, layer, "pointing", subset, math.fsum(accuracies) / len(accuracies), evaluations))
    return out


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def to_csv(rows: Iterable[dict], fields: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def to_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in rows)


def headline(rows: list[Row], metric: str) -> Optional[tuple[str, str, bool]]:
    """(metric name in the rows, subset, higher is better) of a sweep metric's headline number."""
    if metric in HEADLINE:
        subset, up = HEADLINE[metric]
        return metric, subset, up
    if metric == "randomisation":
        subsets = [r.subset for r in rows if r.metric == "randomisation_spearman" and r.subset.startswith("cascading:")]
        if subsets:  # fully randomised: the last cascading step
            return "randomisation_spearman", subsets[-1], False
    return None


def headline_tables(plan: SweepPlan, rows: list[Row]) -> list[tuple[str, str, str, bool, dict]]:
    """Per sweep metric with rows: (sweep metric, row metric, subset, higher is better, {(method, layer): value})."""
    out = []
    for metric in plan.metrics:
        head = headline(rows, metric)
        if head is None:
            continue
        name, subset, up = head
        table = {(r.method, r.layer): r.value for r in rows if r.metric == name and r.subset == subset}
        if table:
            out.append((metric, name, subset, up, table))
    return out


def summary_table(plan: SweepPlan, rows: list[Row]) -> str:
    """Per metric, a methods x layers table of the headline number (``*`` marks each method's best layer)."""
    lines = []
    layers = [*plan.layers, *plan.combinations]
    short = {layer: (layer.replace("combine:", "c:") if len(layer) < 14 else "..." + layer[-11:]) for layer in layers}
    for _, name, subset, up, table in headline_tables(plan, rows):
        cols = [layer for layer in layers if any((m, layer) in table for m in plan.methods)]
        extra = [k for k in table if k[0] not in plan.methods]
        lines.append(f"{name} [{subset}] ({'higher' if up else 'lower'} is better)")
        width = max(len(m) for m in [*plan.methods, *(k[0] for k in extra)])
        lines.append(" " * width + "  " + "  ".join(f"{short[c]:>14}" for c in cols))
        for m in [*plan.methods, *dict.fromkeys(k[0] for k in extra)]:
            vals = {c: table[m, c] for c in cols if (m, c) in table}
            finite = [v for v in vals.values() if math.isfinite(v)]
            best = (max if up else min)(finite) if finite else None
            cells = [(f"{vals[c]:.3f}" + ("*" if vals[c] == best else " ")) if c in vals else "-" for c in cols]
            if m not in plan.methods:
                cells = [f"{v:.3f} " for v in vals.values()]
            lines.append(f"{m:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
        lines.append("")
    return "\n".join(lines)
