"""Quantus's randomisation metrics as extagg metrics (registered through ``register_metrics`` like a third party):
random-logit, mprt, efficient-mprt and smooth-mprt.

**Layers and their order (mprt, efficient-mprt, smooth-mprt)** follow Quantus 0.6, not the built-in
``randomisation`` metric: every module that has a ``reset_parameters`` method (convolutions, linear and
normalisation layers: leaves, not blocks), in the order ``model.named_modules()`` lists them (registration
order), reversed for ``top_down``. Each is re-initialised by its own ``reset_parameters()`` after
``torch.manual_seed(seed + 1)`` (the same seed for every layer, as Quantus; BatchNorm's reset also resets its
running statistics). ``top_down`` and ``bottom_up`` are cascading (cumulative); ``independent`` resets the trained
weights before each layer. The built-in ``randomisation`` metric instead re-initialises *blocks*
(``ctx.blocks()``: the top-level children with parameters, ordered output first by the last time they run in a
forward pass) with seeded re-draws that keep BatchNorm statistics. The global RNG state is left unchanged here
(Quantus reseeds it), and the user's model is never touched (a deep copy, restored after the metric).

Every step explains the randomised copy once for all maps of the batch (``ctx.run_maps``): one saliency pass per
randomised layer (mprt, or one when ``skip_layers``), one in all for efficient-mprt (it reads only the fully
randomised model), ``nr_samples`` per layer plus ``nr_samples - 1`` for the trained model for smooth-mprt (its
clean map is the shared pass's). The
random-logit map comes from the shared pass (``Metric.columns``): it costs nothing extra.
"""
from __future__ import annotations

import math
from contextlib import closing

import numpy as np
import torch

from extagg.plugin import (Cost, InputError, Measure, Metric, Param, Value, floats, hookimpl, seed_of, spearman,
                           values_of)

ORDERS = ("top_down", "bottom_up", "independent")


# --------------------------------------------------------------------------------------------- layers
def quantus_layers(model: torch.nn.Module, layer_order: str = "top_down") -> list[str]:
    """Names of the modules Quantus randomises, in its order (see the module docstring)."""
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    if not names:
        raise InputError("the model has no module with reset_parameters() to randomise")
    return names[::-1] if layer_order == "top_down" else names


def _reset(module: torch.nn.Module, seed: int) -> None:
    devices = [p.device.index for p in module.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted(set(devices))), torch.no_grad():
        torch.manual_seed(seed + 1)
        module.reset_parameters()


def _steps(ctx, layer_order: str, seed: int, skip_layers: bool):
    """Yield (subset, work model) after each randomisation step that is measured; the copy is restored at the end."""
    work = ctx.work_model()
    layers = quantus_layers(work, layer_order)
    kind = "independent" if layer_order == "independent" else "cascading"
    ctx.restore()
    try:
        for i, name in enumerate(layers):
            if layer_order == "independent":
                ctx.restore()
            _reset(work.get_submodule(name), seed)
            if skip_layers and i + 1 < len(layers):
                continue
            yield f"{kind}:{name}", work
    finally:
        ctx.restore()


def _last(subsets, **_):
    main = [s for s in subsets if ":" in s]
    return main[-1] if main else None


def _order_params(order: str, skip: bool):
    return [Param("layer_order", str, order, "top_down (cascading from the output), bottom_up (cascading from the "
                  "input) or independent (one layer at a time); Quantus's layers: modules with reset_parameters",
                  choices=ORDERS),
            Param("seed", int, 42, "torch seed (+ 1) before each layer's reset_parameters (Quantus's)"),
            Param("skip_layers", bool, skip, "explain only after the last layer (one subset)")]


def _emit(out, keys, subset, measure, per_key):
    out += values_of(keys, {measure: per_key}, subset)


# --------------------------------------------------------------------------------------------- mprt
def _mprt(ctx, layer_order="top_down", seed=42, skip_layers=False, abs=True):
    keys = ctx.keys
    base = ctx.maps_for()
    ref = torch.stack([base[k] for k in keys]).to(torch.float64)
    ref = ref.abs() if abs else ref
    out: list = []
    with closing(_steps(ctx, layer_order, seed, skip_layers)) as steps:
        for subset, work in steps:
            maps = ctx.run_maps(work, ctx.explained)
            other = torch.stack([maps[k][:, 0] for k in keys]).to(ref)
            _emit(out, keys, subset, "spearman", spearman(ref, other.abs() if abs else other))
    return out


