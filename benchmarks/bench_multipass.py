"""Multi-pass modifiers: batched sample passes vs one pass per sample, and chunk size vs peak memory (ResNet18).

    .venv/bin/python benchmarks/bench_multipass.py [--device cuda] [--samples 16] [--size 112]

* ``smooth``: ``smooth(n=S):gradcam`` at layer1..layer4 in one call (chunk 0: S * N <= 32 images per pass)
  against the loop a user writes without it: S calls of ``extagg.saliency`` on the noisy copies, then the mean.
* ``ig``: ``ig(steps=S):scaling+sum`` at the input against Captum's ``IntegratedGradients`` (if installed;
  ``internal_batch_size=S``, so both run all path points in one batch).
* peak memory (fresh subprocess per setting) of ``smooth(n=S, chunk=c)`` for c = 1, 4, S: memory grows with the
  chunk, not with S.
All times are medians of interleaved rounds, printed as ratios to the one-call extagg time.
"""
from __future__ import annotations

import sys

import torch
import torchvision

import common as C
import extagg
from extagg.multipass import noise

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def registry():
    """The default registry, with the multi-pass built-ins registered directly if this install predates them."""
    reg = extagg.default_registry()
    if "smooth" in reg.modifiers:
        return reg
    import extagg_builtins.multipass as multipass

    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(extra=[multipass]))


def build(device, size, batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    return model, x


def loop_smooth(model, x, samples, targets):
    scale = 0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))[:, None, None, None]
    total = None
    for j in range(samples):
        xj = x + noise(tuple(x.shape), 0, j).to(x) * scale
        maps = extagg.saliency(model, xj, "gradcam", LAYERS, targets)
        total = {k: v for k, v in maps.items()} if total is None else {k: total[k] + maps[k] for k in total}
    return {k: v / samples for k, v in total.items()}


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--peak", default=None, help="internal: the chunk of a peak-memory child process")
    args = p.parse_args()
    if args.peak is not None:  # child process: one call, its peak reported by common.peak_in_subprocess
        model, x = build(args.device, args.size, args.batch)
        reg = registry()
        C.report_peak(lambda: extagg.saliency(model, x, f"smooth(n={args.samples},chunk={args.peak}):gradcam",
                                              LAYERS, 0, registry=reg), args.device)
        return
    env = C.setup(args)
    model, x = build(args.device, args.size, args.batch)
    s = args.samples
    targets = [0] * args.batch
    reg = registry()
    fns = {
        "extagg smooth (one call)": lambda: extagg.saliency(model, x, f"smooth(n={s}):gradcam", LAYERS, targets,
                                                          registry=reg),
        "loop of S calls": lambda: loop_smooth(model, x, s, targets),
        "extagg ig (one call)": lambda: extagg.saliency(model, x, f"ig(steps={s}):scaling+sum", "input", targets,
                                                      registry=reg),
    }
    try:
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(model)
        fns["captum IG"] = lambda: ig.attribute(x, target=targets, n_steps=s, method="riemann_trapezoid",
                                                internal_batch_size=s * args.batch).sum(1)
    except ImportError:
        print("# captum not installed: IG comparison skipped")
    times = C.time_interleaved(fns, args.repeats, args.warmup, args.device)
    base = {"smooth": times["extagg smooth (one call)"]["median_s"], "ig": times["extagg ig (one call)"]["median_s"]}
    rows = []
    for name, t in times.items():
        ref = base["ig"] if "IG" in name or " ig " in name else base["smooth"]
        rows.append([name, f"{t['median_s']:.3f}", f"{t['median_s'] / ref:.2f}"])
    print(C.table(rows, ["task", "median s", "x extagg"]))
    results = {"env": env, "samples": s, "size": args.size, "batch": args.batch, "times": times}
    if not args.no_memory:
        peaks = {}
        for chunk in (1, 4, s):
            mib, ok = C.peak_in_subprocess(__file__, ["--peak", str(chunk), "--samples", str(s), "--size",
                                                      str(args.size), "--batch", str(args.batch), "--device",
                                                      args.device])
            peaks[chunk] = mib
            print(f"peak memory smooth(n={s},chunk={chunk}): {mib:.0f} MiB" + ("" if ok else " (RSS, approximate)"))
        results["peak_mib_by_chunk"] = peaks
    C.dump(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
