"""The cost preview printed before a sweep starts: units, passes, and the methods that will be slow."""
from __future__ import annotations

import math

import attrs

from .config import SweepConfig
from .plan import SweepPlan


@attrs.frozen
class Cost:
    """Work still to do. ``saliency_passes``: forward+backward passes (a per-example method's SGD step counts as
    one more); ``class_passes``: gradient-free forwards for the classes; ``curve_images`` / ``curve_passes``:
    at most this many images evaluated by the deletion/insertion curves and the forward passes they take (every
    map's interior points, the two endpoints once per image; maps that rank pixels alike share more, which only
    the maps can tell)."""

    units: dict  # metric -> (all, done)
    saliency_passes: int
    class_passes: int
    curve_images: int
    curve_passes: int


def _groups(plan: SweepPlan, registry, methods) -> tuple[int, int]:
    """(distinct pass-modifier groups of batched methods, of per-example methods)."""
    plain = {registry.parse(m).modifiers for m in methods if m not in plan.per_example}
    special = {registry.parse(m).modifiers for m in methods if m in plan.per_example}
    return len(plain), len(special)


def estimate(plan: SweepPlan, config: SweepConfig, registry, done: dict, pending: list[tuple[int, ...]]) -> Cost:
    units = {}
    for metric in plan.metrics:
        all_units = plan.units(metric, plan.image_ids)
        units[metric] = (len(all_units), sum(1 for u in all_units if u in done))
    base_methods = list(dict.fromkeys([*plan.methods, *plan.twins.values()]))
    g_base, e_base = _groups(plan, registry, base_methods)
    g_rand, e_rand = _groups(plan, registry, plan.methods)
    columns = 1
    if "sensitivity" in plan.metrics:
        columns = 2 if config.targets == "predicted" else 3
    steps = len(plan.blocks) * (2 if config.randomisation == "both" else 1) if "randomisation" in plan.metrics else 0
    curves = sum(1 for m in ("deletion", "insertion") if m in plan.metrics)
    maps = len(plan.keys("deletion"))
    saliency = classes = curve_images = curve_passes = 0
    for batch in pending:
        n = len(batch)
        if "pointing" in plan.metrics:  # one image, its classes: at least one
            saliency += g_base + 2 * e_base
            continue
        classes += 1
        saliency += g_base + 2 * n * columns * e_base + steps * (g_rand + 2 * n * e_rand)
        images = n * (maps * (config.steps - 1) + 2)  # endpoints (no / every pixel changed) shared by all maps
        curve_images += curves * images
        curve_passes += curves * math.ceil(images / config.curve_batch)
    return Cost(units, saliency, classes, curve_images, curve_passes)


def preview(plan: SweepPlan, config: SweepConfig, registry, cost: Cost, model_label: str) -> str:
    """The text printed before the sweep starts."""
    n_img = len(plan.image_ids)
    lines = [f"extagg sweep -> {config.run_dir}",
             f"  model {model_label}; data {config.data}: {n_img} image(s) in batches of "
             f"{len(plan.batches[0]) if plan.batches else 0}; seed {config.seed}",
             f"  {len(plan.methods)} method(s) x {len(plan.layers)} layer(s): {len(plan.pairs)} fitting (method, layer) "
             f"pairs" + (f", + {len(plan.combinations)} layer combination(s) for {len(plan.combined)} method(s)"
                         if plan.combined else ""),
             f"  {'metric':<14}{'units':>8}{'done':>8}{'to do':>8}"]
    total = done = 0
    for metric, (a, d) in cost.units.items():
        lines.append(f"  {metric:<14}{a:>8}{d:>8}{a - d:>8}")
        total, done = total + a, done + d
    lines.append(f"  {'total':<14}{total:>8}{done:>8}{total - done:>8}   (unit = method x layer x metric x image)")
    lines.append(f"  passes to run: {cost.saliency_passes} forward+backward (saliency), {cost.class_passes} "
                 f"gradient-free forward (classes)")
    if cost.curve_images:
        lines.append(f"                 at most {cost.curve_images} images through the deletion/insertion curves "
                     f"({config.steps + 1} points per curve, endpoints shared) in {cost.curve_passes} forward "
                     f"passes of up to {config.curve_batch}")
    if plan.blocks:
        lines.append(f"  randomisation ({config.randomisation}), output first: {', '.join(plan.blocks)}")
    if plan.per_example:
        lines.append("  one pass per (image, class) (per-example modifier): " + ", ".join(sorted(plan.per_example)))
    if plan.slow:
        lines.append("  WARNING: no closed form; these materialise their outer-product contributions in chunks "
                     "(generic path, slow and memory-hungry at wide layers): " + ", ".join(plan.slow))
    if "identity" in plan.metrics and not plan.twins:
        lines.append("  note: identity needs Conv2d layers (add e.g. a conv by name); no identity units")
    return "\n".join(lines)
