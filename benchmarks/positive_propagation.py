"""Class sensitivity and parameter randomisation of the propagation rules (guided backprop, deconvnet, RectGrad,
excitation backprop = LRP-z+, LRP-epsilon) and their plain-gradient counterparts on the embedded EfficientNet-Lite0
and scikit-image photos, with extagg's own evaluations: claims 7, 8, 9, 11 and 13 of
the positive-aggregation claims (docs/positive-aggregation.md). Prints Markdown tables (those in
docs/positive-aggregation.md) and writes a figure. About 22 CPU-minutes (20 minutes on 2 busy cores), mostly
the SSIM and HOG similarities of the randomisation test.

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/positive_propagation.py [--figure docs/figures/x.png]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extagg  # noqa: E402
from extagg.evaluation import parameter_randomisation  # noqa: E402
from extagg.evaluation.records import records_to_json  # noqa: E402
from extagg.evaluation import class_sensitivity, top_bottom_classes  # noqa: E402
from extagg.evaluation.similarity import spearman  # noqa: E402
from extagg.models import load_model  # noqa: E402
from positive_aggregation import PHOTOS, photos  # noqa: E402

SMALL_EPS, EPS = "lrp-epsilon(eps=1e-06):scaling+sum", "lrp-epsilon(eps=0.25):scaling+sum"
PAIRS = [
    ("bias+sum", "guided:bias+sum"), ("bias+abs+max", "guided-backprop"),
    ("bias+sum", "deconvnet:bias+sum"), ("bias+abs+max", "deconvolution"),
    ("scaling+sum", "rectified-gradient"), ("scaling+sum", "excitation-backprop"),
    ("scaling+sum", SMALL_EPS), ("scaling+sum", EPS),
]
"""(plain gradient, rule) pairs: the same extractor and aggregator, with and without the propagation rule."""
INNER = [("scaling+sum", "guided:scaling+sum"), ("scaling+sum", "rectgrad:scaling+sum"),
         ("scaling+sum", "lrp-zplus:scaling+sum"), ("scaling+sum", EPS)]
"""Pairs measured at the inner layer too (relevance / gradient x activation there)."""
CASCADE = ["_fc", "_bn1", "_conv_head", "_blocks.15", "_blocks.10", "_blocks", "_bn0", "_conv_stem"]
"""Cascading from the logits; ``_blocks`` re-draws all 16 MBConv blocks in one step, so after ``_conv_stem`` every
parameter of the model is random (8 steps instead of one per block)."""
INDEPENDENT = ["_blocks.15", "_blocks.10", "_conv_stem"]
FIGURE = ["scaling+sum", "guided-backprop", "deconvolution", "rectified-gradient", "excitation-backprop", EPS]


def registry():
    """The installed built-ins, plus the rules plugin where the installed metadata does not list it yet."""
    import importlib.metadata as md
    if any(ep.value == "extagg_builtins.rules" for ep in md.entry_points(group="extagg")):
        return extagg.default_registry()
    import extagg_builtins.rules as rules
    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(extra=[rules]))


def relu6_saturation(model, x) -> float:
    """Fraction of the shared ReLU6's inputs above 6 (where gradient and LRP relevance pass-through differ)."""
    above, total = [0], [0]

    def hook(module, args, out):
        above[0] += int((args[0] > 6).sum())
        total[0] += args[0].numel()

    handle = model._swish.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    return above[0] / total[0]


def lrp_vs_gradient_x_input(model, x, reg) -> None:
    """Claim 13: Spearman(LRP-epsilon with small eps, gradient x input) on the predicted class, at the input."""
    methods = ["scaling+sum", SMALL_EPS, EPS]
    relu = copy.deepcopy(model)   # the same weights with ReLU for ReLU6: the premise of claim 13
    for name, module in list(relu.named_modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, torch.nn.ReLU6):
                setattr(module, child, torch.nn.ReLU())
    for label, net in (("EfficientNet-Lite0", model), ("the same weights, ReLU6 -> ReLU", relu)):
        res = extagg.saliency(net, x, methods, "input", None, registry=reg)
        gxi = res["scaling+sum"][:, 0]
        for m in methods[1:]:
            r = spearman(res[m][:, 0], gxi)
            rel = (res[m][:, 0] - gxi).abs().amax((-2, -1)) / gxi.abs().amax((-2, -1))
            print(f"{label}, predicted class, input: Spearman({m}, scaling+sum) per photo "
                  f"{[round(v, 3) for v in r.tolist()]}, mean {r.mean():.3f}; "
                  f"max |difference| / max |grad x input| {[round(v, 2) for v in rel.tolist()]}")
    print(f"ReLU6 inputs above 6 (saturated): {100 * relu6_saturation(model, x):.2f}% of all ReLU6 inputs")


