"""Class sensitivity and parameter randomisation of the CAM family and its signed counterparts on the embedded
EfficientNet-Lite0 and scikit-image photos, with extagg's own evaluations. Prints a Markdown table (the one in
docs/positive-aggregation.md); about 2-4 minutes on 2 CPU cores.

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/positive_aggregation.py [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import extagg  # noqa: E402
from extagg.evaluation.datasets import Sample  # noqa: E402
from extagg.evaluation import parameter_randomisation  # noqa: E402
from extagg.evaluation.records import records_to_json  # noqa: E402
from extagg.evaluation import class_sensitivity  # noqa: E402
from extagg.models import load_model  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
PAIRS = [("gradcam", "gradcam-pos"), ("gradcam", "gradcam-abs"), ("gradcampp-signed", "gradcampp"),
         ("hirescam", "layercam"), ("xgradcam", "pooled-scaling(g=relu,pool=mass)+sum+relu"),
         ("fullgrad-signed", "fullgrad"), ("fullgrad-signed", "fullgrad-pos")]
"""(signed, positive) pairs, one token apart."""
RANDOMISE = ["_fc", "_conv_head", "_blocks.15", "_blocks.10"]


def registry():
    """The installed built-ins, plus the cams plugin where the installed metadata does not list it yet."""
    import importlib.metadata as md
    if any(ep.value == "extagg_builtins.cams" for ep in md.entry_points(group="extagg")):
        return extagg.default_registry()
    import extagg_builtins.cams as cams
    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(extra=[cams]))


def photos() -> list[Sample]:
    import skimage.data
    out = []
    for name in PHOTOS:
        image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255
        out.append(Sample(image=image[:3], image_id=name))
    return out


def gap_layer(model, x) -> str:
    """The layer feeding global average pooling: the last call of the shared ReLU6 (``_swish@k``)."""
    calls = []
    handle = model._swish.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(x)
    handle.remove()
    return f"_swish@{len(calls) - 1}"


def same_class(model, prep, data, layers, reg) -> None:
    """Claims 1 and 10: on the predicted class, Spearman(Grad-CAM++, Grad-CAM+) and Spearman(Grad-CAM++, Grad-CAM)."""
    from extagg.evaluation.similarity import spearman
    x = torch.stack([prep(s.image) for s in data])
    res = extagg.saliency(model, x, ["gradcampp", "gradcam-pos", "gradcam"], layers, None, registry=reg, resize=True)
    for layer in layers:
        pp = res["gradcampp", layer][:, 0]
        plus = spearman(pp, res["gradcam-pos", layer][:, 0]).mean().item()
        cam = spearman(pp, res["gradcam", layer][:, 0]).mean().item()
        print(f"predicted class, {layer}: Spearman(gradcampp, gradcam-pos) {plus:.3f}, "
              f"Spearman(gradcampp, gradcam) {cam:.3f}")


def completeness(model, prep, data, reg) -> None:
    """Claim 12 on this model: input term + bias terms + output bias vs the logit (float32)."""
    from extagg_builtins.fullgrad import fullgrad
    x = torch.stack([prep(s.image) for s in data])
    with torch.no_grad():
        out = model(x)
    c = out.argmax(1)
    _, maps = fullgrad(model, x, c, method="fullgrad-signed", normalise="none", per_layer=True, registry=reg)
    # per-layer maps were upsampled (bilinear, align_corners): sum the layer-resolution maps instead
    res = extagg.saliency(model, x, "fullgrad-signed", list(maps), c, registry=reg)
    total = sum(m.sum(dim=(-2, -1))[:, 0].double() for m in res.values()) + model._fc.bias[c].double()
    logit = out.gather(1, c[:, None])[:, 0].double()
    print(f"FullGrad completeness over {len(maps)} layers: logits {logit.numpy().round(3).tolist()}, "
          f"sum of terms {total.detach().numpy().round(3).tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all records here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, prep = load_model()
    data = photos()
    reg = registry()
    layers = [gap_layer(model, prep(data[0].image)[None]), "_bn1", "_blocks.15", "_blocks.10"]
    methods = sorted({m for pair in PAIRS for m in pair})
    sens = class_sensitivity(model, data, methods, layers, preprocess=prep, batch_size=4, registry=reg,
                             mismatched="skip")
    rand = parameter_randomisation(model, data, methods, layers, randomise=RANDOMISE, mode="both", preprocess=prep,
                                   batch_size=4, registry=reg, mismatched="skip", hog_cell=16)
    records = sens + rand
    if args.json:
        Path(args.json).write_text(records_to_json(records))
    value = {(r.method, r.layer, r.subset, r.metric): r.value for r in records}
    canon = {m: reg.canonical(m) for m in methods}
    cols = [("top-vs-bottom", "spearman"), ("cascading:_fc", "spearman"), ("cascading:_blocks.15", "spearman"),
            ("independent:_fc", "spearman"), ("independent:_blocks.15", "spearman")]
    print(f"layers: {layers}; {len(data)} photos: {', '.join(PHOTOS)}")
    print("| method | layer | " + " | ".join(f"{s} {m}" for s, m in cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for signed, positive in PAIRS:
        for layer in layers:
            for m in (signed, positive):
                cells = [value.get((canon[m], layer, s, k)) for s, k in cols]
                if all(c is None for c in cells):
                    continue
                shown = " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells)
                print(f"| `{m}` | `{layer}` | {shown} |")
    same_class(model, prep, data, layers, reg)
    completeness(model, prep, data, reg)
    base = [r for r in rand if r.subset == "floor:smooth-noise" and r.metric == "spearman"]
    if base:
        print(f"smooth-noise floor spearman (mean over methods/layers): {sum(r.value for r in base) / len(base):.2f}")


if __name__ == "__main__":
    main()