def _layers_cost(blocks: int, skip: bool) -> int:
    return 1 if skip else max(1, blocks)


MPRT = Metric(
    name="mprt", compute=_mprt,
    measures=[Measure(name="spearman", direction="zero", low=-1, high=1,
                      doc="Spearman between the absolute maps of the trained and the randomised model")],
    params=[*_order_params("top_down", False),
            Param("abs", bool, True, "compare absolute maps (Quantus's default)")],
    needs={"model_copy", "extra_passes"},
    headline=_last,
    cost=lambda n, keys, blocks, skip_layers=False, **_: Cost(saliency_passes=_layers_cost(blocks, skip_layers)),
    doc="Model parameter randomisation test (Quantus's MPRT): Spearman rank correlation of each absolute map with "
        "the map of a copy whose layers are re-initialised one after another, top-down; one subset per layer "
        "(cascading:<layer>), the headline is the last, fully randomised one (Quantus's return_last_correlation). "
        "Closest to zero is best. Quantus's layers and order (modules with reset_parameters), not the built-in "
        "randomisation's blocks. Normalisation is left out: a rank correlation does not see it. The sweep's cost "
        "preview counts one pass per run block; this metric takes one per reset-able layer.",
    reference="Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018",
)


# --------------------------------------------------------------------------------------------- efficient mprt
def discrete_entropy(maps: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """Entropy (natural log) of the histogram of each (..., H, W) map's values in ``n_bins`` equal bins over its
    own [min, max] (numpy.histogram's edges and bins, in float64); NaN for a map with a NaN."""
    flat = maps.detach().to(torch.float64).reshape(-1, maps.shape[-2] * maps.shape[-1])
    out = []
    for row in flat:
        if not bool(torch.isfinite(row).all()):
            out.append(math.nan)
            continue
        lo, hi = float(row.min()), float(row.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = torch.as_tensor(np.linspace(lo, hi, n_bins + 1), device=row.device)
        counts = torch.bincount(torch.bucketize(row, edges[1:-1], right=True), minlength=n_bins).to(torch.float64)
        p = counts[counts > 0] / counts.sum()
        out.append(float(-(p * p.log()).sum()))
    return torch.tensor(out, dtype=torch.float64).reshape(maps.shape[:-2])


def _efficient(ctx, layer_order="bottom_up", seed=42, n_bins=100, abs=False):
    keys = ctx.keys
    base = ctx.maps_for()
    ref = torch.stack([base[k] for k in keys]).to(torch.float64)
    before = discrete_entropy(ref.abs() if abs else ref, n_bins)
    out: list = []
    with closing(_steps(ctx, layer_order, seed, skip_layers=True)) as steps:
        for _, work in steps:
            maps = ctx.run_maps(work, ctx.explained)
            other = torch.stack([maps[k][:, 0] for k in keys]).to(torch.float64)
            after = discrete_entropy(other.abs() if abs else other, n_bins)
            ratio = (after - before) / before
            ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, math.nan))
            _emit(out, keys, "all", "complexity_change", ratio)
    return out


EFFICIENT_MPRT = Metric(
    name="efficient-mprt", compute=_efficient,
    measures=[Measure(name="complexity_change", direction="higher", low=-1.0,
                      doc="relative change of the map's discrete entropy from the trained to the fully randomised "
                          "model: (H_random - H) / H")],
    params=[Param("layer_order", str, "bottom_up", "the order layers are randomised in (the fully randomised "
                  "model is the same for every order)", choices=ORDERS[:2]),
            Param("seed", int, 42, "torch seed (+ 1) before each layer's reset_parameters (Quantus's)"),
            Param("n_bins", int, 100, "histogram bins of the discrete entropy (Quantus's default, no rule)",
                  check=lambda v: None if v >= 2 else "must be >= 2"),
            Param("abs", bool, False, "absolute maps (Quantus's default: no)")],
    needs={"model_copy", "extra_passes"},
    cost=lambda n, keys, blocks, **_: Cost(saliency_passes=1),
    doc="Efficient MPRT (eMPRT): how much more complex (discrete entropy of the map's value histogram, 100 bins) "
        "the map of the fully randomised model is than the trained model's: (H_random - H) / H, higher is better. "
        "Quantus's definition and defaults (every reset-able layer randomised, one saliency pass).",
    reference="Hedström et al., Sanity Checks Revisited: An Exploration to Repair the Model Parameter "
              "Randomisation Test, XAI in Action workshop, NeurIPS 2023",
)


