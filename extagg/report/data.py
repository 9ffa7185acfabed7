"""What the report shows, gathered from a run directory: the reduced rows with their bootstrap intervals and
floors, the layer and method order, the configuration and the versions."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from ..evaluation.results import ImageValue, Result
from ..metric_spec import FLOOR_PREFIX
from .bootstrap import LEVEL, REPS, bootstrap_ci

DIRECTIONS = {"higher": ("\u2191", "higher is better"), "lower": ("\u2193", "lower is better"),
              "zero": ("\u21950", "closest to zero is better")}


def _read_json(path: Path):
    from ..sweep.store import check_file

    if not check_file(path):
        raise InputError(f"{str(path)!r} is missing: is this a finished sweep's run directory (extagg sweep -o DIR)?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {str(path)!r} ({exc}); rerun the sweep to write it again") from exc


def _read_jsonl(path: Path) -> list[dict]:
    from ..sweep.store import check_file

    if not check_file(path):
        raise InputError(f"{str(path)!r} is missing: is this a finished sweep's run directory (extagg sweep -o DIR)?")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise InputError(f"{str(path)!r} line {number} is not JSON ({exc}); rerun the sweep (same command "
                                 "and run directory) to write it again") from exc
    return out


def _number(v) -> float:
    return math.nan if v is None else float(v)


def read_rows(run_dir: Path) -> tuple[list[Result], list[ImageValue]]:
    """The reduced rows and per-image values a sweep wrote (``results.jsonl``, ``per_image.jsonl``)."""
    rows = [Result(d["method"], d["canonical"], d["layer"], d["metric"], d["measure"], d["subset"], _number(d["value"]),
                   int(d["n"]), int(d.get("nan") or 0), _number(d.get("std")), d.get("direction") or "higher")
            for d in _read_jsonl(run_dir / "results.jsonl")]
    values = [ImageValue(d["method"], d["canonical"], d["layer"], d["metric"], d["measure"], d["subset"],
                         str(d["image"]), _number(d["value"]), d.get("cls"))
              for d in _read_jsonl(run_dir / "per_image.jsonl")]
    return rows, values


def cell_seed(seed: int, row) -> int:
    """The bootstrap seed of one cell: the run's seed and the cell's names (independent of the row order)."""
    from ..evaluation.context import seed_of

    return seed_of(seed, row.canonical, row.layer, row.metric, row.measure, row.subset)


def with_intervals(rows: Iterable[Result], values: Iterable[ImageValue], seed: int = 0, reps: int = REPS,
                   level: float = LEVEL) -> list[dict]:
    """Every row as a dict with ``lo`` and ``hi``: the bootstrap interval of its value over its per-image values
    (:func:`~extagg.report.bootstrap.bootstrap_ci`, seeded by :func:`cell_seed`; NaN below two images)."""
    groups: dict[tuple, list[ImageValue]] = {}
    for v in values:
        groups.setdefault((v.canonical, v.layer, v.metric, v.measure, v.subset), []).append(v)
    out = []
    for r in rows:
        vs = groups.get((r.canonical, r.layer, r.metric, r.measure, r.subset), [])
        lo, hi = bootstrap_ci([v.value for v in vs], cell_seed(seed, r), reps, level, [v.cls for v in vs])
        out.append({**r.as_dict(), "lo": lo, "hi": hi})
    return out


def attach_floors(rows: list[dict]) -> list[dict]:
    """The measured rows (floors left out), each with ``floors``: ``{floor subset: {value, lo, hi, n}}`` of the same
    method, layer, metric and measure."""
    floors: dict[tuple, dict] = {}
    for r in rows:
        if r["subset"].startswith(FLOOR_PREFIX):
            floors.setdefault((r["canonical"], r["layer"], r["metric"], r["measure"]), {})[r["subset"]] = {
                k: r[k] for k in ("value", "lo", "hi", "n")}
    return [{**r, "floors": floors.get((r["canonical"], r["layer"], r["metric"], r["measure"]), {})}
            for r in rows if not r["subset"].startswith(FLOOR_PREFIX)]


def headlines(rows: list[dict], registry=None) -> dict:
    """{metric call: its headline subset} (the metric's own choice where the registry knows the metric, else the
    first measured subset)."""
    out: dict = {}
    subsets: dict = {}
    for r in rows:
        subsets.setdefault(r["metric"], [])
        if r["subset"] not in subsets[r["metric"]]:
            subsets[r["metric"]].append(r["subset"])
    for metric, names in subsets.items():
        head = None
        if registry is not None:
            try:
                from ..evaluation.driver import parse_metric

                call = parse_metric(registry, metric)
                if call.metric.headline is not None:
                    head = call.metric.headline(names, **call.kwargs)
            except Exception:  # noqa: BLE001 - a metric no longer registered: the first subset
                head = None
        out[metric] = head if head in names else names[0]
    return out


def gather(run_dir, rows=None, per_image=None, registry=None) -> dict:
    """The report's data (JSON-ready; NaN as None): ``rows`` (measured rows with ``lo``, ``hi`` and ``floors``),
    ``methods`` (as asked, in plan order), ``layers`` (plan order, then the layer combinations), ``headline``
    ({metric: subset}), ``directions``, ``config``, ``versions``, ``plan``, ``model``, ``level``, ``reps``."""
    run_dir = Path(run_dir)
    record = _read_json(run_dir / "config.json")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(f"{str(run_dir / 'config.json')!r} is not a sweep record (no 'config' object)")
    if rows is None or per_image is None:
        rows, per_image = read_rows(run_dir)
    config, plan = record["config"], record.get("plan") or {}
    seed = int(config.get("seed") or 0)
    measured = attach_floors(with_intervals(rows, per_image, seed))
    layers = list(dict.fromkeys([*plan.get("layers", []), *plan.get("combinations", []),
                                 *(r["layer"] for r in measured)]))
    methods = list(dict.fromkeys(r["method"] for r in measured))
    return _clean({"rows": measured, "methods": methods, "layers": layers,
                   "headline": headlines(measured, registry), "directions": DIRECTIONS,
                   "config": config, "versions": record.get("versions") or {}, "plan": plan,
                   "model": (record.get("versions") or {}).get("model"), "level": LEVEL, "reps": REPS,
                   "images": plan.get("images", [])})


def _clean(x):
    """NaN and infinities as None, recursively (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x
