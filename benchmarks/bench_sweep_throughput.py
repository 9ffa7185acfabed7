"""Throughput of ``extagg sweep`` (images/s), against two baselines measured in the same run on the same images:

* **limit**: the model calls the sweep actually makes, recorded during its first timed run (a forward pre-hook on
  the model, which its copies keep, and a wrapper of ``torch.autograd.grad``) and replayed on the raw model (no
  extagg, no metric): the classes' forward, each saliency pass with its backward target columns (one per batch
  and pass-modifier group; each randomisation step; each per-example step and pass), and the distinct curve
  images the curves forward after their sharing, in the batches the sweep used. A lower bound on what any
  implementation making those calls costs (the replay takes gradients to the input, the sweep to its layers);
* **reference**: one pass per method per metric, with extagg's own per-metric evaluations
  (``class_sensitivity``, ``parameter_randomisation``, ``faithfulness`` for deletion and insertion, and a
  saliency call per method with its ``conv`` twin for the identity check).

Two configurations (``--config``), without layer combinations (the per-metric evaluations have none), on the
first ``--images`` scikit-image photos, all in one batch:

* ``default``: the sweep's default (EfficientNet-Lite0, 5 methods, ``stages`` + ``_conv_head``);
* ``resnet50-space``: torchvision ResNet50 with seeded random weights (``random_weights``; nothing to download),
  the whole built-in space (``extagg.methods()`` with only extagg's own plugins loaded, 504 compositions, plus
  the 4 named methods outside it, which carry a propagation rule: 508) at ``layer1..layer4`` and ``layer4.2.conv2``, every metric without annotations,
  photos resized to ``--side`` px, randomisation of the blocks ``--randomise`` (default: fc, layer4, layer3). Its
  reference is timed on every ``--reference-stride``-th method that fits a layer (a fixed sample) and
  extrapolated linearly to all of them; ``--reference-stride 1`` runs it in full.

Prints a table and writes JSON and the table under ``benchmarks/results/``.

    python benchmarks/bench_sweep_throughput.py --images 3 --out benchmarks/results/sweep_throughput_cpu.json
    python benchmarks/bench_sweep_throughput.py --config resnet50-space --images 1 --side 112 --steps 2 \\
        --reference-stride 46 --out benchmarks/results/sweep_throughput_resnet50_space.json

``--device cuda`` runs all three on a GPU (times synchronised, the GPU's peak memory beside the process's RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import attrs
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402  (benchmarks/common.py; leaves third-party plugins unloaded)

from extagg import default_registry  # noqa: E402
from extagg.evaluation import class_sensitivity, parameter_randomisation, spearman  # noqa: E402
from extagg.evaluation.common import model_inputs, run_saliency  # noqa: E402
from extagg.evaluation import faithfulness  # noqa: E402
from extagg.layer_select import select_layers  # noqa: E402
from extagg.models import load_model  # noqa: E402
from extagg.sweep import SweepConfig  # noqa: E402
from extagg.sweep.compute import BatchRunner  # noqa: E402
from extagg.sweep.cost import estimate, preview  # noqa: E402
from extagg.sweep.data import load_samples  # noqa: E402
from extagg.sweep.plan import make_plan  # noqa: E402


def timed(fn) -> float:
    """Wall seconds of ``fn()``, CUDA work included (synchronised before and after)."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


