"""Shared helpers of the extagg benchmarks: models, layers, the limit, timing, peak memory, tables.

Only extagg's built-in components are benchmarked: third-party extagg plugins installed in the same
environment (e.g. ``examples/extagg-hello``) are not loaded (``EXTAGG_DISABLE_PLUGIN_AUTOLOAD=1``).
"""
from __future__ import annotations

import os

os.environ.setdefault("EXTAGG_DISABLE_PLUGIN_AUTOLOAD", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Optional, Sequence  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

import extagg  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_CLASS = 281

# The benchmark's layers (the stage outputs of each model); ``CONV_LAYER`` is one Conv2d added so that the
# ``conv`` extractor (which only fits Conv2d layers) is exercised; every other (method, layer) pair that does not fit is skipped
# (``mismatched="skip"``: ``conv`` at the block/ReLU layers, ``bn-scale``/``bn-bias`` everywhere).
LAYERS = {
    "resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "vgg16": ["features.3", "features.8", "features.15", "features.22", "features.29"],
}
CONV_LAYER = {"resnet50": "layer4.2.conv2", "vgg16": "features.28"}
GRADCAM = "pooled-scaling+sum+relu"


def sweep_layers(arch: str) -> list[str]:
    return LAYERS[arch] + [CONV_LAYER[arch]]


def all_methods() -> list[str]:
    """The whole enumerated space of the built-in components (``extagg.methods()``)."""
    return extagg.methods()


def build_model(arch: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_images(batch: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 224, 224, generator=g).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- the baselines everyone shares
def limit_pass(model: torch.nn.Module, images: torch.Tensor, layers: Sequence[str], targets: torch.Tensor):
    """The limit: one forward plus one backward to the hooked activations, no parameter gradients.

    Hooks exactly like extagg's (``output + zero probe``) and returns the activations and their gradients.
    Parameters must already have ``requires_grad=False``.
    """
    modules = dict(model.named_modules())
    probes, acts, handles = [], [], []

    def hook(module, args, output):
        p = torch.zeros_like(output, requires_grad=True)
        probes.append(p)
        acts.append(output.detach())
        return output + p

    for name in layers:
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.enable_grad():
            out = model(images)
            score = out.gather(1, targets.view(-1, 1).to(out.device)).sum()
            grads = torch.autograd.grad(score, probes)
    finally:
        for h in handles:
            h.remove()
    return acts, grads


def forward_only(model, images):
    with torch.no_grad():
        return model(images)


def forward_backward_weights(model, images, targets):
    """Ordinary training-style forward + backward that also computes every weight gradient (for context)."""
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            out = model(images)
            out.gather(1, targets.view(-1, 1).to(out.device)).sum().backward()
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


# ----------------------------------------------------------------------------- timing
def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str,
                     log=None) -> dict[str, dict]:
    """Median wall time of each callable; rounds are interleaved (A B C, B C A, ...) so that load from other
    processes on a shared machine hits every configuration alike."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
            sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
        if log:
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n}={times[n][-1]:.3f}s" for n in names))
    return {n: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts} for n, ts in times.items()}


def time_one(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> dict:
    return time_interleaved({"x": fn}, repeats, warmup, device)["x"]


# ----------------------------------------------------------------------------- peak memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], object], device: str, warmup: bool = True) -> tuple[float, bool]:
    """Peak extra memory of one call of ``fn`` in MiB, and whether the number is exact.

    CUDA: ``max_memory_allocated`` above what was allocated before the call. CPU: the process's peak RSS
    (``VmHWM``, reset just before the call) minus its RSS (``VmRSS``) just before the call; run it in a fresh
    process (:func:`peak_in_subprocess`, which also makes glibc return freed blocks to the OS at once), after
    one warm-up call. Where the peak mark cannot be reset, falls back to ``ru_maxrss`` without warm-up and
    flags the number as an upper bound if the call did not raise the process's earlier peak.
    """
    if warmup:
        fn()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, True
    if reset_peak_rss():
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) / 1024, True
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = _status_kib("VmRSS")
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - base) / 1024, after > before


def report_peak(fn: Callable[[], object], device: str) -> None:
    mib, exact = measure_peak(fn, device)
    print(f"PEAK_MIB {mib:.1f} {int(exact)}", flush=True)


def peak_in_subprocess(script: str, args: Sequence[str], python: Optional[str] = None) -> tuple[float, bool]:
    """Run ``script args`` (which must end in :func:`report_peak`) in a fresh interpreter: (MiB, exact)."""
    cmd = [python or sys.executable, os.path.join(HERE, script), *args]
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the OS when freed, so RSS
    # follows the live tensors (glibc's adaptive threshold would otherwise keep freed blocks resident)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("PEAK_MIB "):
            _, mib, exact = line.split()
            return float(mib), bool(int(exact))
    raise RuntimeError(f"no PEAK_MIB line from {cmd} (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# ----------------------------------------------------------------------------- reporting
def environment(device: str, threads: int) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "extagg": extagg.__version__,
        "device": device,
        "threads": threads,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["loadavg_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return p


def setup(args) -> dict:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    env = environment(args.device, torch.get_num_threads())
    print("# " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    return env


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)


def dump(path: Optional[str], payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
