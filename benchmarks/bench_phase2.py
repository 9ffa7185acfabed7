"""Where phase 2 (the maps) spends its time: per extractor and per layer, from one captured pass.

    .venv/bin/python benchmarks/bench_phase2.py --archs resnet50 vgg16 [--device cuda]

Captures the sweep layers once (one forward + backward, as ``extagg.saliency`` does), then times the evaluation
of every built-in method grouped by extractor, layer by layer, exactly as the engine runs it (prefetch of the
declared statistics, then each method's map), ``--repeats`` times, once with the native kernels and once on the
PyTorch path (``extagg.native.enabled(False)``), interleaved. Reports the minimum over repeats (the least
disturbed run; phase 2 is pure computation on fixed tensors), the limit for scale, and the speed-up of the
kernels over the PyTorch path. A second run on 32x32 inputs (every map tiny) shows the part of phase 2 that is
per-operation overhead rather than arithmetic.
"""
from __future__ import annotations

import collections
import sys
import time

import torch

import common as C
import extagg
from extagg import engine, native
from extagg.phase2 import Store, evaluate_layer


def phase2_times(arch: str, size: int, repeats: int, device: str) -> dict:
    model = C.build_model(arch, device)
    for p in model.parameters():
        p.requires_grad_(False)
    images = C.make_images(1, device) if size == 224 else torch.randn(1, 3, size, size, device=device)
    layers = C.sweep_layers(arch)
    registry = extagg.default_registry()
    methods = [registry.parse(m) for m in C.all_methods()]
    modules = dict(model.named_modules())
    needs = {layer: {"output", "grad", "input"} for layer in layers}
    captures, _, _ = engine.run_pass(model, images, needs, torch.tensor([[C.TARGET_CLASS]]), None)
    groups: dict[str, dict] = {layer: {} for layer in layers}
    for m in methods:
        for layer in layers:
            spec = registry.extractors[m.extractor.name]
            if spec.applies_to is None or isinstance(modules[layer], spec.applies_to):
                groups[layer].setdefault(m.extractor, []).append(m)
    times: dict[tuple[bool, str, str], list[float]] = collections.defaultdict(list)
    plans: dict = {}
    kernels = (True, False) if native.available() else (False,)
    for _ in range(repeats + 1):  # the first round warms up
        for on in kernels:
            with native.enabled(on):
                for layer in layers:
                    c = captures[layer]
                    store = Store(pinned=(c.grad, c.output, c.input))  # shared by the layer's extractors
                    for extractor, ms in groups[layer].items():
                        C.sync(device)
                        t0 = time.perf_counter()
                        evaluate_layer(registry, c, ms, plans=plans, store=store)
                        C.sync(device)
                        times[on, layer, extractor.name].append(time.perf_counter() - t0)
    best = {key[1:]: min(ts[1:]) for key, ts in times.items() if key[0] == kernels[0]}
    pytorch = {key[1:]: min(ts[1:]) for key, ts in times.items() if not key[0]}
    limit = C.time_one(lambda: C.limit_pass(model, images, layers, torch.tensor([C.TARGET_CLASS])),
                       repeats, 1, device)["min_s"]
    return {"best": best, "pytorch": pytorch, "limit_s": limit, "layers": layers, "kernels": kernels[0]}


def report(arch: str, size: int, r: dict) -> None:
    by_ext: dict[str, float] = collections.Counter()
    by_layer: dict[str, float] = collections.Counter()
    for (layer, ext), t in r["best"].items():
        by_ext[ext] += t
        by_layer[layer] += t
    py_ext: dict[str, float] = collections.Counter()
    py_layer: dict[str, float] = collections.Counter()
    for (layer, ext), t in r["pytorch"].items():
        py_ext[ext] += t
        py_layer[layer] += t
    total, py_total = sum(by_ext.values()), sum(py_ext.values())
    path = "native kernels" if r["kernels"] else "PyTorch path (kernels unavailable)"
    print(f"\n### {arch}, batch 1, {size}x{size}: phase 2 of the whole space = {total * 1e3:.1f} ms "
          f"= {total / r['limit_s']:.2f} x the limit ({r['limit_s'] * 1e3:.1f} ms, min over repeats), {path}")
    if r["kernels"]:
        print(f"PyTorch path in the same rounds: {py_total * 1e3:.1f} ms = {py_total / r['limit_s']:.2f} x the limit; "
              f"kernels {py_total / total:.2f}x faster")
    cols = ["extractor", "ms", "x limit"] + (["PyTorch path ms", "speed-up"] if r["kernels"] else [])
    rows = [[e, t * 1e3, t / r["limit_s"]] + ([py_ext[e] * 1e3, py_ext[e] / t] if r["kernels"] else [])
            for e, t in sorted(by_ext.items(), key=lambda kv: -kv[1])]
    print(C.table(rows, cols))
    print()
    rows = [[layer, by_layer[layer] * 1e3] + ([py_layer[layer] * 1e3, py_layer[layer] / by_layer[layer]]
                                               if r["kernels"] else []) for layer in r["layers"]]
    print(C.table(rows, ["layer", "ms"] + (["PyTorch path ms", "speed-up"] if r["kernels"] else [])))


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "vgg16"])
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 32])
    args = p.parse_args(argv)
    env = C.setup(args)
    results = {"env": env, "runs": []}
    for arch in args.archs:
        for size in args.sizes:
            print(f"== {arch} {size}x{size}", file=sys.stderr, flush=True)
            r = phase2_times(arch, size, args.repeats, args.device)
            report(arch, size, r)
            results["runs"].append({"arch": arch, "size": size, "limit_s": r["limit_s"], "kernels": r["kernels"],
                                    "best_s": {f"{l}/{e}": t for (l, e), t in r["best"].items()},
                                    "pytorch_s": {f"{l}/{e}": t for (l, e), t in r["pytorch"].items()}})
    C.dump(args.json, results)


if __name__ == "__main__":
    main()
