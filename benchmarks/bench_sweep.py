"""The whole built-in design space at every layer vs the limit, the reference way, and peak memory.

    .venv/bin/python benchmarks/bench_sweep.py                      # CPU, ResNet50 + VGG16, batch 1 and 8
    .venv/bin/python benchmarks/bench_sweep.py --device cuda        # the same on a GPU
    .venv/bin/python benchmarks/bench_sweep.py --archs resnet50 --batches 1 --repeats 9

Per (model, batch), timed interleaved (median of ``--repeats``):

* ``forward``: one forward, no autograd (context);
* ``limit``: one forward + one backward to the hooked activations, no parameter gradients (hooks as extagg's);
* ``fwd+bwd(weights)``: an ordinary forward + backward that also computes every weight gradient (context);
* ``extagg all``: ``extagg.saliency`` of every method of ``extagg.methods()`` at every layer (one call);
* ``extagg core subset``: the subset the performance targets name as the least a sweep must cover, {bias, scaling, conv1x1,
  conv3x3, conv} x {sum, max, norm} with no pre-filter, relu or abs (45 methods), at the same layers (one call);
* ``extagg all but dwconv``: the whole space without the depthwise extractor (192 methods; one call);
* ``extagg gradcam``: Grad-CAM alone at the benchmark's layers (one call).

The reference way (one forward + backward per method, factored contributions materialised in chunks,
``closed_forms=False``) is timed once per representative method of each extractor at batch 1 and
extrapolated to the whole grid (see ``--reference``); its lower bound ``passes x limit`` is exact.
Peak memory: one fresh subprocess per configuration (see ``common.measure_peak``).
"""
from __future__ import annotations

import statistics
import sys

import torch

import common as C
import extagg

# One representative per extractor for the reference way: a pre-filter and the norm make it one of the
# dearer compositions of its extractor on the materialised path (a relu pass, squares, a reduction).
CORE_SUBSET = [f"{e}{pre}+{a}" for e in ("bias", "scaling", "conv1x1", "conv3x3", "conv")
              for pre in ("", "+relu", "+abs") for a in ("sum", "max", "norm")]

REFERENCE_REPS = {
    "bias": "bias+relu+norm", "scaling": "scaling+relu+norm", "pooled-scaling": "pooled-scaling+relu+norm",
    "conv1x1": "conv1x1+relu+norm", "conv3x3": "conv3x3+relu+norm", "dwconv": "dwconv+relu+norm",
    "conv": "conv+relu+norm", "bn-scale": "bn-scale+relu+norm", "bn-bias": "bn-bias+relu+norm",
}


def configs(arch: str, batch: int, device: str):
    model = C.build_model(arch, device)
    images = C.make_images(batch, device)
    targets = torch.full((batch,), C.TARGET_CLASS, dtype=torch.long)
    layers = C.sweep_layers(arch)
    methods = C.all_methods()
    return model, images, targets, layers, methods, {
        "forward": lambda: C.forward_only(model, images),
        "limit": lambda: C.limit_pass(model, images, layers, targets),
        "fwd+bwd(weights)": lambda: C.forward_backward_weights(model, images, targets),
        "extagg all": lambda: extagg.saliency(model, images, methods, layers, targets=targets, mismatched="skip"),
        "extagg all but dwconv": lambda: extagg.saliency(model, images, [m for m in methods if not m.startswith("dwconv")],
                                                         layers, targets=targets, mismatched="skip"),
        "extagg core subset": lambda: extagg.saliency(model, images, CORE_SUBSET, layers, targets=targets,
                                                     mismatched="skip"),
        "extagg gradcam": lambda: extagg.saliency(model, images, C.GRADCAM, C.LAYERS[arch], targets=targets),
    }


def grid(model, methods, layers) -> dict[str, list[str]]:
    """The (method, layer) pairs that fit, grouped by extractor: {extractor: [methods]} and the pair count."""
    reg = extagg.default_registry()
    modules = dict(model.named_modules())
    by_ext: dict[str, list[str]] = {}
    for m in methods:
        meth = reg.parse(m)
        spec = reg.extractors[meth.extractor.name]
        fits = [l for l in layers if spec.applies_to is None or isinstance(modules[l], spec.applies_to)]
        if fits:
            by_ext.setdefault(meth.extractor.name, []).append(m)
    return by_ext


