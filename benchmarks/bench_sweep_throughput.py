"""Throughput of ``extagg sweep`` (images/s) on its default configuration, against two baselines measured in
the same run on the same images:

* **limit**: only the model calls the sweep cannot avoid, on the raw model (no extagg, no metric): the classes'
  forward, one forward and T backwards per saliency pass (per batch and pass-modifier group; each randomisation
  step; a meta step and pass per image and class), and the deletion/insertion curve images in forward batches;
* **reference**: one pass per method per metric, with extagg's own per-metric evaluations
  (``class_sensitivity``, ``parameter_randomisation``, ``faithfulness`` for deletion and insertion, and a
  saliency call per method with its ``conv`` twin for the identity check).

The default configuration is used without layer combinations (the per-metric evaluations have none), on the
first ``--images`` scikit-image photos, all in one batch. Prints a table and writes JSON under
``benchmarks/results/``.

    python benchmarks/bench_sweep_throughput.py --images 3 --out benchmarks/results/sweep_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import attrs
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from extagg import default_registry  # noqa: E402
from extagg.engine import saliency  # noqa: E402
from extagg.evaluation import class_sensitivity, parameter_randomisation, spearman  # noqa: E402
from extagg.evaluation.common import model_inputs  # noqa: E402
from extagg.evaluation.faithfulness import faithfulness  # noqa: E402
from extagg.layer_select import select_layers  # noqa: E402
from extagg.models import load_model  # noqa: E402
from extagg.sweep import SweepConfig  # noqa: E402
from extagg.sweep.compute import BatchRunner  # noqa: E402
from extagg.sweep.cost import estimate  # noqa: E402
from extagg.sweep.data import load_samples  # noqa: E402
from extagg.sweep.plan import make_plan  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def limit_passes(model, x, plan, config, registry, columns: int) -> None:
    """The model calls of one batch that no implementation of this sweep can avoid."""
    cost = estimate(plan, config, registry, {}, [tuple(range(x.shape[0]))])
    n = x.shape[0]
    with torch.no_grad():
        model(x)
    per_example = sum(1 for m in plan.methods if m in plan.per_example) > 0
    plain_groups = len({registry.parse(m).modifiers for m in plan.methods if m not in plan.per_example})
    steps = len(plan.blocks)

    def pass_(batch, t):
        xi = batch.detach().requires_grad_(True)
        out = model(xi)
        for k in range(t):
            torch.autograd.grad(out[:, k].sum(), xi, retain_graph=k + 1 < t)

    for _ in range(plain_groups * (1 + steps)):
        pass_(x, columns)
    if per_example:
        for _ in range((columns + steps) * 2):
            for i in range(n):
                pass_(x[i:i + 1], 1)
    with torch.no_grad():
        left = cost.curve_images
        while left > 0:
            b = min(left, config.curve_batch)
            model(x[:1].expand(b, -1, -1, -1).contiguous())
            left -= b


def reference(model, preprocess, samples, plan, config, registry) -> None:
    """One pass per method per metric, through extagg's per-metric evaluations."""
    layers = list(plan.layers)
    common = dict(preprocess=preprocess, batch_size=len(samples))
    for m in plan.methods:
        class_sensitivity(model, samples, [m], layers, **common)
        parameter_randomisation(model, samples, [m], layers, randomise=list(plan.blocks), mode="cascading",
                                hog_cell=config.hog_cell, **common)
        for mode in ("deletion", "insertion"):
            faithfulness(model, samples, [m], layers, mode=mode, steps=config.steps, baseline=config.baseline,
                         curve_batch_size=config.curve_batch, mismatched="skip", **common)
        twins = [(layer, t) for (mm, layer), t in plan.twins.items() if mm == m]
        if twins:
            x = model_inputs(model, [s.image for s in samples], preprocess)
            maps = saliency(model, x, [m, twins[0][1]], [layer for layer, _ in twins], resize=True)
            for layer, t in twins:
                spearman(maps[m, layer], maps[t, layer])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="curve intervals (default: the sweep's default)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds (sweep, limit, reference each round); the minimum per kind is kept")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = SweepConfig(limit=args.images, combine=(), batch_size=args.images, progress=False, figures=False,
                         **({"steps": args.steps} if args.steps else {}))
    registry = default_registry()
    model, preprocess = load_model()
    samples = load_samples(config)
    x = model_inputs(model, [s.image for s in samples], preprocess)
    layers = select_layers(model, list(config.layers), x[:1])
    plan = make_plan(config, model, registry, [s.image_id for s in samples], x[:1], layers)
    runner = BatchRunner(model, preprocess, plan, config, registry)
    n = len(samples)
    timed(lambda: limit_passes(model, x[:1], plan, attrs.evolve(config, steps=1), registry, 2))  # warm-up
    kinds = {"sweep": lambda: list(runner.run(samples, lambda metric: True)),
             "limit (unavoidable model calls)": lambda: limit_passes(model, x, plan, config, registry, 2),
             "reference (pass per method per metric)": lambda: reference(model, preprocess, samples, plan, config,
                                                                         registry)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):  # interleaved, so that a drift of the machine's load hits every kind alike
        for name, fn in kinds.items():
            times[name].append(timed(fn))
    rows = {k: min(v) for k, v in times.items()}
    t_sweep = rows["sweep"]
    print(f"extagg sweep throughput: EfficientNet-Lite0, {n} photos in one batch, {len(plan.methods)} methods x "
          f"{len(plan.layers)} layers, metrics {', '.join(plan.metrics)}, {config.steps} curve intervals; "
          f"min of {args.rounds} interleaved round(s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'':42}{'seconds':>10}{'images/s':>10}{'time / sweep':>14}")
    for name, t in rows.items():
        print(f"{name:42}{t:>10.1f}{n / t:>10.4f}{t / t_sweep:>14.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"images": n, "methods": list(plan.methods), "layers": list(plan.layers),
                       "metrics": list(plan.metrics), "steps": config.steps, "seconds": rows, "all_seconds": times, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)


if __name__ == "__main__":
    main()
