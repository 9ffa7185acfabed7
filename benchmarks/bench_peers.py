"""extagg vs Captum, pytorch-grad-cam and TorchCAM on the maps each of them can produce (ResNet50).

Runs in the peers' own environment (``bash benchmarks/setup_peers.sh`` first)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_peers.py [--device cuda] [--batches 1 8]

Every task is timed interleaved with the limit (median of ``--repeats``), each peer through its public API,
constructed once outside the timed region:

* ``gradcam x4``: Grad-CAM at layer1..layer4 (4 maps per image). extagg: one call for the 4 layers.
  Captum ``LayerGradCam(relu_attributions=True)``: one object and one call per layer. pytorch-grad-cam
  ``GradCAM``: one object per layer, one call each (its multi-layer mode returns one fused map, timed
  separately as ``fused``; its output is resized to the input and min-max scaled in numpy, as it always is).
  TorchCAM ``GradCAM(target_layer=[4 layers])``: one forward through the hooked model and one extractor call.
* ``gradxact x4``: gradient x activation summed over channels at the 4 layers. extagg ``scaling+sum``;
  Captum ``LayerGradientXActivation(layer=[4 layers])`` (one pass) followed by the channel sum.
* ``saliency``: input gradient, max over colour channels of its absolute value. extagg ``gradient``
  (``bias+abs+max`` at ``input``); Captum ``Saliency`` (abs=True) followed by the channel max.

The peers get the model as torchvision builds it (parameters require grad: pytorch-grad-cam and TorchCAM call
``backward()``, which then also computes weight gradients; Captum uses ``autograd.grad`` and does not).
extagg and the limit turn parameter gradients off themselves.
"""
from __future__ import annotations

import sys
import warnings

import torch

import common as C
import extagg

LAYERS = C.LAYERS["resnet50"]


def build(device: str, batch: int):
    model = C.build_model("resnet50", device)
    for p in model.parameters():  # as torchvision builds it
        p.requires_grad_(True)
    images = C.make_images(batch, device)
    targets = torch.full((batch,), C.TARGET_CLASS, dtype=torch.long, device=device)
    return model, images, targets


def frozen_limit(model, images, layers, targets):
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return C.limit_pass(model, images, layers, targets)
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)


def tasks(model, images, targets, device: str) -> dict[str, dict]:
    """{task: {implementation: callable}}; peers that fail to import are left out (with a note on stderr)."""
    mods = dict(model.named_modules())
    layer_mods = [mods[n] for n in LAYERS]
    out = {
        "gradcam x4": {
            "limit (4 layers)": lambda: frozen_limit(model, images, LAYERS, targets),
            "extagg": lambda: extagg.saliency(model, images, "gradcam", LAYERS, targets=targets),
        },
        "gradxact x4": {
            "limit (4 layers)": lambda: frozen_limit(model, images, LAYERS, targets),
            "extagg": lambda: extagg.saliency(model, images, "scaling+sum", LAYERS, targets=targets),
        },
        "saliency": {
            "limit (input)": lambda: _input_limit(model, images, targets),
            "extagg": lambda: extagg.saliency(model, images, "gradient", "input", targets=targets),
        },
    }
    try:
        from captum.attr import LayerGradCam, LayerGradientXActivation, Saliency

        gcs = [LayerGradCam(model, m) for m in layer_mods]
        gxa = LayerGradientXActivation(model, layer_mods)
        sal = Saliency(model)
        out["gradcam x4"]["captum"] = lambda: [g.attribute(images, target=targets, relu_attributions=True) for g in gcs]
        out["gradxact x4"]["captum"] = lambda: [a.sum(1) for a in gxa.attribute(images, target=targets)]
        out["saliency"]["captum"] = lambda: sal.attribute(images, target=targets).amax(1)
    except ImportError as e:
        print(f"captum unavailable: {e}", file=sys.stderr)
    try:
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        per_layer = [PGC(model=model, target_layers=[m]) for m in layer_mods]
        fused = PGC(model=model, target_layers=layer_mods)
        out["gradcam x4"]["pytorch-grad-cam"] = lambda: [c(input_tensor=images, targets=pgc_targets) for c in per_layer]
        out["gradcam x4"]["pytorch-grad-cam fused (1 map)"] = lambda: fused(input_tensor=images, targets=pgc_targets)
    except ImportError as e:
        print(f"pytorch-grad-cam unavailable: {e}", file=sys.stderr)
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        extractor = TCGradCAM(model, target_layer=LAYERS)

        def torchcam():
            extractor._hooks_enabled = True
            scores = model(images)
            return extractor(class_idx=targets.tolist(), scores=scores)

        out["gradcam x4"]["torchcam"] = torchcam
        out["_torchcam_extractor"] = extractor
    except ImportError as e:
        print(f"torchcam unavailable: {e}", file=sys.stderr)
    return out


