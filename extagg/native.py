"""Optional fused CPU kernels for phase 2 (``native_kernels.c``), compiled on first use and loaded with ctypes.

Phase 2 of a sweep is a handful of statistics per captured tensor; in PyTorch each is several full passes over
memory (about 35 for a depthwise contribution). The two kernels here take every statistic from one read:

* :func:`side_stats`: the statistics of :mod:`extagg.statistics` (``sum``, ``sq``, ``pos``, ``neg``, ``pos_sq``,
  ``neg_sq``, ``max``, ``min``, ``min_abs``) of a tensor along one axis;
* :func:`depthwise_stats`: the contribution statistics of a depthwise :class:`~extagg.contributions.Factored`
  (``dwconv``, and real depthwise convolutions) with zero padding.

They run on float32/float64 CPU tensors (made contiguous) outside autograd, on torch's OpenMP threads
(``torch.get_num_threads()``). Anything else (CUDA, half precision, other padding modes, a tensor that requires
grad while grad mode is on) returns None and the caller takes the PyTorch path, which is also the test oracle.
Results equal that path's up to the order of summation; NaN propagates as there.

The shared library is built once per source, compiler, flags and CPU with the system C compiler (``$CC``, else
``cc``) into ``$EXTAGG_CACHE_DIR`` (default ``~/.cache/extagg``, else a per-user temp directory), and the SHA-256 of
the build is recorded beside it. A cached library is loaded only from a folder and a file that are owned by the
user, writable by no one else and not symbolic links, and only if its checksum matches the record (else it is
rebuilt, with one warning); where no cache folder passes, the build goes to a fresh private temp folder for this
process (with one warning). A build that runs past a second is announced on stderr. If no compiler is found, the
build fails, or the compiler runs past :data:`COMPILE_TIMEOUT` (20 s; it is then stopped), a warning is issued once
and the PyTorch path is used. ``EXTAGG_NATIVE=0`` turns the kernels off;
:func:`enabled` does so for a block of code in one thread. See ``docs/security.md``.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("native_kernels.c")
SIDE_NAMES = ("sum", "sq", "pos", "neg", "pos_sq", "neg_sq", "max", "min", "min_abs")
"""Order of the side statistics in the kernel's output array."""
DEPTHWISE_NAMES = ("sum", "sq", "signed.0", "signed.1", "signed_sq.0", "signed_sq.1", "extremes.0", "extremes.1",
                   "min_abs")
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3", "-fopenmp"], ["-O3"])
"""Tried in order until one builds: OpenMP shares torch's worker threads (the runtime torch loaded); without it the
kernels start POSIX threads; without ``-march=native`` where the compiler does not know it."""
_TYPES = {torch.float32: "f32", torch.float64: "f64"}
_PTRS = ctypes.c_void_p * 9  # the kernels' output-pointer arrays
_DIMS, _GEOMETRY = ctypes.c_int64 * 7, ctypes.c_int64 * 8
SERIAL_BELOW = 1 << 15
"""Entries below which a kernel runs on one thread (starting the others would cost more than it saves)."""

_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "on": os.environ.get("EXTAGG_NATIVE", "1") != "0"}
_local = threading.local()  # per-thread override set by enabled()
ANNOUNCE_AFTER = 1.0
"""Seconds a build may run before extagg says on stderr that it is compiling."""
COMPILE_TIMEOUT = 20.0
"""Seconds one run of the compiler (``$CC --version``, or one build; a build takes a few seconds) may take: a
compiler that runs longer is stopped (with everything it started), no further flag set is tried, and the PyTorch
path is used with one warning, as where no compiler is found. Set ``extagg.native.COMPILE_TIMEOUT`` before the
first call for a slower machine."""


@contextlib.contextmanager
def enabled(on: bool):
    """Use the native kernels (``on=True``, where they load) or the PyTorch path inside the block, in this thread
    only (other threads keep their own setting; ``EXTAGG_NATIVE=0`` is the process-wide switch)."""
    before = getattr(_local, "on", None)
    _local.on = bool(on)
    try:
        yield
    finally:
        _local.on = before


def _on() -> bool:
    here = getattr(_local, "on", None)
    return _state["on"] if here is None else here


