"""Where phase 2 (the maps) spends its time: per extractor and per layer, from one captured pass.

    .venv/bin/python benchmarks/bench_phase2.py --archs resnet50 vgg16 [--device cuda]

Captures the sweep layers once (one forward + backward, as ``extagg.saliency`` does), then times the evaluation
of every built-in method grouped by extractor, layer by layer, exactly as the engine runs it (prefetch of the
declared statistics, then each method's map), ``--repeats`` times. Reports the minimum over repeats (the least
disturbed run; phase 2 is pure computation on fixed tensors) and the limit for scale. A second run on 32x32
inputs (every map tiny) shows the part of phase 2 that is per-operation overhead rather than arithmetic.
"""
from __future__ import annotations

import collections
import sys
import time

import torch

import common as C
import extagg
from extagg import engine
from extagg.aggregate import LayerEvaluator


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
    captures, _, _ = engine.run_pass(model, images, needs, C.TARGET_CLASS, None)
    groups: dict[str, dict] = {layer: {} for layer in layers}
    for m in methods:
        for layer in layers:
            spec = registry.extractors[m.extractor.name]
            if spec.applies_to is None or isinstance(modules[layer], spec.applies_to):
                groups[layer].setdefault(m.extractor, []).append(m)
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    plans: dict = {}
    for _ in range(repeats + 1):  # the first round warms up
        for layer in layers:
            evaluator = LayerEvaluator(registry, captures[layer], plans=plans)
            for extractor, ms in groups[layer].items():
                C.sync(device)
                t0 = time.perf_counter()
                evaluator.prefetch(extractor, ms)
                for m in ms:
                    evaluator.map(m)
                evaluator.release(extractor)
                C.sync(device)
                times[layer, extractor.name].append(time.perf_counter() - t0)
    best = {key: min(ts[1:]) for key, ts in times.items()}
    limit = C.time_one(lambda: C.limit_pass(model, images, layers, torch.tensor([C.TARGET_CLASS])),
                       repeats, 1, device)["min_s"]
    return {"best": best, "limit_s": limit, "layers": layers}


def report(arch: str, size: int, r: dict) -> None:
    by_ext: dict[str, float] = collections.Counter()
    by_layer: dict[str, float] = collections.Counter()
    for (layer, ext), t in r["best"].items():
        by_ext[ext] += t
        by_layer[layer] += t
    total = sum(by_ext.values())
    print(f"\n### {arch}, batch 1, {size}x{size}: phase 2 of the whole space = {total * 1e3:.1f} ms "
          f"= {total / r['limit_s']:.2f} x the limit ({r['limit_s'] * 1e3:.1f} ms, min over repeats)")
    print(C.table([[e, t * 1e3, t / r["limit_s"]] for e, t in sorted(by_ext.items(), key=lambda kv: -kv[1])],
                  ["extractor", "ms", "x limit"]))
    print()
    print(C.table([[layer, by_layer[layer] * 1e3] for layer in r["layers"]], ["layer", "ms"]))


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
            results["runs"].append({"arch": arch, "size": size, "limit_s": r["limit_s"],
                                    "best_s": {f"{l}/{e}": t for (l, e), t in r["best"].items()}})
    C.dump(args.json, results)


if __name__ == "__main__":
    main()
