"""The run directory: the configuration record and the committed batches of finished units.

Finished units are written per batch as columnar files under ``units/`` (one Parquet file per committed batch,
see :mod:`.columnar`): :meth:`RunStore.append` collects a batch's units in memory and :meth:`RunStore.commit`
makes them durable at once (temporary file, fsync, rename into place, fsync of the folder), so a batch counts
whole or not at all: a kill before the rename leaves a temporary file that is ignored (and removed by the next
writer) and the batch is computed again. A unit committed twice counts once (the first).
A run directory from an earlier version holds ``units.jsonl`` (one JSON object per unit, appended line by line);
it is read as it is (a torn last line ignored) and resumed: new batches go to ``units/``, the old log is never
written again.
``config.json`` holds the configuration fields that change the numbers, the resolved plan, the model's
fingerprint and preprocessing, and the versions; a run directory refuses a different configuration, plan or model.

Trust: the writer holds an exclusive lock on ``.lock`` (``fcntl.flock``, released when the run ends or the process
dies) for the whole run, so a second sweep on the same directory is refused with the holder's pid and host;
``config.json`` is created exclusively (a link that fails if the file exists); every file is replaced through a
unique temporary file in the same directory. The run directory and its ``units/`` folder must be real
directories (not symbolic links) owned by the user and not writable by group or others; the files in them must be
regular files owned by the user, opened without following symbolic links. A malformed ``config.json``,
``units.jsonl`` or batch file is an ``InputError`` naming the file (and the line).
"""
from __future__ import annotations

import errno
import json
import math
import os
import socket
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional

from ..errors import InputError
from . import columnar