# --------------------------------------------------------------------------------------------- smooth mprt
def smooth_noise_steps(seed: int, image_ids, shape, steps: int):
    """``steps`` draws of (N, *shape) standard normal float64 noise on the CPU, one generator per image seeded by
    ``seed_of(seed, image id, "smooth-mprt")`` (the same draws for every smoothing of a run: trained and every
    randomised model see the same noisy inputs)."""
    gens = [torch.Generator().manual_seed(seed_of(seed, image, "smooth-mprt")) for image in image_ids]
    return [torch.stack([torch.randn(tuple(shape), dtype=torch.float64, generator=g) for g in gens])
            for _ in range(steps)]


def _smoothed(ctx, model, noise, std) -> dict:
    """{key: (N, H, W) float64}: the mean of the maps of the noisy inputs and of the clean input (the last sample,
    as Quantus), accumulated as Quantus does (each map divided by the sample count, then summed)."""
    x64 = ctx.x.detach().to(torch.float64)
    total = len(noise) + 1
    acc: dict = {}
    for eps in [*noise, None]:
        if eps is None and model is ctx.model:  # the trained model on the clean input: the shared pass
            maps = {k: m[:, None] for k, m in ctx.maps_for().items()}
        else:
            x = ctx.x if eps is None else (x64 + eps.to(x64.device) * std).to(ctx.x.dtype)
            maps = ctx.run_maps(model, ctx.explained, x=x)
        for k in ctx.keys:
            m = maps[k][:, 0].to(torch.float64) / total
            acc[k] = m if k not in acc else acc[k] + m
    return acc


def _smooth(ctx, layer_order="bottom_up", seed=42, skip_layers=False, nr_samples=50, noise_magnitude=0.1,
            abs=True):
    keys = ctx.keys
    x = ctx.x
    dims = tuple(range(1, x.ndim))
    std = (noise_magnitude * (x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True))).to(torch.float64)
    noise = smooth_noise_steps(ctx.seed, ctx.image_ids, x.shape[1:], nr_samples - 1)
    trained = _smoothed(ctx, ctx.model, noise, std)
    ref = torch.stack([trained[k] for k in keys])
    ref = ref.abs() if abs else ref
    out: list = []
    with closing(_steps(ctx, layer_order, seed, skip_layers)) as steps:
        for subset, work in steps:
            other = _smoothed(ctx, work, noise, std)
            b = torch.stack([other[k] for k in keys])
            _emit(out, keys, subset, "spearman", spearman(ref, b.abs() if abs else b))
    return out


SMOOTH_MPRT = Metric(
    name="smooth-mprt", compute=_smooth,
    measures=[Measure(name="spearman", direction="zero", low=-1, high=1,
                      doc="Spearman between the denoised absolute maps of the trained and the randomised model")],
    params=[*_order_params("bottom_up", False),
            Param("nr_samples", int, 50, "maps averaged per denoised map: nr_samples - 1 noisy inputs and the "
                  "clean one", check=lambda v: None if 1 <= v <= 10_000 else "must be in 1..10000"),
            Param("noise_magnitude", float, 0.1, "noise std as a fraction of each image's value range",
                  check=lambda v: None if v >= 0 else "must be >= 0"),
            Param("abs", bool, True, "compare absolute maps (Quantus's default)")],
    needs={"model_copy", "extra_passes"},
    headline=_last,
    cost=lambda n, keys, blocks, skip_layers=False, nr_samples=50, **_: Cost(
        saliency_passes=nr_samples * (1 + _layers_cost(blocks, skip_layers)) - 1),
    doc="Smooth MPRT (sMPRT): MPRT on denoised maps, each the mean of the maps of nr_samples - 1 Gaussian-noised "
        "copies of the input and the clean input, for the trained and for every randomised model (bottom-up); one "
        "subset per layer, headline the last. Closest to zero is best. Follows the paper (and Quantus without "
        "a_batch): the trained model's map is denoised too, not the shared pass's map; the noise is drawn per image "
        "id and shared by all models of a run.",
    reference="Hedström et al., Sanity Checks Revisited: An Exploration to Repair the Model Parameter "
              "Randomisation Test, XAI in Action workshop, NeurIPS 2023",
)


