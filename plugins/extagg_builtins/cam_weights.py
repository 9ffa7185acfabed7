"""Channel weights of the CAM family, pooled from the layer gradient: the parameters ``g`` and ``pool`` of the
``pooled-scaling`` extractor, and ``g`` of ``scaling``.

Shapes: gradient ``g`` (N, T, C, h, w), activation ``x`` (N, C, h, w); the weights are (N, T, C).

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
"""
from __future__ import annotations

import torch

GRADIENT_FILTERS = {"signed": lambda g: g, "relu": torch.relu, "abs": torch.abs}
"""The filters ``g`` may name, applied to the gradient before pooling."""
POOLS = ("mean", "mass", "alpha")
"""The pooling rules ``pool`` may name."""


def filtered(g: torch.Tensor, name: str) -> torch.Tensor:
    return GRADIENT_FILTERS[name](g)


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def gradcampp_alpha(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s ``alpha`` (N, T, C, h, w) under the exponential-output assumption (eq. 19)."""
    mass = x.sum(dim=(-2, -1))[:, None, :, None, None]
    g2 = g * g
    return _safe_divide(g2, 2 * g2 + mass * g2 * g)


def channel_weights(g: torch.Tensor, x: torch.Tensor, gradient: str = "signed", pool: str = "mean",
                    alpha_norm: bool = False) -> torch.Tensor:
    """The (N, T, C) channel weights for ``gradient`` filter and ``pool`` rule (see the module docstring)."""
    fg = filtered(g, gradient)
    if pool == "mean":
        return fg.mean(dim=(-2, -1))
    if pool == "mass":
        return _safe_divide((fg * x[:, None]).sum(dim=(-2, -1)), x.sum(dim=(-2, -1))[:, None])
    if pool != "alpha":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    alpha = gradcampp_alpha(g, x)
    if alpha_norm:
        total = (alpha * (fg != 0)).sum(dim=(-2, -1), keepdim=True)
        alpha = torch.where(total == 0, alpha, alpha / torch.where(total == 0, torch.ones_like(total), total))
    return (alpha * fg).sum(dim=(-2, -1))
