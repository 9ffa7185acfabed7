"""extagg's metrics against Quantus on the same maps: 20 methods x 4 ResNet50 layers x 5 metrics.

    .venv/bin/python benchmarks/bench_quantus.py --json benchmarks/results/quantus_cpu.json   # the published run
    EXTAGG_DISABLE_PLUGIN_AUTOLOAD=0 .venv/bin/python benchmarks/bench_quantus.py \\
        --metrics sparseness --methods 2 --layers layer4                                     # a smoke run

The model is a ResNet50 with random weights (seeded) that reads grey images (its input's one channel repeated
to three: Quantus 0.6.0's ROAD fails on three-channel inputs with one-channel maps), the images ``--images``
random (seeded) grey images of ``--side`` pixels, the explained classes the model's predictions, the maps
extagg's (bilinearly resized to the input). For each metric, in one run, interleaved:

* **extagg**: one :func:`extagg.evaluation.evaluate` call scoring every (method, layer) with that metric (its
  own saliency pass included);
* **Quantus**: the Quantus metric called once per (method, layer) with extagg's maps as ``a_batch`` and
  :func:`extagg.interop.quantus_explain_func` of that (method, layer) as ``explain_func`` (random-logit and
  max-sensitivity make new maps with it). Quantus gets the maps for free: they are computed once, by one
  ``extagg.saliency`` call, before the timing, and that time is printed apart;

then every metric in one ``evaluate`` call (what a sweep does: one shared saliency pass for all metrics). Printed:
seconds per side, the wall-time ratio Quantus / extagg per metric and in total (extagg's time includes making its
maps; the second ratio adds the maps' time to Quantus's, as a Quantus user must make them too: the headline is
the total of that ratio, "all, one evaluate call"), and the check of the numbers:
the largest relative difference per image for the deterministic metrics (pixel-flipping: the trapezoid area of
Quantus's curve, as extagg reports it; sparseness), which must be within ``--rtol``, and the difference of the
batch means for those that draw random numbers (ROAD's imputation noise, random-logit's other class,
max-sensitivity's perturbations: each side draws its own; tests/test_quantus_*.py check them with the draws
fixed). The metrics' costly parameters are lowered alike on both sides (``--features-in-step``, ``--road-step``,
``--nr-samples``); ``--call NAME=TEXT`` replaces extagg's metric call (e.g. ``random-logit=random-logit``).

Only extagg's built-in components are loaded (see common.py); a metric that is not registered is refused with
the registered names before any timing.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import common as C
import extagg
from extagg.evaluation import Sample, evaluate
from extagg.interop import quantus_explain_func

CANDIDATES = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "linear-approx", "normgrad",
              "gradient-sum", "bias+abs+sum", "bias+norm", "bias+max", "scaling+norm", "scaling+abs+sum",
              "scaling+relu+sum", "scaling+max", "pooled-scaling+sum", "conv1x1+norm", "conv1x1+sum", "conv3x3+norm",
              "conv3x3+sum", "bias+relu+norm", "scaling+relu+norm", "pooled-scaling+abs+sum", "conv1x1+max"]
METRICS = ("pixel-flipping", "road", "sparseness", "random-logit", "max-sensitivity")


class GreyResNet50(torch.nn.Module):
    """ResNet50 (random weights, seeded) on one-channel images: the channel repeated to three."""

    def __init__(self, device: str):
        super().__init__()
        self.net = C.build_model("resnet50", device)

    def forward(self, x):
        return self.net(x.expand(-1, 3, -1, -1))


def specs(args) -> dict:
    """{metric: (extagg call, Quantus class, Quantus kwargs, deterministic)}."""
    pcts = list(range(args.road_start, 100, args.road_step))
    return {
        "pixel-flipping": (f"pixel-flipping(features_in_step={args.features_in_step})", "PixelFlipping",
                           {"features_in_step": args.features_in_step}, True),
        "road": (f"road(percentage_start={args.road_start},percentage_step={args.road_step})", "ROAD",
                 {"percentages": pcts}, False),
        "sparseness": ("sparseness", "Sparseness", {}, True),
        "random-logit": ("random-logit(flatten=true)", "RandomLogit", {"num_classes": 1000}, False),
        "max-sensitivity": (f"max-sensitivity(nr_samples={args.nr_samples})", "MaxSensitivity",
                            {"nr_samples": args.nr_samples}, False),
    }


def has_ties(maps: np.ndarray) -> bool:
    """Whether some image's map has equal values (an upsampled coarse map does): their flip order is arbitrary."""
    flat = maps.reshape(maps.shape[0], -1)
    return any(np.unique(row).size < row.size for row in flat)


