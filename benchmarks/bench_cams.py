"""The CAM family and the propagation rules at four layers of ResNet50, against the limit and against the peers.

    .venv/bin/python benchmarks/bench_cams.py [--device cuda] [--batches 1 8] [--repeats 5] [--json PATH]

Three groups, each timed in interleaved rounds with its own limit (one forward plus one backward to the hooked
activations, parameter gradients off); ``x limit`` is the median over rounds of time / limit in the same round.

* ``cams``: extagg, ONE ``extagg.saliency`` call: gradcam, gradcampp, xgradcam, layercam, hirescam at
  layer1..layer4 (20 maps, one shared pass). pytorch-grad-cam: for each method one object per layer, one call
  each (its maps resized to the input and min-max scaled in numpy, as it always does); Captum ``LayerGradCam``
  (Grad-CAM only) one object per layer. Limit: backward to layer1..layer4.
* ``fullgrad``: extagg ``fullgrad()``: ONE ``extagg.saliency`` call (``fullgrad``, ``bias-value+abs+min``,
  ``bias-value+abs+max``) over ``fullgrad_layers(model)`` (the input and the 53 BatchNorm2d), then per-layer min-max
  normalisation, upsampling and the sum. pytorch-grad-cam ``FullGrad``: one call. Limit: backward to the input and
  the 53 BatchNorm outputs.
* ``rules``: extagg, ONE call per rule: the rule's named method and ``RULE:gradcam`` at the input and
  layer1..layer4 (2 methods x 5 layers); ``no rule`` is ``gradient`` and ``gradcam`` at the same layers. Peers:
  pytorch-grad-cam ``GuidedBackpropReLUModel`` (its loss reads image 0: one call per image), Captum
  ``GuidedBackprop``, ``Deconvolution``, ``LRP`` (epsilon, alpha1beta0), Zennit ``GuidedBackprop``, ``DeconvNet``,
  ``Epsilon`` (with ``layer_map_base``), ``EpsilonPlus``, ``ExcitationBackprop`` (with ``ResNetCanonizer``;
  registered inside the timed call, ``with Gradient(...)``). Limit: backward to the input and layer1..layer4.
  For each LRP implementation the total input relevance over the logit is checked once, untimed.

pytorch-grad-cam objects register their hooks at construction; they are built outside the timed region, their
hooks removed, and put back (a few microseconds) only for their own call. Peers get the model with parameters
requiring grad (pytorch-grad-cam calls ``backward()``, which then also fills the weight gradients). Peers that
replace or canonize modules (pytorch-grad-cam's guided model, Captum LRP, Zennit) get their own copy.
"""
from __future__ import annotations

import copy
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F

import common as C
import extagg
from bench_peers import build
from bench_rules import registry
from extagg_builtins.fullgrad import fullgrad, fullgrad_layers

LAYERS = C.LAYERS["resnet50"]
CAMS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]
PGC_CAMS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
            "hirescam": "HiResCAM"}
NAMED = {"guided": "guided-backprop", "deconvnet": "deconvolution", "rectgrad": "rectified-gradient",
         "lrp-epsilon": "lrp-epsilon:scaling+sum", "lrp-zplus": "excitation-backprop"}


def extagg_calls(layers=LAYERS) -> dict[str, tuple[list[str], list[str]]]:
    """{row: (methods, layers)} of each timed ``extagg.saliency`` call of the cams and rules groups."""
    calls = {"extagg (5 CAMs x 4 layers)": (list(CAMS), list(layers)),
             "extagg no rule": (["gradient", "gradcam"], ["input", *layers])}
    for rule, named in NAMED.items():
        calls[f"extagg {rule}"] = ([named, f"{rule}:gradcam"], ["input", *layers])
    return calls


def limit_to(model, images, layers, targets):
    """One forward + one backward to the hooked outputs of ``layers`` (and to the input if listed), params frozen."""
    req = [p.requires_grad for p in model.parameters()]
    modules = dict(model.named_modules())
    probes, handles = [], []

    def hook(module, args, output):
        probes.append(torch.zeros_like(output, requires_grad=True))
        return output + probes[-1]

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        handles = [modules[n].register_forward_hook(hook) for n in layers if n != "input"]
        with torch.enable_grad():
            x = images.detach().requires_grad_("input" in layers)
            out = model(x)
            score = out.gather(1, targets.view(-1, 1)).sum()
            return torch.autograd.grad(score, probes + ([x] if "input" in layers else []))
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)


