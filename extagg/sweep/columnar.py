"""Finished units as columnar batch files: one Parquet file per committed batch under ``RUN_DIR/units/``.

A batch file holds one row per value of a unit, columns ``method, layer, metric, image`` (the unit), ``subset,
measure`` (strings), ``cls`` (int64 or null) and ``value`` (float64; NaN where undefined, a non-finite value is
stored as NaN as the JSON log did); a unit with no values is one row whose ``subset`` is null. The rows of a unit
are contiguous and in the order the metric gave them.

Durability: :func:`write_batch` writes the whole batch to a uniquely named temporary file (``.batch-*.tmp``),
fsyncs it, links it to its final name ``NNNNNNNN.parquet`` (a rename that never replaces: the next free number)
and fsyncs the directory. A batch counts only once its final name exists; Parquet's footer is written last, so a
file cut short is unreadable rather than half-read; leftover temporary files are ignored (the writer removes
them). Reading is exact: float64 values bit for bit, NaN preserved, class ints or null.

Why Parquet (pyarrow) rather than DuckDB: the store needs append-only, crash-atomic files whose commit is one
rename; a single DuckDB database file would need its own write-ahead log and one writer connection, and brings no
speed the reduction needs (the reduction is a group-by over a few columns, which pyarrow does in memory or
``pyarrow.dataset`` streams). Parquet files are also readable by any data-frame library.
"""
from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError, MissingDependencyError

UNITS = "units"
"""The folder of batch files inside a run directory."""
_NAME = re.compile(r"^(\d{8})\.parquet$")
_TEMP_PREFIX = ".batch-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
COLUMNS = ("method", "layer", "metric", "image", "subset", "measure", "cls", "value")


def pyarrow():
    """``(pyarrow, pyarrow.parquet)``; MissingDependencyError naming the install command if pyarrow is absent."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("the sweep's run directory stores units as Parquet and needs pyarrow: "
                                     "`pip install extagg[sweep]` (or `pip install pyarrow`)") from exc
    return pa, pq


def schema():
    pa, _ = pyarrow()
    return pa.schema([("method", pa.string()), ("layer", pa.string()), ("metric", pa.string()),
                      ("image", pa.string()), ("subset", pa.string()), ("measure", pa.string()),
                      ("cls", pa.int64()), ("value", pa.float64())])


_NO_VALUES = ((None, None, None, math.nan),)


def _number(v) -> float:
    return float(v) if v is not None and math.isfinite(v) else math.nan


def to_table(units: list):
    """A pyarrow table of ``[(unit, [(subset, measure, cls, value), ...]), ...]`` in the layout above."""
    pa, _ = pyarrow()
    rows = [values or _NO_VALUES for _, values in units]
    counts = [len(r) for r in rows]
    cols: dict[str, list] = {c: [u[k] for (u, _), n in zip(units, counts) for _ in range(n)]
                             for k, c in enumerate(COLUMNS[:4])}
    flat = [x for r in rows for x in r]
    cols["subset"] = [x[0] for x in flat]
    cols["measure"] = [x[1] for x in flat]
    cols["cls"] = [None if x[2] is None else int(x[2]) for x in flat]
    cols["value"] = [_number(x[3]) for x in flat]
    return pa.Table.from_pydict(cols, schema=schema())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def batch_files(folder: Path) -> list[Path]:
    """The committed batch files of ``folder`` in commit order (temporary and other names are ignored)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [folder / n for n in sorted(n for n in names if _NAME.match(n))]


def remove_leftovers(folder: Path) -> int:
    """Remove the temporary files a killed writer left in ``folder`` (never counted); how many."""
    n = 0
    for name in os.listdir(folder) if folder.is_dir() else ():
        if name.startswith(_TEMP_PREFIX) and name.endswith(".tmp"):
            st = os.lstat(folder / name)
            if stat.S_ISREG(st.st_mode):
                os.unlink(folder / name)
                n += 1
    return n


def write_batch(folder: Path, table, compression: str = "zstd") -> Path:
    """Commit ``table`` as the next batch file of ``folder``: temporary file, fsync, link to the next free
    ``NNNNNNNN.parquet`` (never replacing one), fsync of the folder. Returns the final path."""
    _, pq = pyarrow()
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression=compression)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        existing = batch_files(folder)
        number = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 0
        while True:
            final = folder / f"{number:08d}.parquet"
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                number += 1
    finally:
        os.unlink(tmp)
    _fsync_dir(folder)
    return final


def read_batch(path: Path):
    """One batch file as a pyarrow table (opened without following symbolic links); InputError naming the file if
    it is not a complete batch of the expected columns (a damaged file: remove it and its units are recomputed)."""
    pa, pq = pyarrow()
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        with os.fdopen(fd, "rb") as f:
            table = pq.read_table(pa.BufferReader(f.read()))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{str(path)!r} is not a complete Parquet batch file ({exc}); remove it (its units are "
                         "computed again on resume) or use a new run directory") from exc
    want = schema()
    if table.schema.names != want.names or any(a.type != b.type for a, b in zip(table.schema, want)):
        raise InputError(f"{str(path)!r} has columns {table.schema.names} of types "
                         f"{[str(t) for t in table.schema.types]}, not a sweep batch ({want.names} of types "
                         f"{[str(t) for t in want.types]}); remove it or use a new run directory")
    return table


def units_of(table) -> Iterator[tuple[tuple, list]]:
    """``(unit, [(subset, measure, cls, value), ...])`` per unit of a batch table, in order (a unit's rows are
    contiguous; a null ``subset`` row is a unit without values)."""
    cols = [table.column(c).to_pylist() for c in COLUMNS]
    unit, values = None, []
    for m, layer, metric, image, subset, measure, cls, v in zip(*cols):
        key = (m, layer, metric, image)
        if key != unit:
            if unit is not None:
                yield unit, values
            unit, values = key, []
        if subset is not None:
            values.append((subset, measure, cls, v))
    if unit is not None:
        yield unit, values


def read_table(folder: Path):
    """Every committed batch of ``folder`` as one pyarrow table (rows in commit order), for columnar readers."""
    pa, _ = pyarrow()
    tables = [read_batch(p) for p in batch_files(folder)]
    return pa.concat_tables(tables) if tables else schema().empty_table()
