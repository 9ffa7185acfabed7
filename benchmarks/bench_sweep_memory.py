"""Peak memory of ``extagg sweep`` against the number of images: flat, because a sweep holds one batch at a time.

Each run is a fresh subprocess that sweeps the first N images of a folder of photos (scikit-image's photos and
seeded crops of them, written once under ``--folder``), the default methods and layers with the metrics
``sensitivity``, ``randomisation(checkpoints=6)`` and ``deletion``, batch 4, and prints its own peak RSS
(``VmHWM``: model, images, everything). Memory does not depend on the machine's load, so this can run beside
other work; the wall times it prints do.

    python benchmarks/bench_sweep_memory.py --images 8 32 128 --out benchmarks/results/sweep_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys, time
from extagg.sweep import SweepConfig, sweep
n, folder, out, metrics = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(";")
t = time.perf_counter()
sweep(SweepConfig(data="folder", root=folder, limit=n, metrics=tuple(metrics), batch_size=4, run_dir=out,
                  progress=False, figures=False))
seconds = time.perf_counter() - t
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
print(f"RESULT {n} {peak:.1f} {seconds:.1f}")
"""


def make_folder(folder: Path, count: int) -> None:
    """``count`` photos: scikit-image's photos, then seeded crops of them (each a distinct image)."""
    import torch
    from PIL import Image

    from extagg.sweep.data import skimage_photo_paths

    (folder / "photos").mkdir(parents=True, exist_ok=True)
    photos = [Image.open(p).convert("RGB") for p in skimage_photo_paths()]
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        path = folder / "photos" / f"{i:05d}.png"
        if path.exists():
            continue
        im = photos[i % len(photos)]
        if i >= len(photos):
            w, h = im.size
            cw, ch = int(w * 0.7), int(h * 0.7)
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            im = im.crop((x0, y0, x0 + cw, y0 + ch))
        im.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--metrics", default="sensitivity;randomisation(checkpoints=6);deletion")
    ap.add_argument("--folder", default=None, help="where the photos are written (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="extagg-photos-"))
    make_folder(folder, max(args.images))
    rows = []
    for n in args.images:
        with tempfile.TemporaryDirectory() as run:
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(folder), run, args.metrics],
                                  capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
            if proc.returncode or line is None:
                sys.exit(f"the sweep of {n} images failed:\n{proc.stderr[-2000:]}")
            _, _, peak, seconds = line.split()
            rows.append({"images": n, "peak_mib": float(peak), "seconds": float(seconds), "load_before": load})
            print(f"{n:6d} images  peak RSS {float(peak):8.1f} MiB  ({float(seconds):.0f} s, load {load:.1f})",
                  flush=True)
    first = rows[0]["peak_mib"]
    for r in rows:
        print(f"{r['images']:6d} images: peak x {r['peak_mib'] / first:.3f} of {rows[0]['images']} images")
    if args.out:
        Path(args.out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                              "metrics": args.metrics, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