def pgc_call(cam, images, targets):
    """Run a pytorch-grad-cam object with its hooks on only for this call."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    cam.activations_and_grads.release()

    def run():
        cam.activations_and_grads = ActivationsAndGradients(cam.model, cam.target_layers, None, cam.detach)
        try:
            return cam(input_tensor=images, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return run


def groups(model, images, targets, reg) -> tuple[dict, dict, dict]:
    """({group: {row: callable}}, {row: note}, {row: callable returning the input relevance (N, H, W)})."""
    mods = dict(model.named_modules())
    calls = extagg_calls()
    run = lambda name: lambda: extagg.saliency(model, images, calls[name][0], calls[name][1],  # noqa: E731
                                               targets=targets, registry=reg)
    fg_layers = fullgrad_layers(model)
    out = {
        "cams": {"limit (layer1..4)": lambda: limit_to(model, images, LAYERS, targets),
                 "extagg (5 CAMs x 4 layers)": run("extagg (5 CAMs x 4 layers)")},
        "fullgrad": {f"limit (input + {len(fg_layers) - 1} BN)": lambda: limit_to(model, images, fg_layers, targets),
                     "extagg fullgrad()": lambda: fullgrad(model, images, targets, registry=reg)},
        "rules": {"limit (input, layer1..4)": lambda: limit_to(model, images, ["input", *LAYERS], targets),
                  **{name: run(name) for name in calls if "CAMs" not in name}},
    }
    notes = {"extagg fullgrad()": "per layer min-max over C x h x w (the reference code's)",
             "pytorch-grad-cam FullGrad": "min-max per channel, then per image: a different map (cam_family.md)",
             "pytorch-grad-cam GradCAMPlusPlus x4": "alpha with +1e-6 in the denominator (cam_family.md)",
             "extagg rectgrad": "no peer implements RectGrad"}
    relevance = {name: (lambda name=name: run(name)()[calls[name][0][0], "input"][:, 0])
                 for name in ("extagg lrp-epsilon", "extagg lrp-zplus")}
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        pt = [ClassifierOutputTarget(int(t)) for t in targets]
        for method, cls in PGC_CAMS.items():
            cams = [pgc_call(getattr(pgc, cls)(model=model, target_layers=[mods[n]]), images, pt) for n in LAYERS]
            out["cams"][f"pytorch-grad-cam {cls} x4"] = lambda cams=cams: [c() for c in cams]
        out["fullgrad"]["pytorch-grad-cam FullGrad"] = pgc_call(pgc.FullGrad(model=model, target_layers=[]),
                                                                images, pt)
        guided = pgc.GuidedBackpropReLUModel(copy.deepcopy(model))
        out["rules"]["pytorch-grad-cam GuidedBackpropReLUModel"] = lambda: [
            guided(images[i:i + 1].clone(), target_category=int(t)) for i, t in enumerate(targets)]
        notes["pytorch-grad-cam GuidedBackpropReLUModel"] = "input gradient only; one call per image"
    except ImportError as e:
        print(f"pytorch-grad-cam unavailable: {e}", file=sys.stderr)
    try:
        from captum.attr import LRP, Deconvolution, GuidedBackprop, LayerGradCam
        from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
        gcs = [LayerGradCam(model, mods[n]) for n in LAYERS]
        out["cams"]["captum LayerGradCam x4"] = lambda: [g.attribute(images, target=targets, relu_attributions=True)
                                                         for g in gcs]
        notes["captum LayerGradCam x4"] = "Grad-CAM only"
        gb, dc = GuidedBackprop(model), Deconvolution(model)
        out["rules"]["captum GuidedBackprop"] = lambda: gb.attribute(images, target=targets)
        out["rules"]["captum Deconvolution"] = lambda: dc.attribute(images, target=targets)
        for label, rule in (("epsilon 1e-6", lambda: EpsilonRule(epsilon=1e-6)), ("alpha1beta0", Alpha1_Beta0_Rule)):
            lrp_model = copy.deepcopy(model)
            for m in lrp_model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
                    m.rule = rule()
            lrp = LRP(lrp_model)
            name = f"captum LRP {label}"
            out["rules"][name] = lambda lrp=lrp: lrp.attribute(images, target=targets)
            relevance[name] = lambda lrp=lrp: lrp.attribute(images, target=targets).sum(1)
            notes[name] = "skip additions unsupported (captum#342, #546)"
    except ImportError as e:
        print(f"captum unavailable: {e}", file=sys.stderr)
    try:
        out["rules"].update(_zennit(model, images, targets, relevance, notes))
    except ImportError as e:
        print(f"zennit unavailable: {e}", file=sys.stderr)
    return out, notes, relevance


def _zennit(model, images, targets, relevance, notes) -> dict:
    from zennit.attribution import Gradient
    from zennit.composites import (DeconvNet, EpsilonPlus, ExcitationBackprop, GuidedBackprop, LayerMapComposite,
                                   layer_map_base)
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Convolution, Linear

    zmodel = copy.deepcopy(model)
    hot = lambda out: F.one_hot(targets, out.shape[1]).to(out.dtype)  # noqa: E731
    composites = {
        "GuidedBackprop": (GuidedBackprop, hot),
        "DeconvNet": (DeconvNet, hot),
        "Epsilon 1e-6 + ResNetCanonizer": (
            lambda: LayerMapComposite(layer_map_base() + [(Convolution, Epsilon(1e-6)), (Linear, Epsilon(1e-6))],
                                      canonizers=[ResNetCanonizer()]),
            lambda out: hot(out) * out),
        "EpsilonPlus + ResNetCanonizer": (lambda: EpsilonPlus(canonizers=[ResNetCanonizer()]),
                                          lambda out: hot(out) * out),
        "ExcitationBackprop + ResNetCanonizer": (lambda: ExcitationBackprop(canonizers=[ResNetCanonizer()]),
                                                 lambda out: hot(out) * out),
    }
    notes["zennit Epsilon 1e-6 + ResNetCanonizer"] = "the same rule; BN merged into the conv, Norm at sums and avg pool"
    notes["zennit EpsilonPlus + ResNetCanonizer"] = "z+ at convs, epsilon at the head, BN merged: another map"
    notes["zennit ExcitationBackprop + ResNetCanonizer"] = "z+ keeps the bias, BN merged: another map"
    out = {}
    for label, (make, start) in composites.items():
        def attribute(make=make, start=start):
            with Gradient(model=zmodel, composite=make()) as attributor:
                return attributor(images, start)[1]
        out[f"zennit {label}"] = attribute
        if start is not hot:
            relevance[f"zennit {label}"] = lambda attribute=attribute: attribute().sum(1)
    return out


def conservation(model, images, targets, relevance) -> dict[str, float]:
    """Total input relevance / logit (median over images) of each LRP implementation: near 1 for a
    conservative rule (biases absorb a little under epsilon); far from 1 for a broken propagation."""
    with torch.no_grad():
        logits = model(images).gather(1, targets.view(-1, 1)).view(-1)
    return {name: statistics.median((f().detach().flatten(1).sum(1) / logits).tolist())
            for name, f in relevance.items()}


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--groups", nargs="+", default=["cams", "fullgrad", "rules"])
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    env = C.setup(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    reg = registry()
    results = {"env": env, "calls": extagg_calls(), "runs": []}
    for batch in args.batches:
        model, images, targets = build(args.device, batch)
        gs, notes, relevance = groups(model, images, targets, reg)
        checks = conservation(model, images, targets, relevance) if "rules" in args.groups else {}
        for group in args.groups:
            log(f"== {group}, batch {batch}")
            timing = C.time_interleaved(gs[group], args.repeats, args.warmup, args.device, log=log)
            run = {"group": group, "batch": batch, "timing": timing, "notes": notes,
                   "relevance_over_logit": {k: v for k, v in checks.items() if k in timing}}
            results["runs"].append(run)
            print_run(run, args.device)
    C.dump(args.json, results)


def print_run(run: dict, device: str) -> None:
    t = run["timing"]
    lim = next(k for k in t if k.startswith("limit"))
    ratio = lambda n: statistics.median(a / b for a, b in zip(t[n]["times_s"], t[lim]["times_s"]))  # noqa: E731
    rows = []
    for name, r in t.items():
        note = run["notes"].get(name, "")
        if name in run["relevance_over_logit"]:
            note = f"sum R / logit = {run['relevance_over_logit'][name]:.5g}" + (f"; {note}" if note else "")
        rows.append([name, r["median_s"], ratio(name), note])
    if run["group"] == "cams":
        pgc = [n for n in t if n.startswith("pytorch-grad-cam")]
        if pgc:
            rows.append(["pytorch-grad-cam, the 5 CAMs (sum of rows)", sum(t[n]["median_s"] for n in pgc),
                         sum(ratio(n) for n in pgc), "20 maps, as the extagg call"])
    print(f"\n### {run['group']}, ResNet50, batch {run['batch']}, {device}", flush=True)
    print(C.table(rows, ["implementation", "median s", "x limit", "note"]), flush=True)


if __name__ == "__main__":
    main()