def _input_limit(model, images, targets):
    """The limit for input saliency: one forward + one backward to the input."""
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            out = model(x)
            return torch.autograd.grad(out.gather(1, targets.view(-1, 1)).sum(), x)
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)


HIDDEN = "internal: measure one implementation's peak memory in this process"


def run_peak(args) -> None:
    model, images, targets = build(args.device, args.batch)
    ts = tasks(model, images, targets, args.device)
    _detach_torchcam(ts, keep=(args.task, args.impl) if args.impl == "torchcam" else None)
    C.report_peak(ts[args.task][args.impl], args.device)


def _detach_torchcam(ts, keep=None):
    """TorchCAM's hooks stay on the model from construction on; other implementations run without them."""
    ex = ts.pop("_torchcam_extractor", None)
    if ex is not None:
        ex._hooks_enabled = keep is not None


def main(argv=None) -> None:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--peak", action="store_true", help=HIDDEN)
    p.add_argument("--task", default=None, help=HIDDEN)
    p.add_argument("--impl", default=None, help=HIDDEN)
    p.add_argument("--batch", type=int, default=None, help=HIDDEN)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.peak:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        return run_peak(args)
    env = C.setup(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = {"env": env, "runs": []}
    for batch in args.batches:
        model, images, targets = build(args.device, batch)
        ts = tasks(model, images, targets, args.device)
        extractor = ts.pop("_torchcam_extractor", None)
        for task, impls in ts.items():
            log(f"== {task}, batch {batch}")
            if extractor is not None:  # TorchCAM's hooks on only while TorchCAM runs
                impls = {k: (_with_hooks(extractor, f) if k == "torchcam" else _without_hooks(extractor, f))
                         for k, f in impls.items()}
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 2)
            timing = C.time_interleaved(impls, repeats, args.warmup, args.device, log=log)
            peak = {}
            if not args.no_memory:
                for impl in impls:
                    mib, exact = C.peak_in_subprocess("bench_peers.py", [
                        "--peak", "--task", task, "--impl", impl, "--batch", str(batch),
                        "--device", args.device, "--threads", str(env["threads"])])
                    peak[impl] = {"mib": mib, "exact": exact}
            run = {"task": task, "batch": batch, "timing": timing, "peak": peak}
            results["runs"].append(run)
            print_run(run)
        if extractor is not None:
            extractor.remove_hooks()
    C.dump(args.json, results)


def _with_hooks(extractor, f):
    def g():
        extractor._hooks_enabled = True
        try:
            return f()
        finally:
            extractor._hooks_enabled = False
    return g


def _without_hooks(extractor, f):
    def g():
        extractor._hooks_enabled = False
        return f()
    return g


def print_run(run: dict) -> None:
    t, pk = run["timing"], run["peak"]
    lim_name = next(k for k in t if k.startswith("limit"))
    lim, ext = t[lim_name]["median_s"], t["extagg"]["median_s"]
    plim = pk.get(lim_name, {}).get("mib")
    rows = []
    for name, r in t.items():
        m = pk.get(name)
        rows.append([name, r["median_s"], r["median_s"] / lim, r["median_s"] / ext,
                     "-" if not m else f"{m['mib']:.0f}", "-" if not (m and plim) else f"{m['mib'] / plim:.2f}"])
    print(f"\n### {run['task']}, ResNet50, batch {run['batch']}", flush=True)
    print(C.table(rows, ["implementation", "median s", "x limit", "x extagg", "peak MiB", "peak x limit"]), flush=True)


if __name__ == "__main__":
    main()