# --------------------------------------------------------------------------------------------- random logit
def off_classes(seed: int, image_ids, explained: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N,) a class other than the explained one, uniform over the others, seeded per (seed, image id)."""
    if n_classes < 2:
        raise InputError(f"random-logit needs a model with at least 2 classes, got {n_classes}")
    out = []
    for image, y in zip(image_ids, explained.tolist()):
        g = torch.Generator().manual_seed(seed_of(seed, image, "random-logit"))
        c = int(torch.randint(n_classes - 1, (1,), generator=g))
        out.append(c + (c >= y))
    return torch.tensor(out, dtype=torch.long)


def ssim_uniform(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, k1: float = 0.01, k2: float = 0.03,
                 flat: bool = False) -> torch.Tensor:
    """Mean SSIM of (N, H, W) map pairs as scikit-image's ``structural_similarity`` with its defaults (a uniform
    7x7 window, sample covariance, the mean over positions whose window lies inside the map) and the data range
    of each pair (max - min over both maps), as Quantus calls it; float64; NaN for a constant pair. ``flat``:
    of the flattened maps (1-D signals, a 7-wide window), as Quantus 0.6's RandomLogit computes it."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    if flat:
        a, b = a.flatten(1)[:, None], b.flatten(1)[:, None]
        pool = lambda t: torch.nn.functional.avg_pool1d(t, win_size, stride=1)  # noqa: E731
    else:
        a, b = a[:, None], b[:, None]
        pool = lambda t: torch.nn.functional.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    both = torch.cat([a, b], 1).flatten(1)
    rng = (both.amax(1) - both.amin(1)).reshape(-1, *[1] * (a.ndim - 1))
    ux, uy = pool(a), pool(b)
    points = win_size ** (a.ndim - 2)
    cov = points / (points - 1)
    vx, vy = cov * (pool(a * a) - ux * ux), cov * (pool(b * b) - uy * uy)
    vxy = cov * (pool(a * b) - ux * uy)
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _normalised(m: torch.Tensor, normalise: bool, abs: bool) -> torch.Tensor:
    m = m.to(torch.float64)
    if normalise:
        peak = m.flatten(1).abs().amax(1)
        m = m / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]
    return m.abs() if abs else m


def _off(ctx):
    return off_classes(ctx.seed, ctx.image_ids, ctx.explained, ctx.scores.shape[1])


def _random_logit(ctx, normalise=True, abs=False, flatten=False):
    keys = ctx.keys
    mine, other = ctx.maps_for(), ctx.maps_for(_off(ctx))
    out: list = []
    for k in keys:
        s = ssim_uniform(_normalised(mine[k], normalise, abs), _normalised(other[k], normalise, abs), flat=flatten)
        out += [Value(k, i, "all", "ssim", v) for i, v in enumerate(floats(s))]
    return out


RANDOM_LOGIT = Metric(
    name="random-logit", compute=_random_logit,
    columns=lambda ctx, **_: [_off(ctx)],
    measures=[Measure(name="ssim", direction="lower",
                      doc="SSIM between the map of the explained class and the map of a random other class (in "
                          "[-1, 1] for the default 2-D SSIM; Quantus's 1-D SSIM of flattened maps, flatten=true, "
                          "takes its data range from one map and can leave [-1, 1])")],
    params=[Param("normalise", bool, True, "divide each map by its max |value| (Quantus's default; Quantus divides "
                  "by the batch's max, per map here so that a number never depends on its batch)"),
            Param("abs", bool, False, "absolute maps (Quantus's default: no)"),
            Param("flatten", bool, False, "SSIM of the flattened maps with a 1-D window, as Quantus 0.6 computes "
                  "it (default: of the 2-D maps, as the paper)")],
    cost=lambda n, keys, blocks, **_: Cost(),
    doc="Random logit: SSIM (scikit-image's, uniform 7x7 window) between the map of the explained class and the "
        "map of a class drawn uniformly from the others (seeded per image id; Quantus draws for the batch with "
        "numpy); lower is better. Follows the paper where Quantus 0.6 differs: SSIM of the 2-D maps, where "
        "Quantus flattens them into 1-D signals first (flatten=true gives Quantus's number). The other class's "
        "maps come from the shared pass; the number of classes is the model's (Quantus's num_classes).",
    reference="Sixt et al., When Explanations Lie: Why Many Modified BP Attributions Fail, ICML 2020",
)

METRICS: tuple = (RANDOM_LOGIT, MPRT, EFFICIENT_MPRT, SMOOTH_MPRT)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
