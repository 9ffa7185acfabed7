"""Built-in metrics: class sensitivity, parameter randomisation, the identity check, deletion, insertion and
the pointing game, registered through ``register_metrics`` exactly as a third-party metric is.

Floors: class sensitivity and parameter randomisation report, next to the measured similarity, the same
similarity between trained maps of *different* images (``floor:cross-image``: what shared position alone gives)
and against a random map exactly as smooth as the map (``floor:smooth-noise``: an amplitude-adjusted Fourier
surrogate of the map, its amplitude spectrum and values with random phases; what SSIM and HOG give any two maps of
that smoothness). The pointing game
reports the centre baseline as ``floor:centre``.
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import (Cost, Measure, Metric, Param, Value, hookimpl, rank_correlation, ranked, rearranged,
                           rearranged_side, seed_of, similarities_to, similarity_reference, spearman, values_of)

CROSS, SMOOTH = "floor:cross-image", "floor:smooth-noise"
SIMILARITY = (-1.0, 1.0)
SIMILARITY_PIXELS = 1 << 20
"""Map pixels (keys x images x H x W) whose randomisation similarities are computed in one batched call (their
float64 temporaries are a few times 8 bytes per pixel)."""


def _emit(out: list, keys, subset: str, measures: dict) -> None:
    """Append Values from {measure: (len(keys) * N,) tensor} laid out key-major."""
    out += values_of(keys, measures, subset)


def _nan(out: list, keys, n: int, subset: str, measures) -> None:
    out += [Value(k, i, subset, m, float("nan")) for m in measures for k in keys for i in range(n)]


# --------------------------------------------------------------------------------------------- sensitivity
PAIRINGS = ("bottom", "random", "second")


def _paired_class(ctx, pairing: str = "bottom") -> torch.Tensor:
    scores = ctx.scores
    if pairing == "bottom":
        return scores.argmin(1).cpu()
    if pairing == "second":
        return scores.topk(2, dim=1).indices[:, 1].cpu()
    top = scores.argmax(1).cpu()
    out = []
    for i, image in enumerate(ctx.image_ids):  # uniform over the other classes, seeded per image
        g = torch.Generator().manual_seed(seed_of(ctx.seed, image, "sensitivity"))
        c = int(torch.randint(scores.shape[1] - 1, (1,), generator=g))
        out.append(c + (c >= int(top[i])))
    return torch.tensor(out, dtype=torch.long)


def _sensitivity_columns(ctx, pairing: str = "bottom"):
    if ctx.scores.shape[1] < 2:
        from extagg.plugin import InputError

        raise InputError(f"class sensitivity needs (N, C) scores with C >= 2 classes, got shape "
                         f"{tuple(ctx.scores.shape)}")
    return [ctx.scores.argmax(1).cpu(), _paired_class(ctx, pairing)]


def _sensitivity(ctx, pairing: str = "bottom"):
    keys = ctx.keys
    top = ctx.maps_for(ctx.scores.argmax(1).cpu())
    other = ctx.maps_for(_paired_class(ctx, pairing))
    a = torch.stack([top[k] for k in keys])
    b = torch.stack([other[k] for k in keys])
    out: list = []
    # each map ranked once per measure (signed, absolute); its floors' partners are rearrangements of it, ranked
    # by rearranging its ranks: the next image's map (cross-image) and its smooth-noise surrogate
    order = torch.stack([ctx.smooth_noise_order(k, top[k]) for k in keys])
    got: dict = {}
    for measure, f in (("spearman", lambda t: t), ("spearman_abs", torch.abs)):
        side = ranked(f(a))
        got[f"top-vs-{pairing}", measure] = rank_correlation(side, ranked(f(b)))
        if ctx.n > 1:
            rolled = tuple(torch.stack([ctx.cross_image(t) for t in part]) for part in side)
            got[CROSS, measure] = rank_correlation(side, rolled)
        got[SMOOTH, measure] = rank_correlation(side, rearranged_side(side, order))
        del side
    for subset in (f"top-vs-{pairing}", CROSS, SMOOTH):
        if subset == CROSS and ctx.n < 2:
            _nan(out, keys, ctx.n, CROSS, ("spearman", "spearman_abs"))
        else:
            _emit(out, keys, subset, {m: got[subset, m] for m in ("spearman", "spearman_abs")})
    return out


SENSITIVITY = Metric(
    name="sensitivity",
    compute=_sensitivity,
    columns=_sensitivity_columns,
    measures=[Measure(name="spearman", direction="lower", low=-1, high=1,
                      doc="Spearman between the top class's map and the paired class's map"),
              Measure(name="spearman_abs", direction="lower", low=-1, high=1, doc="the same on absolute maps")],
    params=[Param("pairing", str, "bottom", "the class paired with the top class: bottom (least probable, the "
                  "paper), random (uniform over the others, seeded per image) or second (runner-up)",
                  choices=PAIRINGS)],
    headline=lambda subsets, pairing="bottom": f"top-vs-{pairing}",
    cost=lambda n, keys, blocks, pairing="bottom": Cost(),
    doc="Class sensitivity: do the maps change with the explained class? Lower is better (the paper's reading; a "
        "map anti-correlated with the other class's map changed with the class). Floors: the same correlation "
        "between top-class maps of different images, and against smooth noise.",
    reference="Rebuffi et al., There and Back Again, CVPR 2020, Sec. 4.3",
)


# --------------------------------------------------------------------------------------------- randomisation
RANDOMISATION_MODES = ("cascading", "independent", "both")


def measured(n: int, checkpoints: int) -> list[int]:
    """The block indices (of ``n``, output first) whose step is measured: all, or ``checkpoints`` of them evenly
    spaced, the last (fully randomised) included."""
    if checkpoints <= 0 or checkpoints >= n:
        return list(range(n))
    return sorted({math.ceil((j + 1) * n / checkpoints) - 1 for j in range(checkpoints)})


def _steps(blocks, mode, checkpoints=0):
    """(subset or None when the step is not measured, block index, reset to trained first)."""
    chosen = set(measured(len(blocks), checkpoints))
    steps = []
    if mode in ("cascading", "both"):  # every block in turn, cumulatively; similarities at the chosen steps
        steps += [(f"cascading:{b}" if i in chosen else None, i, i == 0) for i, b in enumerate(blocks)]
    if mode in ("independent", "both"):
        steps += [(f"independent:{b}", i, True) for i, b in enumerate(blocks) if i in chosen]
    return steps


def _randomisation(ctx, mode: str = "cascading", init: str = "reset", hog_cell: int = 16, checkpoints: int = 0):
    from extagg.plugin import randomise_module

    keys = ctx.keys
    base = ctx.maps_for()
    refs = [base[k] for k in keys]
    out: list = []
    if not keys:
        return out
    per_key = max(1, refs[0].numel())
    chunk = max(1, SIMILARITY_PIXELS // per_key)
    spans = [(s, min(s + chunk, len(keys))) for s in range(0, len(keys), chunk)]
    references = [similarity_reference(torch.stack(refs[s:e]).flatten(0, 1), hog_cell=hog_cell) for s, e in spans]

    def record(subset, partners):
        """``partners(s, e)``: (the maps of keys[s:e] to compare, and where they are made of the trained maps, how:
        ``{"order": ...}`` rearranges each map's pixels, ``{"rows": ...}`` takes other maps; see similarities_to)."""
        for (s, e), reference in zip(spans, references):
            others, how = partners(s, e)
            b = torch.stack(others).flatten(0, 1).to(refs[0])
            _emit(out, keys[s:e], subset, similarities_to(reference, b, **how))

    def cross(s, e):  # each map's partner is the next image's map of the same key: a row of the reference
        rows = (torch.arange(e - s)[:, None] * ctx.n + ctx.cross_image(torch.arange(ctx.n))).flatten()
        return [ctx.cross_image(r) for r in refs[s:e]], {"rows": rows}

    def smooth(s, e):  # the smooth-noise surrogates rearrange the trained maps
        orders = [ctx.smooth_noise_order(k, r) for k, r in zip(keys[s:e], refs[s:e])]
        return [rearranged(r, o) for r, o in zip(refs[s:e], orders)], {"order": torch.stack(orders).flatten(0, 1)}

    if ctx.n > 1:
        record(CROSS, cross)
    else:
        _nan(out, keys, ctx.n, CROSS, ("spearman", "spearman_abs", "ssim", "hog"))
    record(SMOOTH, smooth)
    blocks = ctx.blocks()
    work = ctx.work_model()
    methods = sorted({k[0] for k in keys}, key=[k[0] for k in keys].index)
    try:
        for subset, i, reset in _steps(blocks, mode, checkpoints):
            if reset:
                ctx.restore()
            randomise_module(work.get_submodule(blocks[i]), ctx.seed + 7919 * (i + 1), _init(ctx, init))
            if subset is None:
                continue
            other = ctx.run_maps(work, ctx.explained, methods)
            record(subset, lambda s, e: ([other[k][:, 0] for k in keys[s:e]], {}))
    finally:
        ctx.restore()
    return out


def _init(ctx, init: str):
    """The call's ``init``, or a callable(module, generator) the run's settings give (the Python shorthand's)."""
    given = ctx.settings.get("init")
    return given if callable(given) else init


def _randomisation_headline(subsets, mode="cascading", **_):
    cascading = [s for s in subsets if s.startswith("cascading:")]
    independent = [s for s in subsets if s.startswith("independent:")]
    return cascading[-1] if cascading else independent[0] if independent else None


def _randomisation_cost(n, keys, blocks, mode="cascading", checkpoints=0, **_):
    return Cost(saliency_passes=len(measured(blocks, checkpoints)) * (2 if mode == "both" else 1))


RANDOMISATION = Metric(
    name="randomisation",
    compute=_randomisation,
    measures=[Measure(name="spearman", direction="zero", low=-1, high=1,
                      doc="Spearman between the trained and the randomised model's maps"),
              Measure(name="spearman_abs", direction="zero", low=-1, high=1, doc="the same on absolute maps"),
              Measure(name="ssim", direction="lower", low=-1, high=1, doc="SSIM of min-max normalised maps"),
              Measure(name="hog", direction="zero", low=-1, high=1, doc="Spearman of the maps' HOG features")],
    params=[Param("mode", str, "cascading", "cascading (cumulative, from the output down), independent (one "
                  "block at a time) or both", choices=RANDOMISATION_MODES),
            Param("init", str, "reset", "re-initialisation: reset (each layer's reset_parameters) or normal",
                  choices=("reset", "normal")),
            Param("hog_cell", int, 16, "HOG cell size in pixels", check=lambda v: None if v >= 1 else "must be >= 1"),
            Param("checkpoints", int, 0, "cascading: every block is randomised in turn; measure after this many "
                  "steps, evenly spaced, the last included (0: after every block); independent: these blocks",
                  check=lambda v: None if v >= 0 else "must be >= 0")],
    needs={"model_copy", "extra_passes"},
    headline=_randomisation_headline,
    cost=_randomisation_cost,
    doc="Model-parameter randomisation: similarity of each map to the trained model's map after re-initialising "
        "blocks (one step per block, output first). Closest to zero is best for the rank correlations (an "
        "anti-correlated map depends on the weights as much as a correlated one); lower for SSIM. Read against "
        "the floors: the same similarity between maps of different images, and against smooth noise.",
    reference="Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018",
)


# --------------------------------------------------------------------------------------------- identity
IDENTITY_EXTRACTOR = "conv"
"""The identity metric's default real-layer extractor (the one definition: the sweep's ``identity_extractor``
defaults to it through the metric's parameter)."""


def _twin(registry, method, module, extractor: str = IDENTITY_EXTRACTOR):
    from extagg.plugin import Call

    if extractor not in registry.extractors:
        from extagg.plugin import UnknownNameError

        raise UnknownNameError("identity extractor", extractor, sorted(registry.extractors))
    if any(p.required for p in registry.extractors[extractor].params):
        from extagg.plugin import InputError

        raise InputError(f"identity extractor {extractor!r} needs parameters; choose a real-layer extractor without "
                         "required parameters, such as 'conv'")
    if module is None:
        return None
    parsed = registry.parse(method)
    if parsed.extractor.name == extractor:
        return None
    import attrs

    return str(attrs.evolve(parsed, extractor=Call(extractor, ()), named=None))


def _identity(ctx, extractor: str = IDENTITY_EXTRACTOR):
    keys = ctx.keys
    base = ctx.maps_for()
    out: list = []
    if keys:
        a = torch.stack([base[k] for k in keys])
        b = torch.stack([base[ctx.companion(k), k[1]] for k in keys])
        _emit(out, keys, "all", {"spearman": spearman(a, b)})
    return out


IDENTITY = Metric(
    name="identity",
    compute=_identity,
    companion=_twin,
    measures=[Measure(name="spearman", direction="higher", low=-1, high=1,
                      doc="Spearman between the method and the same method on the layer's real weights")],
    params=[Param("extractor", str, IDENTITY_EXTRACTOR, "the real-layer extractor each method is compared with (conv: a "
                  "Conv2d's own weight gradient, as in the paper)")],
    doc="Identity check: the virtual identity layer after a conv against the conv's own parameters (the paper's "
        "identity trick); higher is better. Scored at the layers where the real-layer extractor fits.",
    reference="Rebuffi et al., There and Back Again, CVPR 2020, Sec. 3",
)


# --------------------------------------------------------------------------------------------- curves
BASELINES = ("blur", "zero", "mean")


def _curve_metric(mode: str) -> Metric:
    def compute(ctx, steps: int = 8, baseline: str = "blur"):
        keys = ctx.keys
        base = ctx.maps_for()
        auc = ctx.curves([base[k] for k in keys], ctx.explained, mode, steps, baseline,
                         ctx.settings.get("curve_batch", 64))
        return [Value(k, i, "all", f"{mode}_auc", v) for j, k in enumerate(keys) for i, v in enumerate(auc[j])]

    def cost(n, keys, blocks, steps: int = 8, baseline: str = "blur"):
        return Cost(forward_images=n * (len(keys) * (steps - 1) + 2))

    return Metric(
        name=mode,
        compute=compute,
        cost=cost,
        measures=[Measure(name=f"{mode}_auc", direction="lower" if mode == "deletion" else "higher", low=0, high=1,
                          doc=f"area under the {mode} curve of the explained class's probability")],
        params=[Param("steps", int, 8, "curve intervals (steps + 1 points)",
                      check=lambda v: None if 1 <= v <= 10_000 else "must be in 1..10000"),
                Param("baseline", str, "blur", "what removed pixels become", choices=BASELINES)],
        needs={"extra_passes"},
        doc=f"RISE {mode}: {'remove' if mode == 'deletion' else 'insert'} pixels in the map's order and integrate "
            f"the explained class's probability; {'lower' if mode == 'deletion' else 'higher'} is better.",
        reference="Petsiuk et al., RISE, BMVC 2018",
    )


# --------------------------------------------------------------------------------------------- pointing
def _pointing(ctx, tolerance: float = 15.0):
    from extagg.plugin import center_point, difficult_by_rule, pointing_hit, saliency_point

    sample = ctx.samples[0]
    if sample.masks is None:
        from extagg.plugin import InputError

        raise InputError(f"image {sample.image_id!r} has no masks; the pointing metric needs localisation data")
    cmap = ctx.settings.get("class_map")
    keep = [i for i in sample.evaluated if cmap is None or cmap.mapped(sample.classes[i])]
    if not keep:
        return []
    classes = [sample.classes[i] for i in keep]
    targets = [cmap.groups[c][0] if cmap is not None else c for c in classes]
    masks = sample.masks[keep].bool().cpu()
    h, w = masks.shape[-2:]
    hard = difficult_by_rule(masks, len(sample.classes)).tolist()
    maps = ctx.run_maps(ctx.model, torch.tensor([targets]), size=(h, w))
    centre = torch.tensor([center_point(h, w)] * len(classes), dtype=torch.float64)
    out = []
    centre_hits = [float(pointing_hit(masks[t], centre[t], tolerance)) for t in range(len(classes))]
    for k in ctx.keys:
        points = saliency_point(maps[k][0]).cpu()
        for t, c in enumerate(classes):
            hit = float(pointing_hit(masks[t], points[t], tolerance))
            out.append(Value(k, 0, "all", "hit", hit, c))
            out.append(Value(k, 0, "floor:centre", "hit", centre_hits[t], c))
            if hard[t]:
                out.append(Value(k, 0, "difficult", "hit", hit, c))
                out.append(Value(k, 0, "floor:centre-difficult", "hit", centre_hits[t], c))
    return out


POINTING = Metric(
    name="pointing",
    compute=_pointing,
    per_image=True,
    measures=[Measure(name="hit", direction="higher", low=0, high=1,
                      doc="the map's maximum lies within `tolerance` pixels of the class's mask; averaged per "
                          "class, then over classes")],
    params=[Param("tolerance", float, 15.0, "hit radius in pixels (strict <)",
                  check=lambda v: None if v > 0 else "must be > 0")],
    needs={"labels", "masks"},
    cost=lambda n, keys, blocks, tolerance=15.0: Cost(saliency_passes=1),
    doc="Pointing game on every annotated class of each image (subsets all and difficult: area < 25% with "
        "another class present); floor: the centre of the image.",
    reference="Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016; Rebuffi et al. 2020",
)


@hookimpl
def register_metrics(register):
    for metric in (SENSITIVITY, RANDOMISATION, IDENTITY, _curve_metric("deletion"), _curve_metric("insertion"),
                   POINTING):
        register(metric)


