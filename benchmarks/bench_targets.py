"""T targets per image in one call vs T separate calls (ResNet50, the whole built-in space, 4 layers + conv).

    .venv/bin/python benchmarks/bench_targets.py [--device cuda] [--targets 1 4 16] [--batch 1]

One call with an (N, T) target matrix runs one forward and one batched backward (``is_grads_batched``);
T separate calls run T forwards and T backwards. The limit with T targets (one forward, T backwards to the
hooked activations) is shown for scale. Separate calls are timed ``max(1, repeats // T)`` times.
"""
from __future__ import annotations

import sys

import torch

import common as C
import extagg


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--methods", default="all", help="'all' (the whole space) or a comma-separated list")
    args = p.parse_args(argv)
    env = C.setup(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    model = C.build_model(args.arch, args.device)
    images = C.make_images(args.batch, args.device)
    layers = C.sweep_layers(args.arch)
    methods = C.all_methods() if args.methods == "all" else args.methods.split(",")
    rows, results = [], {"env": env, "runs": []}
    base = None
    for t in args.targets:
        classes = torch.arange(t) * 37 % 1000
        matrix = classes.expand(args.batch, t).contiguous()

        def one_call():
            return extagg.saliency(model, images, methods, layers, targets=matrix, mismatched="skip")

        def separate():
            return [extagg.saliency(model, images, methods, layers, targets=matrix[:, k], mismatched="skip")
                    for k in range(t)]

        def limit_t():
            for k in range(t):
                C.limit_pass(model, images, layers, matrix[:, k])

        timing = C.time_interleaved({"one call": one_call, "limit": lambda: C.limit_pass(model, images, layers, matrix[:, 0])},
                                    args.repeats, args.warmup, args.device, log=log)
        sep = C.time_one(separate, max(1, args.repeats // t), 0, args.device)
        one, lim = timing["one call"]["median_s"], timing["limit"]["median_s"]
        base = base or one
        rows.append([t, one, sep["median_s"], sep["median_s"] / one, one / base, one / lim])
        results["runs"].append({"T": t, "one_call": timing["one call"], "limit_T1": timing["limit"], "separate": sep})
        log(f"  T={t}: one call {one:.3f}s, {t} calls {sep['median_s']:.3f}s")
    print(f"\n### {len(methods)} methods x {len(layers)} layers, {args.arch}, batch {args.batch}", flush=True)
    print(C.table(rows, ["T", "one call s", "T calls s", "T calls / one call", "one call / (T=1 call)",
                         "one call / limit(T=1)"]), flush=True)
    C.dump(args.json, results)


if __name__ == "__main__":
    main()
