"""The run directory: the configuration record and the append-only log of finished units.

``units.jsonl`` holds one JSON object per finished unit ``{"method", "layer", "metric", "image", "values"}``
(``values``: ``[[subset, measure, class or null, number or null], ...]``), appended with flush + fsync. A line cut short by a kill
(no final newline) is discarded and cut off the file before the next append; a unit logged twice counts once.
``config.json`` holds the configuration fields that change the numbers, the resolved plan and the versions; a
run directory refuses a different configuration or plan.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional

from ..errors import InputError

Unit = tuple[str, str, str, str]  # method, layer, metric, image
LOG = "units.jsonl"
CONFIG = "config.json"


def _clean(values: list) -> list:
    """Unit values ``[(subset, measure, cls, value)]`` as JSON-ready lists (NaN as null)."""
    return [[s, m, c, None if v is None or not math.isfinite(v) else float(v)] for s, m, c, v in values]


def _read_values(values) -> list:
    if not isinstance(values, list) or not all(isinstance(x, list) and len(x) == 4 for x in values):
        raise TypeError("values must be a list of [subset, measure, class, value]")
    return [(str(s), str(m), None if c is None else int(c), math.nan if v is None else float(v))
            for s, m, c, v in values]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunStore:
    """The run directory of one sweep (only rank 0 writes)."""

    def __init__(self, run_dir, writer: bool = True):
        self.dir = Path(run_dir)
        self.writer = writer
        self.log = self.dir / LOG

    # ----------------------------------------------------------------- configuration
    def check_config(self, record: dict, defaults: Optional[dict] = None) -> bool:
        """Create ``config.json`` or check it against ``record`` (``config`` and ``plan`` must match exactly;
        other versions only warn). A configuration field missing from an older ``config.json`` counts as its value
        in ``defaults`` (fields added since keep resuming old runs). Returns True if the run directory already
        existed with this configuration."""
        path = self.dir / CONFIG
        if self.dir.exists() and not self.dir.is_dir():
            raise InputError(f"run directory {str(self.dir)!r} exists and is not a directory")
        if not path.is_file():
            if self.log.exists():
                raise InputError(f"{str(self.dir)!r} holds {LOG} but no {CONFIG}; use a new run directory")
            if self.writer:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps(record, indent=1, sort_keys=False) + "\n")
            return False
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {str(path)!r}: {exc}; use a new run directory") from exc
        for section in ("config", "plan"):
            a, b = old.get(section, {}), record[section]
            if section == "config" and defaults:
                a = {**{k: v for k, v in defaults.items() if k not in a}, **a}
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if diff:
                k = diff[0]
                raise InputError(
                    f"run directory {str(self.dir)!r} holds a sweep with a different {section}: {k} was "
                    f"{_short(a.get(k))}, now {_short(b.get(k))}" + (f" (and {len(diff) - 1} more)" if len(diff) > 1
                                                                     else "")
                    + "; resume it with the same options, or choose a new run directory (-o)")
        if old.get("versions") != record.get("versions"):
            warnings.warn(f"resuming {str(self.dir)!r} with different versions: {old.get('versions')} -> "
                          f"{record.get('versions')}", stacklevel=2)
        return True

    # ----------------------------------------------------------------- the log
    def load(self) -> dict[Unit, list]:
        """Finished units and their values; a torn last line is cut off the file (by the writer)."""
        if not self.log.is_file():
            return {}
        data = self.log.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and self.writer:
            with open(self.log, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        done: dict[Unit, list] = {}
        for number, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                unit = (d["method"], d["layer"], d["metric"], d["image"])
                values = _read_values(d["values"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{str(self.log)!r} line {number} is not a unit record ({exc}); remove that line "
                                 "or use a new run directory") from exc
            done.setdefault(unit, values)
        return done

    def append(self, units: Iterable[tuple[Unit, list]]) -> None:
        """Append finished units (one line each), then flush and fsync."""
        lines = [json.dumps({"method": u[0], "layer": u[1], "metric": u[2], "image": u[3], "values": _clean(v)},
                            allow_nan=False) + "\n" for u, v in units]
        if not lines or not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


def _short(v: Optional[object]) -> str:
    text = json.dumps(v)
    return text if len(text) < 120 else text[:117] + "..."
