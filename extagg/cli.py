"""Command line: ``extagg methods | metrics | plugins | describe | explain | evaluate | sweep``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_args import number_in, output_file
from .errors import ExtaggError


def _registry():
    from .registry import default_registry

    return default_registry()


def cmd_methods(args) -> int:
    names = _registry().methods(args.pattern or "*", exclude=args.exclude or ())
    for name in names:
        print(name)
    if not names:
        print(f"no method matches {args.pattern or '*'}", file=sys.stderr)
        return 1
    return 0


def cmd_plugins(args) -> int:
    reg = _registry()
    by_plugin: dict[str, list[str]] = {}
    for kind, table in reg.components.items():
        for name, spec in table.items():
            by_plugin.setdefault(spec.origin.plugin, []).append(f"{kind} {name}")
    for failure in reg.failures:
        print(f"{failure.name}  [{failure.distribution or 'not from a distribution'}]  FAILED: {failure.error}")
    for info in reg.plugins:
        dist = f"{info.distribution} {info.version}" if info.distribution else "(not from a distribution)"
        print(f"{info.name}  [{dist}]  module {info.module}")
        for line in by_plugin.get(info.name, []) if args.components else []:
            print(f"    {line}")
        if not args.components:
            counts: dict[str, int] = {}
            for line in by_plugin.get(info.name, []):
                kind = line.split()[0]
                counts[kind] = counts.get(kind, 0) + 1
            print("    " + ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items()))
    return 0


def cmd_describe(args) -> int:
    reg = _registry()
    head = args.method.strip().split("(")[0].strip().lower()
    if head in reg.metrics:
        from .metric_description import describe_metric

        print(describe_metric(reg, args.method))
    else:
        print(reg.describe(args.method))
    return 0


def cmd_metrics(args) -> int:
    from .metric_description import metric_lines

    lines = metric_lines(_registry(), args.pattern or ["*"])
    for line in lines:
        print(line)
    if not lines:
        print(f"no metric matches {' '.join(args.pattern)}", file=sys.stderr)
        return 1
    return 0


def cmd_explain(args) -> int:
    import torch

    from . import models, objectives
    from .engine import saliency
    from .layers import last_spatial_layer
    from .viz import overlay, save_png

    model, preprocess = models.load_model(args.model, args.weights, random_weights=args.random_weights)
    path = args.image or models.sample_image_path()
    image = models.load_image(path)
    x = preprocess(image)[None]
    layer = args.layer or last_spatial_layer(model, x)
    targets = None if args.target is None else int(args.target)
    objective = objectives.from_arguments(args, model, x)  # --box / --mask-class: detection, segmentation
    maps = saliency(model, x, args.method, layers=layer, targets=targets, objective=objective)
    m = maps[args.method, layer]
    if objective is not None:
        out = save_png(overlay(image, m[0, 0], alpha=args.alpha), args.output)
        print(f"image {path}: {objective!r}; method {maps.methods[0]} at layer {layer} ({tuple(m.shape[-2:])} map) "
              f"-> {out}")
        return 0
    cls = int(maps.targets[0, 0])
    with torch.no_grad():
        prob = torch.softmax(model(x).float(), 1)[0, cls].item()
    names = models.imagenet_categories()
    label = names[cls] if cls < len(names) else str(cls)
    out = save_png(overlay(image, m[0, 0], alpha=args.alpha), args.output)
    print(f"image {path}: class {cls} ({label}, p={prob:.3f}); method {maps.methods[0]} at layer {layer} "
          f"({tuple(m.shape[-2:])} map) -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extagg", description="Extract & Aggregate saliency, composable.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("methods", help="list the design space (canonical method strings)")
    s.add_argument("pattern", nargs="*", help="fnmatch patterns, e.g. 'scaling+*' '*+norm' (default: all)")
    s.add_argument("--exclude", "-x", action="append", help="fnmatch pattern to leave out (repeatable)")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("plugins", help="loaded plugins, their distributions, versions and components")
    s.add_argument("--components", "-c", action="store_true", help="list every component of each plugin")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("metrics", help="list the metrics: measures with their direction, needs, parameters")
    s.add_argument("pattern", nargs="*", help="fnmatch patterns over metric names (default: all)")
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("describe", help="composition, formula and origin of a method, or a metric's contract")
    s.add_argument("method")
    s.set_defaults(func=cmd_describe)

    from .objectives import add_arguments as add_objective_arguments

    s = sub.add_parser("explain", help="saliency overlay of one image as a PNG")
    s.add_argument("image", nargs="?", help="image file (default: a photo of a cat shipped with scikit-image)")
    s.add_argument("--model", default="efficientnet-lite0",
                   help="efficientnet-lite0 (default, pretrained offline), a torchvision model name or timm:NAME")
    s.add_argument("--weights", help="torchvision weights name (e.g. DEFAULT) or a state_dict file")
    s.add_argument("--random-weights", action="store_true",
                   help="torchvision model without weights: random initialisation, on purpose")
    s.add_argument("--method", default="gradcam", help="method string (default: gradcam)")
    s.add_argument("--layer", help="layer name (default: the last spatial layer)")
    s.add_argument("--target", type=int, help="class index (default: the predicted class)")
    s.add_argument("--alpha", type=number_in(0, 1), default=0.5, help="heatmap opacity in [0, 1] (default 0.5)")
    s.add_argument("-o", "--output", type=output_file, default="extagg-explain.png",
                   help="output PNG (default extagg-explain.png)")
    add_objective_arguments(s)
    s.set_defaults(func=cmd_explain)

    try:
        from .evaluation.cli import add_evaluate_command
    except ImportError:
        pass
    else:
        add_evaluate_command(sub)
    from .sweep.cli import add_sweep_command

    add_sweep_command(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExtaggError as exc:
        print(f"extagg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `extagg methods | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # an output that cannot be written, an input that cannot be read
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"extagg: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
