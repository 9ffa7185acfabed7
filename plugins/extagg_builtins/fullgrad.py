"""FullGrad (Srinivas & Fleuret 2019) as a sum over a layer group of one E&A method.

A multi-layer method in extagg is **a per-layer method string plus a layer group**: the per-layer term is an
ordinary composition (``fullgrad`` = ``bias-value+abs+sum``; ``fullgrad-pos``, ``fullgrad-signed``), the group
is :func:`fullgrad_layers` (``"input"`` and every Conv2d with a bias and every BatchNorm2d), and
:func:`fullgrad` runs them in one :func:`extagg.saliency` call and sums the normalised, upsampled layer maps.

Per layer, with ``t = f(b * g)`` (C, h, w) the filtered contribution (``f`` the method's pre-filters):

* ``normalise="minmax"`` (the reference code's ``_postProcess``): ``(t - min t) / (max t - min t + 1e-6)`` with
  min and max over the whole C x h x w tensor, per image and target, then the channel sum. extagg gets it
  without building ``t``: ``(sum_k t_k - C min) / (max - min + eps)`` with the min / max read from the maps of the
  same contribution under the ``min`` / ``max`` aggregators;
* ``normalise="maxabs"``: ``sum_k t_k / (max |t| + 1e-6)``;
* ``normalise="none"``: ``sum_k t_k``; with the signed method the layers then sum, with the output layer's
  bias term, to the logit (completeness).

Each layer map is upsampled to the input size (bilinear, ``align_corners=True``, as the reference) and the
layers are summed uniformly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import extagg
from extagg.plugin import InputError
from extagg_builtins.cams import BIAS_LAYERS

NORMALISATIONS = ("minmax", "maxabs", "none")
EPS = 1e-6


def fullgrad_layers(model: nn.Module) -> list[str]:
    """The layer group of FullGrad: ``"input"``, then every Conv2d with a bias and every BatchNorm2d, in
    registration order (Linear biases enter completeness as constants, not maps)."""
    out = ["input"]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is None:
            continue
        if isinstance(module, BIAS_LAYERS):
            out.append(name)
    return out


def _channels(model: nn.Module, layer: str, images: torch.Tensor) -> int:
    if layer == "input":
        return images.shape[1]
    module = dict(model.named_modules())[layer]
    return module.out_channels if isinstance(module, nn.Conv2d) else module.num_features


def fullgrad(model: nn.Module, images: torch.Tensor, targets=None, *, method: str = "fullgrad",
             layers: Optional[Sequence[str]] = None, normalise: Optional[str] = None, registry=None,
             per_layer: bool = False, **kwargs):
    """FullGrad maps (N, T, H, W) at the input's size: the sum over ``layers`` (default :func:`fullgrad_layers`)
    of ``method`` (a ``bias-value+<filters>+sum`` string or a named method expanding to one), each layer
    normalised as ``normalise`` (default ``"minmax"`` for a method with pre-filters, ``"maxabs"`` without) and
    upsampled. ``per_layer=True`` also returns ``{layer: map}`` before the sum. ``kwargs`` go to
    :func:`extagg.saliency`."""
    registry = registry or extagg.default_registry()
    parsed = registry.parse(method)
    if parsed.extractor.name != "bias-value" or parsed.aggregator.name != "sum" or parsed.post or parsed.modifiers:
        raise InputError(f"fullgrad needs a per-layer method 'bias-value+<pre-filters>+sum', got {str(parsed)!r}")
    if normalise is None:
        normalise = "minmax" if parsed.pre else "maxabs"
    if normalise not in NORMALISATIONS:
        raise InputError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    layers = list(layers) if layers is not None else fullgrad_layers(model)
    body = "+".join(["bias-value", *(str(c) for c in parsed.pre)])
    extra = {"minmax": [body + "+min", body + "+max"], "maxabs": ["bias-value+abs+max"], "none": []}[normalise]
    res = extagg.saliency(model, images, [str(parsed), *extra], layers, targets, registry=registry, **kwargs)
    size = tuple(images.shape[-2:])
    total, maps = 0, {}
    for layer in layers:
        m = res[str(parsed), layer]
        if normalise == "minmax":
            low = res[extra[0], layer].amin(dim=(-2, -1), keepdim=True)
            high = res[extra[1], layer].amax(dim=(-2, -1), keepdim=True)
            m = (m - _channels(model, layer, images) * low) / (high - low + EPS)
        elif normalise == "maxabs":
            m = m / (res[extra[0], layer].amax(dim=(-2, -1), keepdim=True) + EPS)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=True)
        maps[layer] = m
        total = total + m
    return (total, maps) if per_layer else total