def figure(model, x, reg, path: Path) -> None:
    """Maps of each method at the input for one photo, top-1 and bottom-1 class (signed maps, symmetric colours)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with torch.no_grad():
        targets = top_bottom_classes(model(x))
    res = extagg.saliency(model, x, FIGURE, "input", targets, registry=reg)
    fig, axes = plt.subplots(2, len(FIGURE), figsize=(1.6 * len(FIGURE), 3.5))
    for j, m in enumerate(FIGURE):
        signed = bool((res[m][0] < 0).any())   # one colour map for both rows of a method
        for i, label in enumerate(("top-1", "bottom-1")):
            a = res[m][0, i].float()
            s = a.abs().quantile(0.99).item() or 1.0
            axes[i, j].imshow(a.numpy(), cmap="coolwarm" if signed else "viridis", vmin=-s if signed else 0, vmax=s)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            r = spearman(res[m][0, 0], res[m][0, 1]).item()
            axes[0, j].set_title(f"{m.split('(')[0].split(':')[0]}\nr={r:.2f}", fontsize=7)
            axes[i, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"EfficientNet-Lite0, '{PHOTOS[0]}': top-1 vs bottom-1 class (r: Spearman, signed)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default=str(Path(__file__).resolve().parents[1] / "docs/figures"
                                                / "positive_propagation.png"))
    parser.add_argument("--json", help="write all records here")
    parser.add_argument("--inner", default="_blocks.10", help="the inner layer measured too")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, prep = load_model()
    data, reg = photos(), registry()
    x = torch.stack([prep(s.image) for s in data])
    methods = sorted({m for pair in PAIRS + INNER for m in pair})
    layers = ["input", args.inner]
    kw = dict(preprocess=prep, batch_size=4, registry=reg, hog_cell=16)
    records = class_sensitivity(model, data, methods, layers, preprocess=prep, batch_size=4, registry=reg)
    records += parameter_randomisation(model, data, methods, layers, randomise=CASCADE, mode="cascading", **kw)
    records += parameter_randomisation(model, data, methods, layers, randomise=INDEPENDENT, mode="independent",
                                       baseline=False, **kw)
    if args.json:
        Path(args.json).write_text(records_to_json(records))
    value = {(r.method, r.layer, r.subset, r.metric): r.value for r in records}
    last = f"cascading:{CASCADE[-1]}"
    cols = [("top-vs-bottom", "spearman"), ("top-vs-bottom", "spearman_abs"), ("cascading:_fc", "spearman"),
            ("cascading:_fc", "spearman_abs"), ("cascading:_fc", "ssim"), ("cascading:_blocks.10", "spearman"),
            (last, "spearman"), (last, "spearman_abs"), ("independent:_blocks.10", "spearman"),
            ("floor:smooth-noise", "spearman"), ("floor:cross-image", "spearman")]
    print(f"{len(data)} photos: {', '.join(PHOTOS)}; cascading: {' > '.join(CASCADE)}")
    print("| method | layer | " + " | ".join(f"{s} {m}" for s, m in cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    seen = set()
    for pairs, layer in ((PAIRS + INNER, "input"), (INNER, args.inner)):
        for plain, rule in pairs:
            for m in (plain, rule):
                if (reg.canonical(m), layer) in seen:
                    continue
                seen.add((reg.canonical(m), layer))
                cells = [value.get((reg.canonical(m), layer, s, k)) for s, k in cols]
                shown = " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells)
                print(f"| `{m}` | `{layer}` | {shown} |")
    lrp_vs_gradient_x_input(model, x, reg)
    figure(model, x[:1], reg, Path(args.figure))


if __name__ == "__main__":
    main()