def reference(model, images, targets, layers, methods, device, log) -> dict:
    """Time one representative method per extractor the reference way, once; extrapolate per extractor."""
    by_ext = grid(model, methods, layers)
    rows = {}
    for ext, ms in by_ext.items():
        rep = REFERENCE_REPS.get(ext, ms[0])
        fn = lambda rep=rep: extagg.saliency(model, images, [rep], layers, targets=targets,  # noqa: E731
                                             mismatched="skip", closed_forms=False)
        t = C.time_one(fn, repeats=1, warmup=0, device=device)["median_s"]
        rows[ext] = {"representative": rep, "measured_s": t, "methods": len(ms), "extrapolated_s": t * len(ms)}
        log(f"  reference {rep}: {t:.3f}s x {len(ms)} methods of {ext}")
    return rows


HIDDEN = "internal: measure one configuration's peak memory in this process"


def run_peak(args) -> None:
    model, images, targets, layers, methods, fns = configs(args.arch, args.batch, args.device)
    C.report_peak(fns[args.peak], args.device)


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "vgg16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--reference", choices=["batch1", "none", "all"], default="batch1",
                   help="time the reference way at batch 1 only (default), never, or at every batch")
    p.add_argument("--peak", default=None, help=HIDDEN)
    p.add_argument("--arch", default=None, help=HIDDEN)
    p.add_argument("--batch", type=int, default=None, help=HIDDEN)
    args = p.parse_args(argv)
    if args.peak:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        return run_peak(args)
    env = C.setup(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = {"env": env, "runs": []}
    for arch in args.archs:
        for batch in args.batches:
            log(f"== {arch} batch {batch}")
            model, images, targets, layers, methods, fns = configs(arch, batch, args.device)
            n_maps = len(extagg.saliency(model, images, methods, layers, targets=targets, mismatched="skip"))
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 2)
            timing = C.time_interleaved(fns, repeats, args.warmup, args.device, log=log)
            run = {"arch": arch, "batch": batch, "layers": layers, "methods": len(methods), "maps": n_maps,
                   "passes_reference": len([m for ms in grid(model, methods, layers).values() for m in ms]),
                   "timing": timing, "peak": {}, "reference": None}
            if args.reference == "all" or (args.reference == "batch1" and batch == 1):
                run["reference"] = reference(model, images, targets, layers, methods, args.device, log)
            del model, images
            if not args.no_memory:
                for name in fns:
                    mib, exact = C.peak_in_subprocess("bench_sweep.py", [
                        "--peak", name, "--arch", arch, "--batch", str(batch), "--device", args.device,
                        "--threads", str(env["threads"])])
                    run["peak"][name] = {"mib": mib, "exact": exact}
                    log(f"  peak {name}: {mib:.1f} MiB{'' if exact else ' (upper bound)'}")
            results["runs"].append(run)
            print_run(run, flush=True)
    C.dump(args.json, results)


def print_run(run: dict, flush: bool = False) -> None:
    t = run["timing"]
    lim = t["limit"]["median_s"]
    plim = run["peak"].get("limit", {}).get("mib")
    lim_min = t["limit"]["min_s"]
    rows = []
    for name, r in t.items():
        pk = run["peak"].get(name)
        per_round = statistics.median(a / b for a, b in zip(r["times_s"], t["limit"]["times_s"]))
        rows.append([name, r["median_s"], r["median_s"] / lim, per_round, r["min_s"], r["min_s"] / lim_min,
                     "-" if not pk else f"{pk['mib']:.0f}" + ("" if pk["exact"] else " (<=)"),
                     "-" if not (pk and plim) else f"{pk['mib'] / plim:.2f}"])
    ref = run["reference"]
    passes = run["passes_reference"]
    rows.append([f"reference lower bound ({passes} passes x limit)", passes * lim, passes, "-", "-", "-", "-", "-"])
    if ref:
        total = sum(r["extrapolated_s"] for r in ref.values())
        rows.append(["reference, extrapolated (see below)", total, total / lim, "-", "-", "-", "-", "-"])
    print(f"\n### {run['arch']}, batch {run['batch']}: {run['methods']} methods, {len(run['layers'])} layers "
          f"({', '.join(run['layers'])}), {run['maps']} maps", flush=flush)
    print(C.table(rows, ["configuration", "median s", "x limit", "round ratio", "min s", "min x limit min",
                         "peak MiB", "peak x limit"]), flush=flush)
    ea = t["extagg all"]["median_s"]
    print(f"\nextagg all: {ea / lim:.2f}x the limit (target <= 1.3); vs reference lower bound "
          f"{passes * lim / ea:.1f}x faster" + (f", vs extrapolated reference {total / ea:.0f}x faster" if ref else "")
          + " (target >= 20)", flush=flush)
    if ref:
        print(C.table([[e, r["representative"], r["measured_s"], r["methods"], r["extrapolated_s"]] for e, r in ref.items()],
                      ["extractor", "measured method (1 run)", "s", "methods", "extrapolated s"]), flush=flush)


if __name__ == "__main__":
    main()
