"""What the Quantus-style metric families share: the maps of a batch as one float64 tensor, Quantus's
pre-processing of a map (normalise by the maximum absolute value, then the absolute value), the explained class's
region of every image, Quantus's fill values (``perturb_baseline``) and the layout of the returned values.

One deliberate difference from Quantus 0.6.0 is made here for every metric: Quantus divides a whole ``a_batch``
by its single largest absolute value, so an image's score depends on the other images it is called with; extagg
divides each map by its own largest absolute value (the same as calling Quantus one image at a time).
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import InputError, Param, values_of

BASELINES = ("black", "white", "mean", "zero")
REGIONS = ("mask", "box")


def flag(name: str, default: bool, doc: str) -> Param:
    return Param(name, bool, default, doc)


def abs_normalise_params(abs_: bool, normalise: bool) -> list[Param]:
    """``abs`` and ``normalise`` with a metric's Quantus defaults."""
    return [flag("normalise", normalise, "divide each map by its largest absolute value first (Quantus's "
                 "normalise_by_max, per map)"),
            flag("abs", abs_, "take the absolute value of the (normalised) map")]


def maps_of(ctx) -> tuple[list, torch.Tensor]:
    """(keys, (K, N, H, W) float64 maps of the explained classes)."""
    keys = list(ctx.keys)
    base = ctx.maps_for()
    if not keys:
        return keys, torch.zeros((0, ctx.n) + tuple(ctx.size), dtype=torch.float64)
    return keys, torch.stack([base[k].detach().to(torch.float64) for k in keys])


def prepare(maps: torch.Tensor, normalise: bool = True, abs_: bool = False) -> torch.Tensor:
    """Quantus's pre-processing of (..., H, W) maps, per map: divide by the largest absolute value (an all-zero
    map is left as it is), then the absolute value."""
    out = maps.to(torch.float64)
    if normalise:
        top = out.abs().amax(dim=(-2, -1), keepdim=True)
        out = torch.where(top > 0, out / torch.where(top > 0, top, torch.ones_like(top)), out)
    return out.abs() if abs_ else out


emit = values_of
"""Values from ``{measure: (K, N) tensor}``."""


def baseline_param(default: str = "black") -> Param:
    return Param("perturb_baseline", str, default, "what a removed feature becomes, per image: black (the image's "
                 "smallest value over all channels, Quantus's), white (largest), mean, or zero",
                 choices=BASELINES)


def baseline_values(x: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 1, 1, 1) fill values of Quantus's ``perturb_baseline`` for (N, C, H, W) ``x``: ``black`` / ``white``:
    each image's smallest / largest value over all channels and pixels, ``mean`` its mean, ``zero`` 0."""
    flat = x.flatten(1)
    if name == "black":
        v = flat.amin(1)
    elif name == "white":
        v = flat.amax(1)
    elif name == "mean":
        v = flat.mean(1)
    else:
        v = torch.zeros((x.shape[0],), dtype=x.dtype, device=x.device)
    return v.reshape(-1, 1, 1, 1).to(x.dtype)


# ------------------------------------------------------------------------------------------------ regions
def box_of(mask: torch.Tensor) -> torch.Tensor:
    """The bounding rectangle of an (H, W) bool mask, as a mask (an empty mask stays empty)."""
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    out = torch.zeros_like(mask)
    if len(rows):
        out[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1] = True
    return out


def regions(ctx, region: str = "mask") -> torch.Tensor:
    """(N, H, W) bool region of every image's explained class at the maps' size (nearest-neighbour resize of the
    sample's masks, the union where several annotated classes map to it; empty where none does), or its bounding
    box with ``region="box"``. Masks are taken to cover the same field of view as the model input (a resize, not a
    crop, between the image and the input)."""
    cmap = ctx.settings.get("class_map")
    h, w = ctx.size
    out = torch.zeros((ctx.n, h, w), dtype=torch.bool)
    for i, sample in enumerate(ctx.samples):
        if sample.masks is None:
            raise InputError(f"image {sample.image_id!r} has no masks; localisation metrics need a mask of the "
                             "explained class (a data set with masks or boxes, or score(..., masks=...))")
        e = int(ctx.explained[i])
        rows = [j for j in sample.evaluated if e in _model_classes(cmap, sample.classes[j])]
        if not rows:
            continue
        m = sample.masks[rows].bool().any(0).cpu()
        if tuple(m.shape) != (h, w):
            m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
        out[i] = box_of(m) if region == "box" else m
    return out


def _model_classes(cmap, data_class: int) -> tuple:
    """The model classes a data-set class stands for (itself without a class map)."""
    if cmap is None:
        return (data_class,)
    return tuple(cmap.groups[data_class]) if 0 <= data_class < len(cmap.groups) else ()


def region_param(default: str = "mask") -> Param:
    return Param("region", str, default, "the explained class's region: mask (as annotated) or box (its bounding "
                 "rectangle)", choices=REGIONS)


def nan_where(t: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    return t.masked_fill(bad, math.nan)


def predict(model: torch.nn.Module, x: torch.Tensor, softmax: bool = False, batch: int = 256) -> torch.Tensor:
    """(N, classes) class scores of ``x`` in the model's dtype (logits, or probabilities with ``softmax``), in eval
    mode without gradients, ``batch`` images per forward; the model's mode is left as it was."""
    from extagg.plugin import class_scores  # every module's mode, the gradients and hooks kept as they were

    out = torch.cat([class_scores(model, x[s:s + batch]) for s in range(0, x.shape[0], batch)])
    return out.softmax(-1) if softmax else out
