"""``extagg report RUN_DIR``: one self-contained, offline HTML page of a sweep (``RUN_DIR/report.html``).

The page holds the results table (sortable, filterable, each cell's direction, n, nan, a seeded 95% bootstrap
interval over the images and the floors beside the value), interactive metric-vs-layer and ranking charts
(inline SVG drawn by a few lines of inline JavaScript: no library, no network), the map gallery from the maps
the sweep saved (``--save-maps``) and the run's configuration and versions. See docs/report.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .data import gather

__all__ = ["build_report", "write_report", "gather"]


def build_report(run_dir, rows=None, per_image=None, plan=None, registry=None) -> tuple[str, dict]:
    """The page's HTML and a summary ``{"rows", "thumbnails", "batches"}`` (counts). ``rows`` / ``per_image``:
    the sweep's results when at hand (read from ``results.jsonl`` / ``per_image.jsonl`` otherwise)."""
    from ..sweep.saved_maps import read_batches
    from .gallery import gallery_html
    from .page import page

    data = gather(run_dir, rows, per_image, registry)
    asked = {r["canonical"]: r["method"] for r in data["rows"]}
    if plan is not None:
        asked.update(plan.layout.asked or {})
    batches = list(read_batches(run_dir))
    gallery, count = gallery_html(batches, asked, data["layers"])
    mode = batches[0]["index"].get("mode") if batches else data["config"].get("save_maps", "thumbs")
    return page(data, gallery, count, mode, len(batches)), {"rows": len(data["rows"]), "thumbnails": count,
                                                             "batches": len(batches)}


def write_report(run_dir, out: Optional[str] = None, rows=None, per_image=None, plan=None, registry=None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``) atomically; returns its path."""
    from ..sweep.store import write_atomic

    text, _ = build_report(run_dir, rows, per_image, plan, registry)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    write_atomic(path, text)
    return path
