"""Tidy evaluation records and their CSV / JSON writers.

Every evaluation returns a flat list of :class:`Record` ``(method, layer, subset, metric, value, count)``:
``value`` is a float (NaN when nothing could be measured), ``count`` the number of items it summarises
(evaluations, images, classes; see each metric's docs). JSON writes NaN as ``null``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Iterable, Sequence, Union

import attrs
import torch

from ..errors import InputError

FIELDS = ("method", "layer", "subset", "metric", "value", "count")


@attrs.frozen
class Record:
    """One measured number: ``metric`` of ``method`` at ``layer`` on ``subset``, summarising ``count`` items."""

    method: str
    layer: str
    subset: str
    metric: str
    value: float = attrs.field(converter=float)
    count: int = attrs.field(converter=int)

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}


def summarise(values: torch.Tensor, method: str, layer: str, subset: str, metric: str) -> list[Record]:
    """Mean and standard deviation over the finite entries of ``values``, and how many were NaN.

    Returns three records: ``metric`` (mean of finite values; ``count`` = number of finite values),
    ``metric + "_std"`` (sample std of the finite values, NaN for fewer than two) and ``metric + "_nan"`` (``value`` = number of
    non-finite entries, ``count`` = all entries). Non-finite entries come from constant maps (undefined rank
    correlation); they are reported, never silently dropped.
    """
    v = values.detach().reshape(-1).to("cpu", torch.float64)
    finite = v[torch.isfinite(v)]
    n = int(finite.numel())
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(unbiased=True)) if n > 1 else math.nan
    return [
        Record(method, layer, subset, metric, mean, n),
        Record(method, layer, subset, metric + "_std", std, n),
        Record(method, layer, subset, metric + "_nan", float(v.numel() - n), int(v.numel())),
    ]


def records_of(rows, floors: bool = True) -> list[Record]:
    """The :class:`Record` triples (``measure``, ``measure_std``, ``measure_nan``) of driver result rows
    (:class:`extagg.evaluation.results.Result`), with the canonical method; floors (``floor:...`` subsets) kept
    unless ``floors`` is False."""
    out = []
    for r in rows:
        if r.floor and not floors:
            continue
        out += [Record(r.canonical, r.layer, r.subset, r.measure, r.value, r.n),
                Record(r.canonical, r.layer, r.subset, r.measure + "_std", r.std, r.n),
                Record(r.canonical, r.layer, r.subset, r.measure + "_nan", float(r.nan), r.n + r.nan)]
    return out


def _jsonable(r: Record) -> dict:
    d = r.as_dict()
    if not math.isfinite(d["value"]):
        d["value"] = None
    return d


def records_to_json(records: Sequence[Record]) -> str:
    """A JSON array of objects with the six fields; NaN values become ``null``."""
    return json.dumps([_jsonable(r) for r in records], indent=1, allow_nan=False)


def records_to_csv(records: Sequence[Record]) -> str:
    """CSV text with a header row ``method,layer,subset,metric,value,count`` (NaN written as ``nan``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(r.as_dict())
    return buf.getvalue()


def write_records(records: Iterable[Record], path: Union[str, os.PathLike]) -> None:
    """Write records to ``path``: ``.csv`` or ``.json`` (chosen by the suffix)."""
    records = list(records)
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".csv":
        text = records_to_csv(records)
    elif suffix == ".json":
        text = records_to_json(records)
    else:
        raise InputError(f"cannot write records to {os.fspath(path)!r}: the suffix must be .csv or .json")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def format_rows(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """A fixed-width text table of dict rows (floats to 4 decimals), one column per field (for the command line)."""
    cells = [[f"{r[f]:.4f}" if isinstance(r[f], float) else str(r[f]) for f in fields] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(fields)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(fields, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def format_table(records: Sequence[Record]) -> str:
    """A fixed-width text table of the records (for the command line)."""
    return format_rows([r.as_dict() for r in records], FIELDS)