Unit = tuple[str, str, str, str]  # method, layer, metric, image
LOG = "units.jsonl"
"""The unit log of earlier versions (read, never written)."""
CONFIG = "config.json"
LOCK = ".lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_directory(path: Path) -> None:
    """Refuse a run directory that is a symbolic link, not a directory, not the user's, or writable by others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"run directory {str(path)!r} is a symbolic link; give the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"run directory {str(path)!r} exists and is not a directory")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise InputError(f"run directory {str(path)!r} belongs to user id {st.st_uid}, not to you "
                         f"({os.geteuid()}); use a directory of your own")
    if st.st_mode & 0o022:
        raise InputError(f"run directory {str(path)!r} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"`chmod go-w` it or use another directory")


def check_file(path: Path) -> bool:
    """True if ``path`` is a regular file of the user's; False if absent; InputError for anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{str(path)!r} is a symbolic link; the sweep neither reads nor writes through one")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{str(path)!r} is not a regular file")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise InputError(f"{str(path)!r} belongs to user id {st.st_uid}, not to you ({os.geteuid()})")
    return True


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _temporary(path: Path, text: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file in the same directory and a rename (never
    a half-written file, never through a symbolic link: one at ``path`` is refused)."""
    path = Path(path)
    check_file(path)
    tmp = _temporary(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists (atomically: a link of a complete temporary file); False if
    it already existed."""
    tmp = _temporary(path, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


class RunStore:
    """The run directory of one sweep (only the writer, rank 0, writes; it alone takes the lock)."""

    def __init__(self, run_dir, writer: bool = True):
        self.dir = Path(run_dir)
        self.writer = writer
        self.log = self.dir / LOG
        self.units = self.dir / columnar.UNITS
        self._lock: Optional[int] = None
        self._pending: list = []

    # ----------------------------------------------------------------- the lock
    def lock(self) -> None:
        """Create the run directory if needed and take its exclusive lock for this process (until :meth:`close`
        or the process ends); InputError naming the holder's pid and host if another sweep holds it."""
        if not self.writer or self._lock is not None:
            return
        check_directory(self.dir)
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_directory(self.dir)
        path = self.dir / LOCK
        check_file(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError(f"cannot lock {str(path)!r}: {exc}") from exc
                raise InputError(f"run directory {str(self.dir)!r} is in use by another sweep "
                                 f"({holder or 'holder not yet recorded'}); wait for it to end or choose another "
                                 "run directory (-o)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._lock = fd

    def close(self) -> None:
        """Release the lock (the lock file stays, empty)."""
        if self._lock is not None:
            fd, self._lock = self._lock, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing releases the flock

    # ----------------------------------------------------------------- configuration
    def check_config(self, record: dict, defaults: Optional[dict] = None) -> bool:
        """Create ``config.json`` or check it against ``record`` (``config``, ``plan`` and the ``model``
        fingerprint and preprocessing must match exactly; other versions only warn). The writer takes the lock
        first. A configuration field missing from an older ``config.json`` counts as its value in ``defaults``
        (fields added since keep resuming old runs). Returns True if the run directory already existed with this
        configuration."""
        path = self.dir / CONFIG
        if self.writer:
            columnar.pyarrow()  # before any work: the units are stored as Parquet
        check_directory(self.dir)
        self.lock()
        if not check_file(path):
            if check_file(self.log) or self._batches():
                found = LOG if check_file(self.log) else f"{columnar.UNITS}/"
                raise InputError(f"{str(self.dir)!r} holds {found} but no {CONFIG}; use a new run directory")
            if not self.writer or create_exclusive(path, json.dumps(record, indent=1, sort_keys=False) + "\n"):
                return False
        old = _read_config(path)
        for section in ("config", "plan"):
            a, b = old[section], record[section]
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
        self._check_model(old.get("model"), record.get("model"))
        if old.get("versions") != record.get("versions"):
            warnings.warn(f"resuming {str(self.dir)!r} with different versions: {old.get('versions')} -> "
                          f"{record.get('versions')}", stacklevel=2)
        return True

    def _check_model(self, old: Optional[dict], new: Optional[dict]) -> None:
        if new is None:
            return
        if old is None:
            warnings.warn(f"{str(self.dir / CONFIG)!r} records no model fingerprint (an older run); resuming without "
                          "checking that the model is the same", stacklevel=3)
            return
        for key, what in (("fingerprint", "model weights (fingerprint)"), ("preprocess", "preprocessing")):
            if old.get(key) != new.get(key):
                raise InputError(f"run directory {str(self.dir)!r} was computed with other {what}: "
                                 f"{_short(old.get(key))}, now {_short(new.get(key))}; resume it with the same model, "
                                 "or choose a new run directory (-o)")

    # ----------------------------------------------------------------- the units
    def load(self) -> dict[Unit, list]:
        """Finished units and their values: the old ``units.jsonl`` if there is one, then every committed batch
        in commit order (the first record of a unit wins). The writer removes leftover temporary files."""
        done: dict[Unit, list] = {}
        if check_file(self.log):
            data = _read(self.log)
            end = data.rfind(b"\n") + 1  # a torn last line (no newline) is not a unit
            for number, line in enumerate(data[:end].split(b"\n"), 1):
                if line.strip():
                    unit, values = _unit_record(line, self.log, number)
                    done.setdefault(unit, values)
        if not os.path.lexists(self.units):
            return done
        columnar.pyarrow()
        check_directory(self.units)
        if self.writer:
            columnar.remove_leftovers(self.units)
        for path in self._batches():
            for unit, values in columnar.units_of(columnar.read_batch(path)):
                done.setdefault(unit, values)
        return done

    def _batches(self) -> list[Path]:
        """The committed batch files, each checked (regular, the user's); the folder checked first."""
        if not os.path.lexists(self.units):
            return []
        check_directory(self.units)
        paths = columnar.batch_files(self.units)
        for path in paths:
            check_file(path)
        return paths

    def table(self):
        """Every committed batch as one pyarrow table (columns of :data:`.columnar.COLUMNS`; the old log not
        included), for reductions that stay columnar at scale."""
        self._batches()
        return columnar.read_table(self.units)

    def append(self, units: Iterable[tuple[Unit, list]]) -> None:
        """Add finished units to the batch being collected (nothing is durable until :meth:`commit`)."""
        if self.writer:
            self._pending.extend(units)

    def commit(self) -> Optional[Path]:
        """Write the collected units as one batch file, durably (see :mod:`.columnar`); the file, or None if
        there was nothing to write."""
        units, self._pending = self._pending, []
        if not units or not self.writer:
            return None
        table = columnar.to_table(units)  # before touching the directory: pyarrow missing fails here
        check_directory(self.dir)
        check_directory(self.units)
        self.units.mkdir(mode=0o755, exist_ok=True)
        check_directory(self.units)
        return columnar.write_batch(self.units, table)


def _read_config(path: Path) -> dict:
    """``config.json`` checked: a JSON object with ``config`` and ``plan`` objects (``model``, if present, too)."""
    try:
        text = _read(path).decode("utf-8")
        old = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r} line {exc.lineno} is not valid JSON ({exc.msg}); restore it or use a new "
                         "run directory") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}; use a new run directory") from exc
    if not isinstance(old, dict):
        raise InputError(f"{str(path)!r} holds a JSON {type(old).__name__}, not a sweep record (an object with "
                         "'config' and 'plan'); restore it or use a new run directory")
    for section in ("config", "plan", "model"):
        if (section != "model" or section in old) and not isinstance(old.get(section), dict):
            raise InputError(f"{str(path)!r} field {section!r} is {_short(old.get(section))}, not an object; restore "
                             "it or use a new run directory")
    return old


def _unit_record(line: bytes, path: Path, number: int) -> tuple[Unit, list]:
    def bad(why: str):
        return InputError(f"{str(path)!r} line {number} is not a unit record ({why}); remove that line or use a new "
                          "run directory")

    try:
        d = json.loads(line.decode("utf-8"))
    except ValueError as exc:
        raise bad(str(exc)) from exc
    if not isinstance(d, dict):
        raise bad(f"a JSON {type(d).__name__}, not an object")
    for key in ("method", "layer", "metric", "image"):
        if not isinstance(d.get(key), str):
            raise bad(f"{key!r} is {_short(d.get(key))}, not a string")
    values = d.get("values")
    if not isinstance(values, list):
        raise bad(f"'values' is {_short(values)}, not a list of [subset, measure, class, value]")
    out = []
    for item in values:
        if not isinstance(item, list) or len(item) != 4:
            raise bad(f"value {_short(item)} is not [subset, measure, class, value]")
        s, m, c, v = item
        if not isinstance(s, str) or not isinstance(m, str):
            raise bad(f"value {_short(item)} needs a string subset and measure")
        if c is not None and (isinstance(c, bool) or not isinstance(c, int)):
            raise bad(f"value {_short(item)} has class {_short(c)}, not an integer or null")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"value {_short(item)} has value {_short(v)}, not a number or null")
        out.append((s, m, c, math.nan if v is None else float(v)))
    return (d["method"], d["layer"], d["metric"], d["image"]), out


def _short(v: Optional[object]) -> str:
    text = json.dumps(v, default=repr)
    return text if len(text) < 120 else text[:117] + "..."