def per_image(name: str, out) -> np.ndarray:
    """Quantus's output as one number per image (pixel-flipping: the trapezoid area of the curve), or, for
    ROAD (which keeps the mean over images per percentage), the mean over percentages as a one-element array."""
    if isinstance(out, dict):
        return np.array([np.mean([float(v) for v in out.values()])])
    values = np.asarray(out, dtype=np.float64)
    return np.trapezoid(values, axis=1) if name == "pixel-flipping" else values


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--methods", type=int, default=20, help="the first N of the candidate methods that fit")
    p.add_argument("--layers", nargs="+", default=C.LAYERS["resnet50"], help="ResNet50 layers (layer1 .. layer4)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--features-in-step", type=int, default=None, help="pixel-flipping (default: H*W/8, 8 steps)")
    p.add_argument("--road-start", type=int, default=25)
    p.add_argument("--road-step", type=int, default=25)
    p.add_argument("--nr-samples", type=int, default=5, help="max-sensitivity's perturbed copies")
    p.add_argument("--call", action="append", default=[], metavar="NAME=TEXT", help="extagg's call for NAME")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--quantus-stride", type=int, default=1,
                   help="time Quantus on every k-th (method, layer) pair (a fixed sample) and scale its time by "
                        "pairs / sample; the numbers are checked on the sample (default 1: every pair)")
    args = p.parse_args()
    args.features_in_step = args.features_in_step or args.side * args.side // 8
    args.layers = [f"net.{layer}" for layer in args.layers]
    env = C.setup(args)
    import quantus

    registry = extagg.default_registry()
    table = specs(args)
    for item in args.call:
        name, _, text = item.partition("=")
        table[name] = (text, *table[name][1:])
    missing = [table[m][0] for m in args.metrics if table[m][0].split("(")[0] not in registry.metrics]
    if missing:
        raise SystemExit(f"not registered: {missing}; registered metrics: {sorted(registry.metrics)}")

    model = GreyResNet50(args.device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 1, args.side, args.side, generator=g).to(args.device)
    with torch.no_grad():
        y = model(x).argmax(1)
    from extagg.evaluation.driver import fitting_pairs

    fit = set(fitting_pairs(registry, model, CANDIDATES, args.layers))
    methods = [m for m in CANDIDATES if all((m, layer) in fit for layer in args.layers)][:args.methods]
    pairs = [(m, layer) for m in methods for layer in args.layers]
    samples = [Sample(image=x[i], image_id=str(i)) for i in range(args.images)]
    print(f"# {len(methods)} methods x {len(args.layers)} layers = {len(pairs)} maps per image, {args.images} "
          f"image(s) of {args.side} px; metrics: {', '.join(table[m][0] for m in args.metrics)}", flush=True)

    start = time.perf_counter()
    maps = extagg.saliency(model, x, methods, args.layers, targets=y, resize=True)
    C.sync(args.device)
    t_maps = time.perf_counter() - start
    a_batch = {(m, layer): maps[m, layer].detach().cpu().numpy() for m, layer in pairs}
    x_np, y_np = x.detach().cpu().numpy(), y.cpu().numpy()
    explain = {(m, layer): quantus_explain_func(m, layer) for m, layer in pairs}
    device = "cuda" if args.device.startswith("cuda") else "cpu"

    rows, results = [], {}
    total_ours = total_theirs = 0.0
    for name in args.metrics:
        call, cls, kwargs, exact = table[name]
        start = time.perf_counter()
        ours = evaluate(model, samples, methods, args.layers, [call], batch_size=args.images)
        C.sync(args.device)
        t_ours = time.perf_counter() - start
        theirs = {}
        sample = pairs[::max(1, args.quantus_stride)]
        start = time.perf_counter()
        for key in sample:
            metric = getattr(quantus, cls)(disable_warnings=True, display_progressbar=False, **kwargs)
            theirs[key] = metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_batch[key],
                                 explain_func=explain[key], device=device)
        t_theirs = (time.perf_counter() - start) * len(pairs) / len(sample)
        diffs, tied = [], 0
        for m, layer in sample:
            a = np.asarray(ours.per_image(metric=call, method=m, layer=layer), dtype=np.float64)
            b = per_image(name, theirs[m, layer])
            if exact and name == "pixel-flipping" and has_ties(a_batch[m, layer]):
                tied += 1  # equal values flip in index order in extagg, in NumPy's unstable argsort order in Quantus
                continue
            if exact:
                diffs.append(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))))
            else:
                diffs.append(float(abs(np.nanmean(a) - np.nanmean(b))))
        worst = max(diffs) if diffs else float("nan")
        check = (("equal" if worst <= args.rtol else "DIFFERENT") if diffs else "ties: see tests") if exact \
            else "stochastic"
        rows.append([name, t_ours, t_theirs, t_theirs / t_ours, (t_theirs + t_maps) / t_ours, f"{worst:.2e}", check])
        results[name] = {"call": call, "extagg_s": t_ours, "quantus_s": t_theirs, "ratio": t_theirs / t_ours,
                         "max_rel_diff" if exact else "max_mean_diff": worst, "check": check,
                         "pairs_compared": len(sample) - tied}
        total_ours, total_theirs = total_ours + t_ours, total_theirs + t_theirs
        print(f"  {name}: extagg {t_ours:.2f} s, Quantus {t_theirs:.2f} s ({check}, {worst:.2e}"
              + (f"; {tied} of {len(sample)} pairs with tied map values not compared" if tied else "") + ")",
              flush=True)

    start = time.perf_counter()
    evaluate(model, samples, methods, args.layers, [table[m][0] for m in args.metrics], batch_size=args.images)
    C.sync(args.device)
    t_all = time.perf_counter() - start
    rows.append(["all, one evaluate call", t_all, total_theirs, total_theirs / t_all, (total_theirs + t_maps) / t_all,
                 "", ""])
    rows.append(["(sum of the per-metric calls)", total_ours, total_theirs, total_theirs / total_ours,
                 (total_theirs + t_maps) / total_ours, "", ""])
    print(C.table(rows, ["metric", "extagg s", "Quantus s", "Quantus / extagg", "(Quantus + maps) / extagg",
                         "difference", "numbers"]))
    print(f"# Quantus's a_batch: one extagg.saliency call for all {len(pairs)} maps, {t_maps:.2f} s (not counted)")
    if args.quantus_stride > 1:
        print(f"# Quantus timed on every {args.quantus_stride}th pair ({len(pairs[::args.quantus_stride])} of "
              f"{len(pairs)}) and scaled x {len(pairs) / len(pairs[::args.quantus_stride]):.2f}; numbers checked "
              "on those pairs")
    C.dump(args.json, {"env": env, "methods": methods, "layers": args.layers, "images": args.images,
                       "side": args.side, "maps_s": t_maps, "quantus_stride": args.quantus_stride, "metrics": results, "all_in_one_s": t_all,
                       "quantus_total_s": total_theirs, "ratio_total": total_theirs / t_all,
                       "ratio_total_with_maps": (total_theirs + t_maps) / t_all})
    if any(r["check"] == "DIFFERENT" for r in results.values()):
        raise SystemExit("a deterministic metric differs from Quantus beyond --rtol")


if __name__ == "__main__":
    main()
