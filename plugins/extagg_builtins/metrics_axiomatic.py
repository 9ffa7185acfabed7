"""Quantus's axiomatic metrics as extagg metrics (registered through ``register_metrics`` like a third party).

Completeness and non-sensitivity forward perturbed copies of each image; what they forward does not depend on
the map, so every (method, layer) of a batch shares the same forwards. Input invariance makes one further
saliency pass of every method, on shifted inputs through a copy of the model whose first layer absorbs the shift.
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import Cost, InputError, Measure, Metric, Param, hookimpl

from .quantus_prep import (abs_normalise_params, baseline_param, baseline_values, emit, flag, maps_of, nan_where,
                           predict, prepare)

ASSUMED_FEATURES = 3 * 224 * 224
"""Input features (C x H x W) the cost preview of non-sensitivity assumes (its cost has no image size)."""


def _targets(ctx) -> torch.Tensor:
    return ctx.explained.to(ctx.x.device)


def _forward_batch(ctx) -> int:
    return int(ctx.settings.get("curve_batch", 64))


# --------------------------------------------------------------------------------------------- completeness
def _completeness(ctx, perturb_baseline: str = "black", softmax: bool = False, normalise: bool = True,
                  abs: bool = False):
    keys, maps = maps_of(ctx)
    x = ctx.x
    rows = torch.arange(ctx.n, device=x.device)
    y = _targets(ctx)
    base = torch.zeros_like(x) + baseline_values(x, perturb_baseline)
    batch = _forward_batch(ctx)
    at_x, at_base = predict(ctx.model, x, softmax, batch), predict(ctx.model, base, softmax, batch)
    delta = (at_x[rows, y] - at_base[rows, y]).to(maps.device)  # in the model's dtype
    total = prepare(maps, normalise, abs).sum((-2, -1))
    bad = ~torch.isfinite(maps).flatten(2).all(-1)
    holds = (total == delta.to(torch.float64)[None]).to(torch.float64)  # Quantus's exact equality
    gap = maps.sum((-2, -1)) - delta.to(torch.float64)[None]
    return emit(keys, {"holds": nan_where(holds, bad), "gap": nan_where(gap, bad)})


COMPLETENESS = Metric(
    name="completeness",
    compute=_completeness,
    measures=[Measure(name="holds", direction="higher", low=0, high=1,
                      doc="Quantus's score: 1 if the pre-processed map sums exactly to f(x) - f(baseline) of the "
                          "explained class, else 0"),
              Measure(name="gap", direction="zero",
                      doc="the paper's quantity: the raw map's sum minus f(x) - f(baseline) (0 when complete)")],
    params=[baseline_param("black"), flag("softmax", False, "score probabilities instead of logits")]
    + abs_normalise_params(False, True),
    needs={"extra_passes"},
    cost=lambda n, keys, blocks, **params: Cost(forward_images=2 * n),
    doc="Completeness: does the map sum to the difference of the explained class's score between the image and "
        "the baseline image (every pixel replaced)? holds is Quantus's exact-equality test (with its default "
        "normalisation it almost never holds); gap is the signed difference on the map as given, the "
        "continuous form of the paper's axiom. The baseline image replaces every input value (the paper's); "
        "Quantus 0.6.0 replaces only as many values as the attribution has, so with an (N, 1, H, W) map only "
        "channel 0.",
    reference="Sundararajan et al., Axiomatic Attribution for Deep Networks, ICML 2017",
)


# --------------------------------------------------------------------------------------------- non-sensitivity
def _non_sensitivity(ctx, eps: float = 1e-5, features_in_step: int = 1, perturb_baseline: str = "black",
                     softmax: bool = True, normalise: bool = True, abs: bool = True):
    keys, maps = maps_of(ctx)
    x = ctx.x
    n, c, h, w = x.shape
    features = c * h * w
    if features % features_in_step:
        raise InputError(f"non-sensitivity: features_in_step={features_in_step} must divide the input's "
                         f"{c} x {h} x {w} = {features} features")
    y = _targets(ctx)
    fill = baseline_values(x, perturb_baseline)
    groups = features // features_in_step
    batch = _forward_batch(ctx)
    steady = torch.zeros((n, groups), dtype=torch.bool)
    for i in range(n):
        flat = x[i].reshape(-1)
        y0 = predict(ctx.model, x[i:i + 1], softmax)[0, y[i]]
        for start in range(0, groups, batch):
            g = torch.arange(start, min(start + batch, groups), device=x.device)
            copies = flat.repeat(len(g), 1)
            cols = g[:, None] * features_in_step + torch.arange(features_in_step, device=x.device)[None]
            copies.scatter_(1, cols, fill[i].reshape(1, 1).expand_as(cols).to(copies.dtype))
            out = predict(ctx.model, copies.reshape(len(g), c, h, w), softmax, batch)[:, y[i]]
            steady[i, start:start + len(g)] = ((out - y0).abs() < eps).cpu()
    insensitive = steady.repeat_interleave(features_in_step, dim=1).reshape(n, c, h, w)
    a = prepare(maps, normalise, abs).cpu()
    zero = (a < eps)[:, :, None]  # (K, N, 1, H, W): the map is shared by the channels
    count = (zero ^ insensitive[None]).flatten(2).sum(-1).to(torch.float64)
    bad = ~torch.isfinite(maps).flatten(2).all(-1).cpu()
    return emit(keys, {"violations": nan_where(count, bad)})


NON_SENSITIVITY = Metric(
    name="non-sensitivity",
    compute=_non_sensitivity,
    measures=[Measure(name="violations", direction="lower", low=0, high=math.inf,
                      doc="input features (channel x pixel) where a zero map value and an unchanged prediction "
                          "disagree")],
    params=[Param("eps", float, 1e-5, "below this a map value counts as zero and a score change as none",
                  check=lambda v: None if v > 0 else "must be > 0"),
            Param("features_in_step", int, 1, "input features (in C x H x W order) removed together",
                  check=lambda v: None if v >= 1 else "must be >= 1"),
            baseline_param("black"), flag("softmax", True, "compare probabilities (true) or logits")]
    + abs_normalise_params(True, True),
    needs={"extra_passes"},
    cost=lambda n, keys, blocks, features_in_step=1, **params: Cost(
        forward_images=n * (1 + ASSUMED_FEATURES // features_in_step)),
    doc="Non-sensitivity: count the input features (each channel of each pixel, the map's value shared by the "
        "channels) to which the map gives zero but the model is sensitive, or the reverse: each feature is "
        "replaced by the baseline in turn and the explained class's probability compared. One forward per "
        "feature (C H W per image; the cost preview assumes 3 x 224 x 224). With features_in_step > 1 each "
        "feature takes its group's sensitivity; Quantus 0.6.0 only runs with features_in_step = 1.",
    reference="Nguyen & Martinez, On Quantitative Aspects of Model Interpretability, arXiv 2007.07584, 2020",
)


# --------------------------------------------------------------------------------------------- input invariance
def first_layer(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The first Conv2d or Linear module in registration order (Quantus takes the first module)."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            return name, module
    raise InputError("input-invariance needs a model whose first layer is a Conv2d or Linear (its bias absorbs "
                     "the input shift); this model has neither")


def absorb_shift(module: torch.nn.Module, shift: float):
    """A forward hook handle that moves ``module``'s bias from b to b - W m for the constant input shift m (the
    paper's construction; a bias-free layer gets the bias -W m): the layer's output on x + m equals its output
    on x wherever its receptive field lies inside the image."""
    weight = module.weight.detach()
    correction = -shift * weight.flatten(1).sum(1)
    shape = (1, -1, 1, 1) if isinstance(module, torch.nn.Conv2d) else (1, -1)

    def hook(mod, inputs, output):
        return output + correction.reshape(shape).to(output)

    return module.register_forward_hook(hook)


def _input_invariance(ctx, input_shift: float = -1.0, normalise: bool = False, abs: bool = False):
    keys, maps = maps_of(ctx)
    work = ctx.work_model()
    _, module = first_layer(work)
    handle = absorb_shift(module, input_shift)
    try:
        methods = sorted({k[0] for k in keys}, key=[k[0] for k in keys].index)
        shifted = ctx.run_maps(work, ctx.explained, methods, x=ctx.x + input_shift)
    finally:
        handle.remove()
        ctx.restore()
    b = torch.stack([shifted[k][:, 0].detach().to(torch.float64) for k in keys]).to(maps.device)
    a, b = prepare(maps, normalise, abs), prepare(b, normalise, abs)
    close = ((a - b).abs() <= 1e-4 + 1e-5 * b.abs()).flatten(2).all(-1).to(torch.float64)
    diff = (a - b).abs().flatten(2).amax(-1)
    bad = ~torch.isfinite(a).flatten(2).all(-1) | ~torch.isfinite(b).flatten(2).all(-1)
    return emit(keys, {"invariant": nan_where(close, bad), "max_difference": nan_where(diff, bad)})


INPUT_INVARIANCE = Metric(
    name="input-invariance",
    compute=_input_invariance,
    measures=[Measure(name="invariant", direction="higher", low=0, high=1,
                      doc="1 if every pixel of the shifted input's map is close to the map (numpy isclose, "
                          "atol 1e-4, rtol 1e-5), else 0 (Quantus's score)"),
              Measure(name="max_difference", direction="lower", low=0,
                      doc="the largest absolute pixel difference between the two maps")],
    params=[Param("input_shift", float, -1.0, "the constant added to every input value"),
            *abs_normalise_params(False, False)],
    needs={"model_copy", "extra_passes"},
    cost=lambda n, keys, blocks, **params: Cost(saliency_passes=1),
    doc="Input invariance: a model copy whose first layer's bias absorbs a constant input shift (b - W m) computes "
        "the same function of the shifted input; does the method give the same map? Differs from Quantus 0.6.0 "
        "where the first layer pads: Quantus subtracts the smallest value over positions of the layer's response "
        "to the shift, here its value away from the border (W m, the paper's); both agree without padding. And "
        "every input value is shifted here, where Quantus's default shift leaves each image's first value "
        "(channel 0, pixel (0, 0)) as it was.",
    reference="Kindermans et al., The (Un)reliability of Saliency Methods, in Explainable AI (LNCS 11700), 2019 "
              "(arXiv 1711.00867, 2017)",
)

METRICS: tuple = (COMPLETENESS, NON_SENSITIVITY, INPUT_INVARIANCE)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
