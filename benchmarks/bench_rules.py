"""Propagation rules: each rule at four layers of ResNet50 in one call, against the limit and the plain call.

    .venv/bin/python benchmarks/bench_rules.py [--device cuda] [--batch 1] [--repeats 5]

For each rule (and for no rule), one ``extagg.saliency`` call computes ``RULE:scaling+sum``, ``RULE:bias+abs+max``
and ``RULE:conv1x1+norm`` at ``layer1..layer4`` and the input: one forward and one backward pass under the rule.
The limit is one forward plus one backward to the hooked activations with no rule (``common.limit_pass``).
Rounds are interleaved, so the ratios are measured in the same run.
"""
from __future__ import annotations

import statistics
import sys

import torch

import common as C
import extagg
import extagg_builtins.rules

RULES = ["", "guided:", "deconvnet:", "rectgrad:", "lrp-epsilon:", "lrp-zplus:"]
BODIES = ["scaling+sum", "bias+abs+max", "conv1x1+norm"]


def registry() -> extagg.Registry:
    reg = extagg.default_registry()
    if "guided" in reg.modifiers:
        return reg
    # an editable install made before the builtin-rules entry point existed: register the module directly
    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(extra=[extagg_builtins.rules]))


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--arch", default="resnet50")
    args = p.parse_args(argv)
    env = C.setup(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    reg = registry()
    model = C.build_model(args.arch, args.device)
    images = C.make_images(args.batch, args.device)
    layers = C.LAYERS[args.arch]
    targets = [C.TARGET_CLASS] * args.batch

    def call(rule):
        methods = [rule + body for body in BODIES]
        return lambda: extagg.saliency(model, images, methods, ["input", *layers], targets=targets, registry=reg)

    fns = {(rule.rstrip(":") or "no rule"): call(rule) for rule in RULES}
    fns["limit"] = lambda: C.limit_pass(model, images, layers, torch.tensor(targets))
    timing = C.time_interleaved(fns, args.repeats, args.warmup, args.device, log=log)
    limit, plain = timing["limit"]["median_s"], timing["no rule"]["median_s"]

    def round_ratio(name, base):   # median over rounds of (time / base's time in the same round): robust to drift
        return statistics.median(a / b for a, b in zip(timing[name]["times_s"], timing[base]["times_s"]))

    rows = [[name, t["median_s"], t["median_s"] / limit, round_ratio(name, "limit"), round_ratio(name, "no rule")]
            for name, t in timing.items() if name != "limit"]
    print(f"\n### {args.arch}, batch {args.batch}, {args.device}: {len(BODIES)} methods x {len(layers) + 1} layers "
          f"(input, {', '.join(layers)}) per call; limit {limit:.3f} s", flush=True)
    print(C.table(rows, ["rule", "one call s", "/ limit", "round ratio / limit", "round ratio / no-rule call"]),
          flush=True)
    C.dump(args.json, {"env": env, "timing": timing})


if __name__ == "__main__":
    main()
