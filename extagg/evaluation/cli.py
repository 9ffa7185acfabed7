"""``extagg evaluate``: run an evaluation from the command line (wire with :func:`add_evaluate_command`).

Example::

    extagg evaluate --model resnet50 --metric pointing --data voc --root ~/data --methods gradcam 'scaling+*' \
        --layers layer4 layer3 --limit 500 -o pointing.csv
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import InputError

METRICS = ("pointing", "sensitivity", "randomisation", "identity", "deletion", "insertion")
IDENTITY_DEFAULT = ("normgrad", "normgrad-conv")
"""The identity check's (identity, real) methods when ``--methods`` is not given (built-in named methods)."""
DATA = ("voc", "coco", "folder")


def _metric_call(text: str) -> str:
    """argparse type: a metric call whose name is registered (``extagg metrics``), checked before any work."""
    from ..errors import ExtaggError
    from ..registry import default_registry
    from .driver import parse_metric

    try:
        parse_metric(default_registry(), text)
    except ExtaggError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to an argparse ``subparsers``; it sets ``func`` (call ``args.func(args)``)."""
    from ..cli_args import device, number_in

    p = subparsers.add_parser(
        "evaluate", help="pointing game, class sensitivity, randomisation, identity checks, deletion and insertion",
        description="Evaluate saliency methods on a model and a data set read from disk (never downloaded). "
                    "Writes tidy records (method, layer, subset, metric, value, count).")
    p.add_argument("--model", default=None,
                   help="model name for extagg.models.load_model (default: efficientnet-lite0); the weights' own "
                        "preprocessing (extagg.preprocessing.preprocessing_for) sets input size, mean and std")
    p.add_argument("--weights", default=None,
                   help="torchvision weights name (e.g. DEFAULT, IMAGENET1K_V2) or a state_dict file")
    p.add_argument("--random-weights", action="store_true",
                   help="torchvision model without weights: random initialisation, on purpose")
    p.add_argument("--metric", required=True, metavar="METRIC", type=_metric_call,
                   help=f"a metric call: {', '.join(METRICS)} or any from `extagg metrics` (plugins' included), with "
                        "parameters as in 'sensitivity(pairing=random)'; pointing and identity take the options "
                        "below, the others run through the same driver as extagg sweep")
    p.add_argument("--data", required=True, choices=DATA,
                   help="voc: ROOT/VOCdevkit/VOC<year>; coco: ROOT/annotations/instances_<split>.json + ROOT/<split>/; "
                        "folder: an ImageFolder (ROOT/<class>/<image>)")
    p.add_argument("--root", required=True, help="data root folder")
    p.add_argument("--split", default=None, help="VOC image set (default test) or COCO split (default val2014)")
    p.add_argument("--year", default="2007", help="VOC year (default 2007)")
    p.add_argument("--methods", nargs="+", required=False, default=None,
                   help="method strings or fnmatch patterns (default: normgrad and normgrad-conv for identity)")
    p.add_argument("--layers", nargs="+", default=["input"],
                   help="layer names or patterns (* stops at a dot, ** crosses dots; default input)")
    p.add_argument("--class-map", default=None, metavar="FILE.json",
                   help="pointing / identity with labels: JSON object {data-set class name or id: model class index "
                        "or [indices]}; needed unless the model has as many outputs as the data set has classes")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--per-class-images", type=int, default=None,
                   help="folder data: first K images of each class (the paper's class-sensitivity set is K = 1)")
    p.add_argument("-o", "--output", default=None, help="write records to a .csv or .json file")
    p.add_argument("--difficult-file", default=None,
                   help="TorchRay difficult-flags file; default: the paper's rule (area < 25%% and another class)")
    p.add_argument("--tolerance", type=number_in(0, 1e6, low_open=True), default=15,
                   help="pointing tolerance in pixels (strict <; default 15)")
    p.add_argument("--smooth", type=number_in(0, 1), default=0.0,
                   help="TorchRay smoothing of input-layer maps (e.g. 0.02)")
    p.add_argument("--spatial-softmax", action="store_true",
                   help="pointing: weight a fully convolutional output by its spatial softmax (TorchRay)")
    p.add_argument("--per-class", action="store_true", help="pointing: also write per-class accuracies")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--randomise", nargs="+", default=None,
                   help="randomisation: blocks to re-initialise, output first (default: top-level children)")
    p.add_argument("--mode", choices=("cascading", "independent", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hog-cell", type=int, default=16, help="HOG cell size in pixels (default 16)")
    p.add_argument("--steps", type=int, default=32,
                   help="deletion/insertion: curve intervals (steps + 1 points; default 32)")
    p.add_argument("--baseline", choices=("blur", "zero", "mean"), default="blur",
                   help="deletion/insertion: what removed pixels become (default blur)")
    p.add_argument("--curve-batch-size", type=int, default=64,
                   help="deletion/insertion: curve points per forward pass (default 64)")
    p.add_argument("--targets", choices=("label", "predicted"), default=None,
                   help="the explained class: identity check default label, other metrics default predicted")
    p.add_argument("--device", type=device, default=None, help="torch device for the model (default: where it loads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_evaluate)
    return p


def _data(args):
    from .datasets import COCOPointing, ImageFolderSamples, VOCPointing

    if args.data == "voc":
        return VOCPointing(args.root, year=args.year, image_set=args.split or "test", limit=args.limit)
    if args.data == "coco":
        return COCOPointing(args.root, split=args.split or "val2014", limit=args.limit)
    return ImageFolderSamples(args.root, per_class=args.per_class_images, limit=args.limit)


def run_evaluate(args, out=None) -> int:
    """Run ``extagg evaluate`` with parsed ``args``; prints a table, writes ``--output``; returns 0."""
    from ..models import load_model  # lazily: only this command needs model loading
    from . import identity_check, pointing_game
    from .records import format_table, write_records

    out = out or sys.stdout
    if args.output and not args.output.lower().endswith((".csv", ".json")):
        raise InputError(f"--output must end in .csv or .json, got {args.output!r}")
    if args.metric == "pointing" and args.data == "folder":
        raise InputError("--metric pointing needs localisation data: --data voc or --data coco")
    if args.model:
        model, preprocess = load_model(args.model, weights=args.weights, random_weights=args.random_weights)
    elif args.weights is not None or args.random_weights:
        raise InputError("--weights / --random-weights need --model NAME (a torchvision model name)")
    else:
        model, preprocess = load_model()
    if args.device:
        try:
            model = model.to(args.device)
        except (RuntimeError, AssertionError) as exc:  # a device torch knows but this machine lacks
            raise InputError(f"--device {args.device!r} is not usable here: {exc}") from None
    data = _data(args)
    progress = not args.no_progress
    common = dict(preprocess=preprocess, limit=args.limit, progress=progress)
    methods = args.methods
    if args.metric != "identity" and not methods:
        raise InputError("--methods is required for this metric (method strings or patterns, e.g. 'gradcam' '*+norm')")
    metric = args.metric.strip()
    if metric == "pointing":
        records = pointing_game(model, data, methods, args.layers, difficult=args.difficult_file or "rule",
                                tolerance=args.tolerance, smooth=args.smooth, spatial_softmax=args.spatial_softmax,
                                per_class=args.per_class, class_map=args.class_map, **common)
    elif metric == "identity":
        pair = tuple(args.methods) if args.methods else IDENTITY_DEFAULT
        records = identity_check(model, data, args.layers, methods=pair, targets=args.targets or "label",
                                 batch_size=args.batch_size, tolerance=args.tolerance,
                                 difficult=args.difficult_file or "rule", class_map=args.class_map, **common)
    else:
        return _run_driver(args, model, data, preprocess, progress, out)
    if args.output:
        write_records(records, args.output)
    shown = [r for r in records if not r.metric.startswith("class_accuracy:")]
    print(format_table(shown), file=out)
    if args.output:
        print(f"wrote {len(records)} records to {args.output}", file=out)
    return 0


def _run_driver(args, model, data, preprocess, progress, out) -> int:
    """Any metric call through the one driver (:func:`extagg.evaluation.evaluate`): typed rows."""
    from .records import format_rows
    from .results import RESULT_FIELDS
    from .run import evaluate

    defaults = {"steps": args.steps, "baseline": args.baseline, "tolerance": args.tolerance, "mode": args.mode,
                "hog_cell": args.hog_cell}
    settings = {"randomise": args.randomise, "curve_batch": args.curve_batch_size}
    result = evaluate(model, data, args.methods, args.layers, [args.metric], preprocess=preprocess,
                      batch_size=args.batch_size, limit=args.limit, progress=progress,
                      targets=args.targets or "predicted", seed=args.seed, defaults=defaults, settings=settings,
                      class_map=args.class_map)
    rows = [r.as_dict() for r in result.rows]
    if args.output:
        import json
        from pathlib import Path

        from ..sweep.results import to_csv
        from .results import jsonable
        from ..sweep.store import write_atomic

        text = (to_csv(rows, RESULT_FIELDS) if args.output.lower().endswith(".csv")
                else json.dumps([jsonable(r) for r in rows], indent=1, allow_nan=False))
        write_atomic(Path(args.output), text)
    print(format_rows(rows, RESULT_FIELDS), file=out)
    if args.output:
        print(f"wrote {len(rows)} rows to {args.output}", file=out)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Stand-alone entry (``python -m extagg.evaluation.cli evaluate ...``) until ``extagg evaluate`` is wired."""
    parser = argparse.ArgumentParser(prog="extagg")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