class ModelCalls:
    """Records the model calls of a sweep: every call of the model (and of the copies the sweep makes of it: a
    deep copy keeps the hooks) as ``["forward", batch, grad enabled]`` and every ``torch.autograd.grad`` as
    ``["backward", columns]`` (the targets of a batched call), in order. What the sweep actually runs after its
    sharing: one pass per batch and target set, the distinct curve images, each randomisation step, each
    per-example step and pass."""

    def __init__(self, model):
        self.model, self.events, self._handle, self._grad = model, [], None, None

    def __enter__(self):
        def pre(_module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            self.events.append(["forward", int(x.shape[0]), torch.is_grad_enabled()])

        real = torch.autograd.grad

        def grad(outputs, inputs, grad_outputs=None, *a, is_grads_batched=False, **k):
            columns = int(grad_outputs[0].shape[0] if isinstance(grad_outputs, (list, tuple)) else
                          grad_outputs.shape[0]) if is_grads_batched and grad_outputs is not None else 1
            self.events.append(["backward", columns])
            return real(outputs, inputs, grad_outputs, *a, is_grads_batched=is_grads_batched, **k)

        self._handle = self.model.register_forward_pre_hook(pre, with_kwargs=True)
        self._grad, torch.autograd.grad = real, grad
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        torch.autograd.grad = self._grad

    def counts(self) -> dict:
        fwd = [e for e in self.events if e[0] == "forward"]
        return {"forward_no_grad_images": sum(e[1] for e in fwd if not e[2]),
                "forward_no_grad_calls": sum(1 for e in fwd if not e[2]),
                "forward_grad_images": sum(e[1] for e in fwd if e[2]),
                "forward_grad_calls": sum(1 for e in fwd if e[2]),
                "backward_calls": sum(1 for e in self.events if e[0] == "backward"),
                "backward_columns": sum(e[1] for e in self.events if e[0] == "backward")}


def limit_passes(model, x, events) -> None:
    """The model calls a sweep made (``ModelCalls.events``), replayed on the raw model: each forward on a batch of
    the recorded size (gradient-free ones under ``no_grad``), each backward as one autograd call of the recorded
    columns (batched like the engine's), from the last forward's logits to the input."""
    out = xi = None
    last_backward = {}  # forward index -> index of its last backward (retain the graph until then)
    owner = None
    for i, e in enumerate(events):
        if e[0] == "forward":
            owner = i if e[2] else None
        elif owner is not None:
            last_backward[owner] = i
    for i, e in enumerate(events):
        if e[0] == "forward":
            batch = x[:e[1]] if e[1] <= x.shape[0] else x[:1].expand(e[1], -1, -1, -1)
            if e[2]:
                xi = batch.detach().clone().requires_grad_(True)
                out, owner = model(xi), i
            else:
                with torch.no_grad():
                    model(batch)
                out, owner = None, None
        elif out is not None:
            keep = last_backward.get(owner, i) != i
            if e[1] > 1:
                seeds = torch.zeros(e[1], *out.shape, dtype=out.dtype, device=out.device)
                for k in range(e[1]):
                    seeds[k, :, k % out.shape[1]] = 1
                torch.autograd.grad(out, xi, grad_outputs=seeds, is_grads_batched=True, retain_graph=keep)
            else:
                torch.autograd.grad(out[:, 0].sum(), xi, retain_graph=keep)


def reference(model, preprocess, samples, plan, config, registry, methods) -> None:
    """One pass per method per metric, through extagg's per-metric evaluations, for each of ``methods``."""
    common = dict(preprocess=preprocess, batch_size=len(samples), registry=registry)
    for m in methods:
        mine = [layer for mm, layer in plan.pairs if mm == m]  # the layers the method fits, as the sweep's pairs
        class_sensitivity(model, samples, [m], mine, **common)
        parameter_randomisation(model, samples, [m], mine, randomise=list(plan.blocks), mode="cascading",
                                hog_cell=config.hog_cell, **common)
        for mode in ("deletion", "insertion"):
            faithfulness(model, samples, [m], mine, mode=mode, steps=config.steps, baseline=config.baseline,
                         curve_batch_size=config.curve_batch, mismatched="skip", **common)
        twins = [(layer, t) for (mm, layer), t in plan.twins.items() if mm == m]
        if twins:  # a per-example method (meta) takes one (image, target) pair per pass, as the sweep runs it
            x = model_inputs(model, [s.image for s in samples], preprocess)
            maps, _ = run_saliency(model, x, [m, twins[0][1]], [layer for layer, _ in twins], resize=True,
                                   registry=registry)
            for layer, t in twins:
                spearman(maps[m, layer], maps[t, layer])


def resnet50_space(args):
    """ResNet50 (seeded random weights), the whole built-in space at 5 layers, the photos at ``args.side`` px."""
    config = SweepConfig(model="resnet50", random_weights=True, methods=SPACE, layers=RESNET50_LAYERS,
                         randomise=tuple(args.randomise), limit=args.images, combine=(), batch_size=args.images,
                         steps=args.steps or 2, progress=False, figures=False)
    config.check_weights()
    torch.manual_seed(config.seed)  # as the sweep seeds random weights
    model, preprocess = load_model(config.model, random_weights=True)
    return config, model, attrs.evolve(preprocess, size=args.side, resize=args.side)


def default(args):
    config = SweepConfig(limit=args.images, combine=(), batch_size=args.images, progress=False, figures=False,
                         **({"steps": args.steps} if args.steps else {}))
    model, preprocess = load_model()
    return config, model, preprocess


LIMIT = "limit (the sweep's model calls)"
CONFIGS = {"default": default, "resnet50-space": resnet50_space}
SPACE = ("*", "deconvolution", "excitation-backprop", "guided-backprop", "rectified-gradient")
"""``extagg.methods()`` (the listed space) and the built-in named methods outside it (each carries a rule)."""
RESNET50_LAYERS = ("layer1", "layer2", "layer3", "layer4", "layer4.2.conv2")


def set_up(config, model, preprocess, methods=None, layers=None):
    """``(config, registry, samples, inputs, plan)`` of a configuration, with a subset of its methods or layers."""
    if methods or layers:
        config = attrs.evolve(config, **({"methods": tuple(methods)} if methods else {}),
                              **({"layers": tuple(layers)} if layers else {}))
    registry = default_registry()
    samples = load_samples(config)
    x = model_inputs(model, [s.image for s in samples], preprocess)
    found = select_layers(model, list(config.layers), x[:1])
    plan = make_plan(config, model, registry, [s.image_id for s in samples], x[:1], found)
    return config, registry, samples, x, plan


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="curve intervals (default: the sweep's default; "
                    "resnet50-space: 2)")
    ap.add_argument("--side", type=int, default=112, help="resnet50-space: input side in px")
    ap.add_argument("--randomise", nargs="+", default=["fc", "layer4", "layer3"], help="resnet50-space: blocks")
    ap.add_argument("--methods", nargs="+", default=None, help="resnet50-space: a subset (development runs)")
    ap.add_argument("--layers", nargs="+", default=None, help="resnet50-space: a subset (development runs)")
    ap.add_argument("--reference-stride", type=int, default=None,
                    help="time the reference on every k-th method and extrapolate (default: 1 for default, "
                         "46 for resnet50-space)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds (sweep, limit, reference each round); the minimum per kind is kept")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k]: the sweep, the limit and the reference all "
                    "run there (CUDA times synchronised; peak GPU memory reported beside the process's RSS)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config, model, preprocess = CONFIGS[args.config](args)
    config = attrs.evolve(config, device=args.device)
    model = model.to(args.device)
    config, registry, samples, x, plan = set_up(config, model, preprocess, args.methods, args.layers)
    cost = estimate(plan, config, registry, {}, list(plan.batches))
    print(preview(plan, config, registry, cost, config.model), flush=True)
    runner = BatchRunner(model, preprocess, plan, config, registry)
    n = len(samples)
    stride = args.reference_stride or (46 if args.config == "resnet50-space" else 1)
    fitting = list(dict.fromkeys(m for m, _ in plan.pairs))  # methods that fit no layer cost nothing either way
    sample = fitting[::stride]
    scale = len(fitting) / len(sample)
    timed(lambda: limit_passes(model, x[:1], [["forward", 1, True], ["backward", 2], ["forward", 1, False]]))
    calls = ModelCalls(model)

    def run_sweep():
        if calls.events:  # recorded in the first round (the hooks cost a Python call per model call)
            list(runner.run(samples, lambda metric: True))
        else:
            with calls:
                list(runner.run(samples, lambda metric: True))

    kinds = {"sweep": run_sweep,
             LIMIT: lambda: limit_passes(model, x, calls.events),
             "reference (pass per method per metric)": lambda: reference(model, preprocess, samples, plan, config,
                                                                         registry, sample)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    load_before = os.getloadavg()[0]
    peaks: dict[str, float] = {}
    gpu_peaks: dict[str, float] = {}
    cuda = str(args.device).startswith("cuda")
    for _ in range(args.rounds):  # interleaved, so that a drift of the machine's load hits every kind alike
        for name, fn in kinds.items():
            fresh = C.reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timed(fn) * (scale if name.startswith("reference") else 1.0))
            peaks[name] = peak_rss_mib() if fresh else float("nan")
            if cuda:
                gpu_peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 20
    rows = {k: min(v) for k, v in times.items()}
    t_sweep = rows["sweep"]
    what = (f"{args.config}: {config.model}{' (random weights)' if config.random_weights else ''}, {n} photo(s) "
            f"at {tuple(x.shape[-2:])} px in one batch, {len(plan.methods)} methods x {len(plan.layers)} layers "
            f"({len(plan.pairs)} fitting pairs, {len(plan.twins)} identity twins), metrics {', '.join(plan.metrics)}, "
            f"{config.steps} curve intervals, randomised blocks {', '.join(plan.blocks)}; min of {args.rounds} "
            f"interleaved round(s); torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}"
            f"{', ' + torch.cuda.get_device_name(args.device) if cuda else ''}; load average before: {load_before:.2f}")
    lines = [what]
    if stride > 1:
        lines.append(f"reference: timed on {len(sample)} of the {len(fitting)} methods that fit a layer "
                     f"(every {stride}th) and extrapolated linearly (x {scale:.2f})")
    lines.append(f"{'':42}{'seconds':>10}{'images/s':>11}{'time / sweep':>14}{'peak RSS MiB':>14}"
                 + (f"{'peak GPU MiB':>14}" if cuda else ""))
    for name, t in rows.items():
        lines.append(f"{name:42}{t:>10.1f}{n / t:>11.5f}{t / t_sweep:>14.2f}{peaks[name]:>14.0f}"
                     + (f"{gpu_peaks[name]:>14.0f}" if cuda else ""))
    lines.append(f"sweep / limit = {t_sweep / rows[LIMIT]:.2f}; "
                 f"reference / sweep = {rows['reference (pass per method per metric)'] / t_sweep:.2f}; "
                 f"load average after: {os.getloadavg()[0]:.2f}")
    c = calls.counts()
    lines.append(f"the sweep's model calls (replayed by the limit): {c['forward_grad_calls']} forward passes with "
                 f"gradients ({c['forward_grad_images']} images) and {c['backward_calls']} backward calls "
                 f"({c['backward_columns']} target columns); {c['forward_no_grad_calls']} gradient-free forward "
                 f"passes ({c['forward_no_grad_images']} images: the classes and the distinct curve images); "
                 f"the preview's upper bound on curve images: {cost.curve_images}")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "images": n, "side": list(x.shape[-2:]), "methods": len(plan.methods),
                       "layers": list(plan.layers), "pairs": len(plan.pairs), "twins": len(plan.twins),
                       "metrics": list(plan.metrics), "steps": config.steps, "blocks": list(plan.blocks),
                       "reference_sample": sample, "fitting_methods": len(fitting), "reference_scale": scale,
                       "seconds": rows, "device": args.device, "peak_gpu_mib": gpu_peaks,
                       "all_seconds": times, "peak_rss_mib": peaks, "cost": attrs.asdict(cost),
                       "model_calls": calls.counts(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "when": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".txt", "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