def available() -> bool:
    """Whether the kernels are switched on and loaded (building them now if needed)."""
    return _on() and _library() is not None


def _uid() -> Optional[int]:
    return os.getuid() if hasattr(os, "getuid") else None


def _cache_dirs() -> list[Path]:
    """Where builds are kept: ``$EXTAGG_CACHE_DIR``, else the user's cache and then a per-user temp directory
    (for a home that cannot be written). Each is used only where :func:`distrust` finds nothing against it."""
    env = os.environ.get("EXTAGG_CACHE_DIR")
    if env:
        return [Path(env)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = _uid() if _uid() is not None else os.environ.get("USERNAME", "user")
    return [Path(base) / "extagg", Path(tempfile.gettempdir()) / f"extagg-{user}"]


def distrust(path: Path, *, directory: bool) -> str:
    """Why ``path`` must not be trusted with code ("" where it may): it must be itself a directory (or a regular
    file), not a symbolic link, owned by this user and writable by no one else."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return "not a directory" if directory else "not a regular file"
    if _uid() is None:
        return "ownership cannot be checked on this platform"
    if st.st_uid != _uid():
        return f"owned by uid {st.st_uid}, not by this user (uid {_uid()})"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def _cache_dir() -> tuple[Path, bool]:
    """The first cache folder that can be made or is trusted, with True; else a fresh private temp folder for this
    process, with False (and one warning saying why each candidate was refused)."""
    refused = []
    for directory in _cache_dirs():
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            refused.append(f"{directory}: {e.strerror or e}")
            continue
        why = distrust(directory, directory=True) or ("" if os.access(directory, os.W_OK) else "not writable")
        if not why:
            return directory, True
        refused.append(f"{directory}: {why}")
    private = Path(tempfile.mkdtemp(prefix="extagg-native-"))
    warnings.warn(f"extagg: no trusted cache folder for the native kernels ({'; '.join(refused)}); building them "
                  f"in {private} for this process only (set EXTAGG_CACHE_DIR to a folder you own that only you can "
                  "write)", RuntimeWarning, stacklevel=4)
    return private, False


_CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU architecture",
               "CPU variant", "CPU part", "isa", "uarch")


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's vendor, model and features (Linux ``/proc/cpuinfo``, x86 and
    ARM fields), or "" where unknown (then no ``-march=native`` build is made, so a shared cache never hands a
    build to a CPU that cannot run it)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.split(":")[0].strip() in _CPU_FIELDS]
        return platform.machine() + "".join(dict.fromkeys(lines)) if lines else ""
    except OSError:
        return ""


def library_names(compiler: str) -> list[tuple[list[str], str]]:
    """The flag sets to try with ``compiler``, in order, each with the file name its build is cached under."""
    source = SOURCE.read_bytes()
    version = _run([compiler, "--version"]).stdout
    cpu = _cpu_identity()
    named = []
    for flags in _FLAG_SETS:
        if "-march=native" in flags and not cpu:
            continue
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         cpu.encode()])).hexdigest()[:16]
        named.append((flags, f"extagg_native_{key}.so"))
    return named


def _digest(path: Path) -> str:
    """The SHA-256 of a file opened without following a symbolic link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _checksum_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def verify(library: Path) -> str:
    """Why the cached ``library`` must not be loaded ("" where it may): the file and the checksum recorded beside it
    at build time must both be trusted (:func:`distrust`) and the file's SHA-256 must equal the record."""
    for path in (library, _checksum_file(library)):
        why = distrust(path, directory=False)
        if why:
            return f"{path.name}: {why}"
    try:
        recorded = _checksum_file(library).read_text().strip()
        actual = _digest(library)
    except OSError as e:
        return f"{library.name}: {e.strerror or e}"
    return "" if recorded == actual else f"{library.name}: checksum {actual[:12]}... differs from the recorded one"


@contextlib.contextmanager
def _announced(folder: Path):
    """Say on stderr that the kernels are being compiled, once the build has run past :data:`ANNOUNCE_AFTER`."""
    timer = threading.Timer(ANNOUNCE_AFTER, lambda: print(
        f"extagg: compiling the native kernels once (cached in {folder})...", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """``cmd`` with its output captured, stopped with everything it started (its own process group) once it has run
    for :data:`COMPILE_TIMEOUT` seconds: then a RuntimeError that says so."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=hasattr(os, "killpg"))
    try:
        out, err = proc.communicate(timeout=COMPILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, 9)  # the compiler's own children (cc1, as, ld) too
            else:
                proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        raise RuntimeError(f"the C compiler did not finish within {COMPILE_TIMEOUT:g} s ({cmd[0]}; see "
                           "extagg.native.COMPILE_TIMEOUT)") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _compile(compiler: str, flags: list[str], target: Path) -> str:
    """Build into ``target`` with its checksum beside it; the compiler's complaint, or "" on success."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *flags, "-std=gnu11", "-fPIC", "-shared", "-pthread", "-o", tmp, str(SOURCE), "-lm"]
    try:
        with _announced(target.parent):
            done = _run(cmd)
        if done.returncode != 0:
            return f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}"
        os.chmod(tmp, 0o755)
        sum_fd, sum_tmp = tempfile.mkstemp(suffix=".sha256", dir=target.parent)
        with os.fdopen(sum_fd, "w") as f:
            f.write(_digest(Path(tmp)) + "\n")
        os.replace(sum_tmp, _checksum_file(target))  # atomic: concurrent builders race harmlessly
        os.replace(tmp, target)
        return ""
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(compiler: str) -> tuple[Path, bool]:
    """A verified library for ``compiler`` (cached, or built now) and whether it lives in a lasting cache."""
    folder, lasting = _cache_dir()
    errors = []
    try:
        for flags, name in library_names(compiler):
            target = folder / name
            if lasting and os.path.lexists(target):
                why = verify(target)
                if not why:
                    return target, True
                warnings.warn(f"extagg: the cached native kernels failed verification ({folder}/{why}); rebuilding "
                              "them", RuntimeWarning, stacklevel=4)
            failed = _compile(compiler, flags, target)  # a compiler that times out raises: no other flag set
            if not failed:
                return target, lasting
            errors.append(failed)
    except BaseException:
        if not lasting:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if not lasting:
        shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError("; ".join(errors) or "no flag set to build with")


def _load(compiler: str) -> ctypes.CDLL:
    """Build or find the library, check it once more just before loading it, load it and declare its functions."""
    path, lasting = _build(compiler)
    try:
        why = verify(path)
        if why:
            raise RuntimeError(f"the native kernels changed between build and load ({why})")
        lib = ctypes.CDLL(str(path))
    finally:
        if not lasting:
            shutil.rmtree(path.parent, ignore_errors=True)  # loaded code stays mapped
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in _TYPES.values():
        side = getattr(lib, "side_stats_" + suffix)
        side.argtypes = [vp, vp, vp, i64, i64, i64, i64, ctypes.POINTER(vp), ctypes.c_int]
        dw = getattr(lib, "depthwise_stats_" + suffix)
        dw.argtypes = [vp, vp, ctypes.POINTER(i64), ctypes.POINTER(i64), ctypes.POINTER(vp), ctypes.c_int]
        side.restype = dw.restype = ctypes.c_int
    return lib


def _library() -> Optional[ctypes.CDLL]:
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if not _state["tried"]:
            try:
                compiler = shutil.which(os.environ.get("CC", "cc"))
                if compiler is None:
                    raise RuntimeError(f"no C compiler found (looked for {os.environ.get('CC', 'cc')!r}; set $CC)")
                _state["lib"] = _load(compiler)
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                warnings.warn(f"extagg: native kernels unavailable ({e}); using the PyTorch path "
                              "(set EXTAGG_NATIVE=0 to silence this)", RuntimeWarning, stacklevel=3)
            _state["tried"] = True
    return _state["lib"]


def _usable(*tensors: torch.Tensor) -> Optional[ctypes.CDLL]:
    if not _on():
        return None
    dtype = tensors[0].dtype
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != dtype or dtype not in _TYPES \
                or (t.requires_grad and torch.is_grad_enabled()):
            return None
    return _library()


def _outputs(names, wanted, shape, dtype):
    """One (k, *shape) block for the ``wanted`` of ``names`` (in order), and the kernel's pointer array (NULL for
    the others)."""
    block = torch.empty((len(wanted),) + tuple(shape), dtype=dtype)
    step, base, k = block[0].numel() * block.element_size(), block.data_ptr(), 0
    ptrs, views = [], {}
    for name in names:
        if name in wanted:
            ptrs.append(base + k * step)
            views[name] = block[k]
            k += 1
        else:
            ptrs.append(None)
    return views, _PTRS(*ptrs)


def _threads(work: int) -> int:
    return 1 if work < SERIAL_BELOW else torch.get_num_threads()


def side_stats(v: torch.Tensor, shape, dim: int, names, *, other: Optional[torch.Tensor] = None,
               scale: Optional[torch.Tensor] = None) -> Optional[dict]:
    """The side statistics ``names`` of a tensor of shape ``shape`` along ``dim``, each of shape ``shape`` without
    ``dim``; None where the kernels do not apply (the caller then computes them in PyTorch).

    The tensor is ``v.reshape(shape)``, or, with ``other`` (of ``shape``) and/or ``scale`` (of ``shape[:dim + 1]``),
    the product ``v * other * scale[..., None...]`` without forming it; there ``v`` may lack axes 1..dim-1 of
    ``shape`` (broadcast over targets: ``v`` (N, C, h, w) for ``shape`` (N, T, C, h, w)).
    """
    shape = tuple(shape)
    lib = _usable(*[t for t in (v, other, scale) if t is not None])
    if lib is None or v.numel() == 0 or math.prod(shape) == 0:
        return None
    v, other, scale = [None if t is None else t.contiguous() for t in (v, other, scale)]
    unknown = set(names) - set(SIDE_NAMES)
    if unknown:
        raise KeyError(f"unknown side statistics {sorted(unknown)}; known: {SIDE_NAMES}")
    outer = math.prod(shape[:dim])
    size = math.prod(shape)
    inner = size // (outer * shape[dim])
    repeat = size // v.numel()
    if v.numel() * repeat != size or outer % repeat or (other is not None and other.numel() != size) \
            or (scale is not None and scale.numel() != outer * shape[dim]):
        raise ValueError(f"side_stats: shapes do not fit {shape}: v {tuple(v.shape)}, "
                         f"other {None if other is None else tuple(other.shape)}, "
                         f"scale {None if scale is None else tuple(scale.shape)}")
    views, ptrs = _outputs(SIDE_NAMES, set(names), shape[:dim] + shape[dim + 1:], v.dtype)
    getattr(lib, "side_stats_" + _TYPES[v.dtype])(v.data_ptr(), other.data_ptr() if other is not None else None,
                                                  scale.data_ptr() if scale is not None else None, outer, repeat,
                                                  shape[dim], inner, ptrs, _threads(size))
    return views


def depthwise_stats(g: torch.Tensor, x: torch.Tensor, geometry) -> Optional[dict]:
    """Every statistic of the depthwise contribution ``g`` (N, T, C, h, w) against the patches of ``x``
    (N, C, H, W) read with ``geometry`` (:class:`~extagg.contributions.PatchGeometry` with ``groups == C``),
    keyed by :data:`DEPTHWISE_NAMES`, each (N, T, h, w); None where the kernels do not apply."""
    lib = _usable(g, x)
    if lib is None or geometry.padding_mode != "zeros" or g.numel() == 0 or x.numel() == 0:
        return None
    n, t, c, h, w = g.shape
    if x.shape[:2] != (n, c) or geometry.groups != c:
        return None
    g, x = g.contiguous(), x.contiguous()
    left, _, top, _ = geometry.padding
    dims = _DIMS(n, t, c, h, w, x.shape[2], x.shape[3])
    geo = _GEOMETRY(*geometry.kernel, *geometry.stride, top, left, *geometry.dilation)
    views, ptrs = _outputs(DEPTHWISE_NAMES, DEPTHWISE_NAMES, (n, t, h, w), g.dtype)
    failed = getattr(lib, "depthwise_stats_" + _TYPES[g.dtype])(g.data_ptr(), x.data_ptr(), dims, geo, ptrs,
                                                                _threads(g.numel() * geometry.kernel[0]
                                                                         * geometry.kernel[1]))
    if failed:
        raise MemoryError("extagg native depthwise_stats: could not allocate its row buffers")
    return views
