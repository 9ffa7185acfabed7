"""``extagg explain``: several methods x layers on one or more images, drawn as one grid figure.

Example::

    extagg explain --method gradcam normgrad --layer stages            # the sample photo, one figure
    extagg explain cat.jpg dog.jpg --model resnet50 --weights DEFAULT --method gradcam 'scaling+norm' \\
        --layer 'layer*' --clip 99.5 -o grid.png --save maps.pt

Rows are the methods (as asked; the canonical string under it where it differs), columns the layers, one block
of rows per image titled with the explained class. Each map is clipped at its ``--clip`` percentile (and at the
mirror percentile below), min-max scaled and drawn with the colour bar of that scale over the photo. Everything
that can be checked without the model is checked first: repeated options, image paths, method strings, output
files; a method string that is an existing file, or an image path that is a method, gets a hint about the order
of the arguments. ``--save`` writes the raw maps (neither clipped nor scaled, resized to the model input).
"""
from __future__ import annotations

import argparse
import os
import sys

from .cli_args import number_in, output_file
from .errors import InputError

SAVE_SUFFIXES = (".pt", ".npy")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class _Once(argparse.Action):
    """An option that may be given once, with all its values (``--method a b``, not ``--method a --method b``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            parser.error(f"{option_string} given twice; give all its values after one {option_string} "
                         f"(e.g. {option_string} {' '.join(getattr(namespace, self.dest) + list(values))})")
        seen.add(self.dest)
        setattr(namespace, self.dest, list(values))


def _save_file(text: str) -> str:
    if not text.endswith(SAVE_SUFFIXES):
        raise argparse.ArgumentTypeError(f"expected a .pt or .npy file name, got {text!r}")
    return output_file(text)


def add_explain_command(subparsers) -> argparse.ArgumentParser:
    """Add ``explain`` to an argparse ``subparsers``; it sets ``func`` (call ``args.func(args)``)."""
    s = subparsers.add_parser(
        "explain", help="a grid of saliency maps: methods x layers on one or more images (one PNG)",
        description="Draw the maps of every method (rows) at every layer (columns) on each image, as one figure "
                    "with titles and a colour bar. Images come before the options (or after '--').")
    a = s.add_argument
    a("images", nargs="*", metavar="IMAGE", help="image files (default: a photo of a cat shipped with scikit-image)")
    a("--model", default="efficientnet-lite0",
      help="efficientnet-lite0 (default, pretrained offline) or a torchvision model name")
    a("--weights", help="torchvision weights name (e.g. DEFAULT) or a state_dict file")
    a("--random-weights", action="store_true", help="torchvision model without weights: random initialisation")
    a("--method", "--methods", dest="methods", nargs="+", action=_Once, metavar="METHOD", default=["gradcam"],
      help="method strings, named methods or patterns (rows; default: gradcam); see `extagg methods`")
    a("--layer", "--layers", dest="layers", nargs="+", action=_Once, metavar="LAYER", default=["last"],
      help="layer names, patterns ('layer*': * stops at a dot) or groups: stages, blocks, spatial, last "
           "(columns; default: last, the last spatial layer)")
    a("--target", type=int, help="class index (default: each image's predicted class)")
    a("--box", metavar="X1,Y1,X2,Y2", help="detection models: explain the score of the predicted box of --box-label "
      "best matched to this box (model input pixels)")
    a("--box-label", type=int, metavar="K", help="detection models: the class of --box")
    a("--iou-threshold", type=float, default=0.5, help="least IoU of the matched box (default 0.5)")
    a("--mask-class", type=int, metavar="K",
      help="segmentation models: explain class K's logit summed over the pixels predicted as K")
    a("--clip", type=number_in(50, 100), default=99.0,
      help="percentile each map is clipped at before scaling (and 100 - it below; default 99; 100: no clipping)")
    a("--alpha", type=number_in(0, 1), default=0.6, help="map opacity over the photo in [0, 1] (default 0.6)")
    a("-o", "--output", type=output_file, default="extagg-explain.png", help="output PNG (default extagg-explain.png)")
    a("--save", type=_save_file, metavar="MAPS.pt|MAPS.npy",
      help="also write the raw maps: .pt a dict (maps (images, methods, layers, H, W) and their labels), "
           ".npy the array alone")
    s.set_defaults(func=run_explain)
    return s


def check_request(args, registry) -> tuple[list[str], list[str]]:
    """(methods as asked, expanded; image paths), checked before any model loads."""
    from .errors import ExtaggError

    methods: list[str] = []
    for text in args.methods:
        try:
            if any(c in text for c in "*?["):
                found = registry.methods(text)
            else:
                registry.parse(text)
                found = [text]
        except ExtaggError as exc:
            if os.path.isfile(text):
                raise InputError(f"{text!r} is a file, not a method string: give images before --method "
                                 f"(extagg explain {text} --method ...) or after '--'") from None
            looks_like_file = os.sep in text or os.path.splitext(text)[1].lower() in IMAGE_SUFFIXES
            hint = (f"; if {text!r} is an image, there is no such file (images come before --method)"
                    if looks_like_file else "")
            raise InputError(f"--method {text!r}: {exc}{hint}") from None
        if not found:
            raise InputError(f"--method pattern {text!r} matches no method; see `extagg methods`")
        methods += [m for m in found if m not in methods]
    images = [str(p) for p in args.images]
    for path in images:
        if os.path.isfile(path):
            continue
        hint = ""
        try:
            registry.parse(path)
            hint = "; it is a method string: give every method after one --method"
        except ExtaggError:
            pass
        raise InputError(f"image {path!r} does not exist{' or is not a file' if os.path.exists(path) else ''}"
                         f"{hint}")
    return methods, images


def run_explain(args) -> int:
    from .registry import default_registry

    registry = default_registry()
    methods, images = check_request(args, registry)  # before the model loads

    import torch

    from . import models, objectives
    from .engine import saliency
    from .layer_select import select_layers
    from .viz import explain_grid

    model, preprocess = models.load_model(args.model, args.weights, random_weights=args.random_weights)
    paths = images or [str(models.sample_image_path())]
    names = models.imagenet_categories()
    photos, rows, raw, shapes = [], [], [], set()
    layers = None
    for path in paths:
        photo = models.load_image(path)
        x = preprocess(photo)[None]
        if layers is None:
            layers = select_layers(model, args.layers, x)
        objective = objectives.from_arguments(args, model, x)  # --box / --mask-class: detection, segmentation
        maps = saliency(model, x, methods, layers, targets=args.target, resize=True, registry=registry,
                        mismatched="skip", objective=objective)
        if objective is not None:
            cls, label, prob = "-", repr(objective), float("nan")
        else:
            cls = int(maps.targets[0, 0])
            with torch.no_grad():
                prob = torch.softmax(model(x).float(), 1)[0, cls].item()
            label = names[cls] if cls < len(names) else str(cls)
        cells = {(m, layer): maps[m, layer][0, 0] if (m, layer) in maps else None for m in methods for layer in layers}
        photos.append(photo)
        rows.append((os.path.basename(path), cls, label, prob, cells))
        nan = torch.full(tuple(x.shape[-2:]), float("nan"))
        raw.append(torch.stack([torch.stack([c.float().cpu() if c is not None else nan for c in
                                             (cells[m, layer] for layer in layers)]) for m in methods]))
        shapes.add(tuple(x.shape[-2:]))
        print(f"image {path}: class {cls} ({label}, p={prob:.3f})")
    canonical = {m: registry.canonical(m) for m in methods}
    out = explain_grid(photos, rows, methods, layers, canonical, args.output, clip=args.clip, alpha=args.alpha,
                       model_name=args.model)
    print(f"{len(methods)} method(s) x {len(layers)} layer(s) ({', '.join(layers)}) on {len(paths)} image(s) -> {out}")
    if args.save:
        _save(args.save, raw, shapes, paths, methods, canonical, layers, [r[1] for r in rows])
    return 0


def _save(path: str, raw, shapes, images, methods, canonical, layers, classes) -> None:
    import torch

    if len(shapes) > 1:
        raise InputError(f"the images' model inputs differ in size ({sorted(shapes)}); --save needs one size "
                         "(explain them one at a time)")
    maps = torch.stack(raw)  # (images, methods, layers, H, W)
    if path.endswith(".npy"):
        import numpy as np

        np.save(path, maps.numpy())
    else:
        torch.save({"maps": maps, "images": list(images), "methods": list(methods),
                    "canonical": [canonical[m] for m in methods], "layers": list(layers), "targets": classes}, path)
    print(f"raw maps {tuple(maps.shape)} (images, methods, layers, H, W) -> {path}", file=sys.stdout)
