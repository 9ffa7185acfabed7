"""Channel weights of the CAM family, pooled from the layer gradient: the parameters ``g``, ``pool``,
``alpha_norm`` and ``alpha_eps`` of the ``pooled-scaling`` extractor, and ``g`` of ``scaling``.

Shapes: gradient ``g`` (N, T, C, h, w), activation ``x`` (N, C, h, w); the weights are (N, T, C), in ``x``'s dtype.

* ``g`` (the gradient filter, applied to ``g`` before anything is pooled or multiplied): ``signed`` (none),
  ``relu`` (positive part), ``abs``. A filter here is *positive aggregation*: it is what separates Grad-CAM++
  and LayerCAM from their signed counterparts.
* ``pool`` (how the filtered gradient ``f(g)`` becomes one weight per channel):

  - ``mean``: ``w_k = mean_u f(g_ku)`` (Grad-CAM; Grad-CAM+ with ``g=relu``);
  - ``mass``: ``w_k = sum_u x_ku f(g_ku) / sum_u x_ku`` (XGrad-CAM); 0 where ``sum_u x_ku = 0``;
  - ``alpha``: ``w_k = sum_u alpha_ku f(g_ku)`` with Grad-CAM++'s closed form under the exponential-output
    assumption (Chattopadhay et al. 2018, eq. 19 with ``Y = exp(S)``): ``alpha_ku = g^2 / (2 g^2 + S_k g^3)``,
    ``S_k = sum_v x_kv``, and ``alpha = 0`` where that denominator is 0 (``g = 0``). The common factor
    ``exp(S)`` is left out (one positive number per image and target: it scales the map, never reorders it).
    ``alpha_norm=true`` divides ``alpha`` per channel by its sum over the locations where ``f(g) != 0`` (the
    original TensorFlow code's ``alpha_normalization_constant``; channels where that sum is 0 keep ``alpha``).

**Conditioning of eq. 19.** Where ``g != 0``, ``alpha = 1 / d`` with ``d = 2 + S_k g``: a pole where
``S_k g`` is near -2, which real networks reach (``d`` of 1e-5 on EfficientNet-Lite0's early blocks). A relative
error ``delta`` in ``g`` or ``S_k`` moves ``alpha`` by ``delta * |S_k g| / |d|``. The weights are therefore computed
in float64 from ``d`` (never from ``g^2`` and ``g^3``, which square the scale and can underflow), whatever the
input dtype, and cast to ``x``'s dtype at the end: the formula then adds no error beyond float64 rounding times
that factor (float32 arithmetic added up to 1e-3 of the map's range there). What it cannot remove is the
amplification of the error already in ``g`` and ``x`` (a float32 network's own rounding). ``alpha_eps`` (default
0: eq. 19 exactly) bounds it: ``|d|`` is raised to at least ``alpha_eps * (2 + |S_k g|)`` (its sign kept, a zero
``d`` counted positive), so ``|alpha| <= 1 / (2 alpha_eps)`` and the amplification is below ``1 / alpha_eps``.
The floor is relative to the size of the terms of ``d``, so it means the same at every layer and scale, unlike
pytorch-grad-cam's absolute ``+1e-6`` in the ``g^2``-scaled denominator (docs/cam_family.md).
"""
from __future__ import annotations

import math

import torch

GRADIENT_FILTERS = {"signed": lambda g: g, "relu": torch.relu, "abs": torch.abs}
"""The filters ``g`` may name, applied to the gradient before pooling."""
POOLS = ("mean", "mass", "alpha")
"""The pooling rules ``pool`` may name."""
MAX_ALPHA_EPS = 0.5
"""Largest ``alpha_eps``: at 0.5 the floor ``0.5 * (2 + |S g|)`` is reached by every negative ``d`` already."""


def alpha_eps_problem(value: float):
    """The check of the ``alpha_eps`` parameter: a finite number in ``[0, MAX_ALPHA_EPS]``."""
    if math.isfinite(value) and 0 <= value <= MAX_ALPHA_EPS:
        return None
    return f"must be a finite number in 0..{MAX_ALPHA_EPS} (0: eq. 19 as published; 1e-3 bounds alpha by 500)"


def filtered(g: torch.Tensor, name: str) -> torch.Tensor:
    return GRADIENT_FILTERS[name](g)


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def gradcampp_alpha(g: torch.Tensor, x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++'s ``alpha`` (N, T, C, h, w) under the exponential-output assumption (eq. 19), in float64:
    ``1 / (2 + S_k g)`` where ``g != 0``, 0 where ``g = 0`` or (``eps = 0``) the denominator is exactly 0;
    ``eps > 0`` floors ``|2 + S_k g|`` at ``eps * (2 + |S_k g|)`` (module docstring)."""
    g = g.to(torch.float64)
    sg = x.to(torch.float64).sum(dim=(-2, -1))[:, None, :, None, None] * g
    d = 2 + sg
    if eps > 0:
        floor = eps * (2 + sg.abs())
        d = torch.where(d.abs() >= floor, d, torch.where(d < 0, -floor, floor))
    return torch.where(g == 0, torch.zeros_like(d), _safe_divide(torch.ones_like(d), d))


def channel_weights(g: torch.Tensor, x: torch.Tensor, gradient: str = "signed", pool: str = "mean",
                    alpha_norm: bool = False, alpha_eps: float = 0.0) -> torch.Tensor:
    """The (N, T, C) channel weights for ``gradient`` filter and ``pool`` rule (see the module docstring)."""
    fg = filtered(g, gradient)
    if pool == "mean":
        return fg.mean(dim=(-2, -1))
    if pool == "mass":
        return _safe_divide((fg * x[:, None]).sum(dim=(-2, -1)), x.sum(dim=(-2, -1))[:, None])
    if pool != "alpha":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    alpha = gradcampp_alpha(g, x, alpha_eps)
    fg = fg.to(torch.float64)
    if alpha_norm:
        total = (alpha * (fg != 0)).sum(dim=(-2, -1), keepdim=True)
        alpha = torch.where(total == 0, alpha, alpha / torch.where(total == 0, torch.ones_like(total), total))
    return (alpha * fg).sum(dim=(-2, -1)).to(x.dtype)
