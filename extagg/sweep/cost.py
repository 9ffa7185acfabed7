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
    the maps can tell); ``maps`` / ``maps_bytes``: the maps ``--save-maps`` keeps for the report, all batches, and
    at most how many bytes they take before compression."""

    units: dict  # metric -> (all, done)
    saliency_passes: int
    class_passes: int
    curve_images: int
    curve_passes: int
    maps: int = 0  # maps saved for the report (--save-maps), all batches
    maps_bytes: int = 0  # their size before compression, at most


def _groups(plan: SweepPlan, registry, methods) -> tuple[int, int]:
    """(distinct pass-modifier groups of batched methods, of per-example methods)."""
    methods = [m for m in methods if m not in plan.external]  # external explainers: counted apart
    plain = {registry.parse(m).modifiers for m in methods if m not in plan.per_example}
    special = {registry.parse(m).modifiers for m in methods if m in plan.per_example}
    return len(plain), len(special)


def estimate(plan: SweepPlan, config: SweepConfig, registry, done: dict, pending: list[tuple[int, ...]],
             size=None) -> Cost:
    """The work still to do, from each metric's declared cost (:class:`extagg.plugin.Cost`) per batch; ``size``:
    the model's input (H, W), for the size of the saved maps."""
    units = {}
    for metric in plan.metrics:
        all_units = plan.units(metric, plan.image_ids)
        units[metric] = (len(all_units), sum(1 for u in all_units if u in done))
    companions = [t for c in plan.layout.companions.values() for t in c.values()]
    base_methods = list(dict.fromkeys([*plan.methods, *companions]))
    g_base, e_base = _groups(plan, registry, base_methods)
    g_rand, e_rand = _groups(plan, registry, plan.methods)
    shared = [c for c in plan.calls if not c.metric.per_image]
    columns = 1 + sum(2 for c in shared if c.metric.columns is not None)  # an upper bound: columns may coincide
    saliency = classes = curve_images = curve_passes = 0
    for batch in pending:
        n = len(batch)
        if shared:
            classes += 1
            saliency += g_base + 2 * n * columns * e_base
        for call in plan.calls:
            c = (call.metric.cost(n, plan.keys(str(call)), len(plan.blocks), **call.kwargs)
                 if call.metric.cost is not None else None)
            if c is None:
                continue
            saliency += c.saliency_passes * (g_rand + 2 * n * e_rand)
            if c.forward_images:
                curve_images += c.forward_images
                curve_passes += math.ceil(c.forward_images / config.curve_batch)
    from .saved_maps import estimate_bytes, saved_keys

    n_maps = len(saved_keys(plan)) * len(plan.image_ids) if config.save_maps != "none" else 0
    return Cost(units, saliency, classes, curve_images, curve_passes, n_maps,
                estimate_bytes(config.save_maps, n_maps, len(plan.image_ids), size))


def preview(plan: SweepPlan, config: SweepConfig, registry, cost: Cost, model_label: str) -> str:
    """The text printed before the sweep starts."""
    n_img = len(plan.image_ids)
    w = max([14, *(len(m) + 2 for m in plan.metrics)])
    lines = [f"extagg sweep -> {config.run_dir}",
             f"  model {model_label}; data {config.data}: {n_img} image(s) in batches of "
             f"{len(plan.batches[0]) if plan.batches else 0}; seed {config.seed}",
             f"  {len(plan.methods)} method(s) x {len(plan.layers)} layer(s): {len(plan.pairs)} fitting (method, layer) "
             f"pairs" + (f", + {len(plan.combinations)} layer combination(s) for {len(plan.combined)} method(s)"
                         if plan.combined else ""),
             f"  {'metric':<{w}}{'units':>8}{'done':>8}{'to do':>8}"]
    total = done = 0
    for metric, (a, d) in cost.units.items():
        lines.append(f"  {metric:<{w}}{a:>8}{d:>8}{a - d:>8}")
        total, done = total + a, done + d
    lines.append(f"  {'total':<{w}}{total:>8}{done:>8}{total - done:>8}   (unit = method x layer x metric x image)")
    lines.append(f"  passes to run: {cost.saliency_passes} forward+backward (saliency), {cost.class_passes} "
                 f"gradient-free forward (classes)")
    if cost.curve_images:
        lines.append(f"                 at most {cost.curve_images} images through the metrics' own forward passes "
                     f"(deletion/insertion curves, endpoints shared) in {cost.curve_passes} passes of up to "
                     f"{config.curve_batch}")
    if cost.maps:
        from .saved_maps import human_bytes

        lines.append(f"  maps saved for the report (--save-maps {config.save_maps}): {cost.maps} maps and "
                     f"{len(plan.image_ids)} photos, at most {human_bytes(cost.maps_bytes)} before compression")
    if plan.blocks:
        lines.append(f"  randomised blocks, output first, one step each: {', '.join(plan.blocks)}")
    if plan.external:
        lines.append("  external explainers (layer 'external'; called for the shared pass and again for every "
                     "further pass, their cost not counted above): " + ", ".join(plan.external))
    if plan.per_example:
        lines.append("  one pass per (image, class) (per-example modifier): " + ", ".join(sorted(plan.per_example)))
    if plan.slow:
        lines.append("  WARNING: no closed form; these materialise their outer-product contributions in chunks "
                     "(generic path, slow and memory-hungry at wide layers): " + ", ".join(plan.slow))
    for metric, twins in plan.layout.companions.items():
        if not twins:
            lines.append(f"  note: {metric} has no layer its companion method fits (identity needs Conv2d layers: "
                         "add e.g. a conv by name); no units")
    return "\n".join(lines)
