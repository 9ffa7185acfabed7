"""Built-in extractors: virtual identity layers after the chosen module, the module's own conv or (token layers)
Linear, BatchNorm affine."""
from __future__ import annotations

import torch
from torch import nn

from extagg.plugin import Dense, Extractor, Factored, InputError, Param, PatchGeometry, Product, Scaled, hookimpl
from extagg_builtins.cam_weights import GRADIENT_FILTERS, POOLS, alpha_eps_problem, channel_weights, filtered


MAX_K = 1023
"""Largest kernel size of the virtual kxk convolutions (a bound on cost; the layer's map bounds it further)."""


def _odd(k: int):
    return None if 1 <= k <= MAX_K and k % 2 == 1 else f"must be an odd integer in 1..{MAX_K}"


ALWAYS_FITS = 31
"""Kernel sizes up to this one run on any map (their cost is a constant factor); larger ones must fit the layer."""


def _fit(c, k: int, name: str) -> None:
    """A kxk patch with zero padding k//2 reaches the whole map from every location once k = 2*max(h, w) - 1;
    taps beyond that only ever read padding, so a larger k is refused (up to :data:`ALWAYS_FITS` always runs)."""
    h, w = c.output.shape[-2:]
    most = 2 * max(h, w) - 1
    if k > max(most, ALWAYS_FITS):
        raise InputError(f"{name}(k={k}) does not fit layer {c.name!r}: its map is {h}x{w}, where a patch of "
                         f"k = {most} already covers the whole map from every location; use an odd k <= "
                         f"{max(most, ALWAYS_FITS)}")


def bias(c):
    return Dense(c.grad, store=c.store)


def scaling(c, g: str = "signed"):
    return Product(c.output, filtered(c.grad, g), store=c.store)


def pooled_scaling(c, g: str = "signed", pool: str = "mean", alpha_norm: bool = False, alpha_eps: float = 0.0):
    return Scaled(c.output, channel_weights(c.grad, c.output, g, pool, alpha_norm, alpha_eps), store=c.store)


def identity_conv(c, k: int = 3):
    _fit(c, k, "iconv")
    return Factored(c.grad, c.output, PatchGeometry.identity(k), store=c.store)


def depthwise_conv(c, k: int = 3):
    _fit(c, k, "dwconv")
    return Factored(c.grad, c.output, PatchGeometry.identity(k, groups=c.output.shape[1]), store=c.store)


def real_conv(c):
    return Factored(c.grad, c.input, PatchGeometry.of_conv(c.module), store=c.store)


def _normalised_input(c) -> torch.Tensor:
    bn, x = c.module, c.input
    if bn.training or bn.running_mean is None:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean.to(x.dtype), bn.running_var.to(x.dtype)
    return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)


def real_linear(c):
    return Factored(c.grad, c.input, PatchGeometry.identity(1), store=c.store)


def bn_scale(c):
    return Product(_normalised_input(c), c.grad, store=c.store)


_K = Param("k", int, 3, "odd kernel size", check=_odd)
_G = Param("g", str, "signed", "filter on the gradient before it is pooled or multiplied: signed (none), relu, abs",
           choices=tuple(GRADIENT_FILTERS))
_POOL = Param("pool", str, "mean", "channel weight from the filtered gradient f(g): mean (Grad-CAM), mass "
              "(XGrad-CAM: sum x f(g) / sum x), alpha (Grad-CAM++ eq. 19: sum alpha f(g))", choices=POOLS)
_ALPHA_NORM = Param("alpha_norm", bool, False, "pool=alpha only: divide alpha per channel by its sum where f(g) != 0 "
                    "(Grad-CAM++'s original code)")
_ALPHA_EPS = Param("alpha_eps", float, 0.0, "pool=alpha only: floor |2 + S g| at alpha_eps * (2 + |S g|), a relative "
                   "stabiliser of eq. 19's pole (0: eq. 19 as published)", check=alpha_eps_problem)
_KREQ = Param("k", int, doc="odd kernel size", check=_odd)


@hookimpl
def register_extractors(register):
    register(Extractor(name="bias", factored=False, fn=bias, formula="g_u",
                       doc="Virtual bias after the layer: the gradient at each location."))
    register(Extractor(name="scaling", factored=False, fn=scaling, params=[_G], formula="x_u * f(g_u)",
                       doc="Virtual per-channel scaling after the layer: activation times gradient "
                           "('scaling(g=relu)': times the gradient's positive part, LayerCAM)."))
    register(Extractor(name="pooled-scaling", factored=False, fn=pooled_scaling,
                       params=[_G, _POOL, _ALPHA_NORM, _ALPHA_EPS],
                       formula="x_u * w, w = pool_v f(g_v) (mean | mass-weighted | Grad-CAM++ alpha-weighted)",
                       doc="Scaling whose gradient is pooled over space into channel weights: Grad-CAM (default), "
                           "XGrad-CAM (pool=mass), Grad-CAM++ (pool=alpha); g=relu|abs filters g before pooling."))
    register(Extractor(name="conv1x1", factored=True, fn=lambda c: identity_conv(c, 1), formula="vec(g_u x_u^T)",
                       doc="Virtual 1x1 identity convolution after the layer (NormGrad)."))
    register(Extractor(name="conv3x3", factored=True, fn=lambda c: identity_conv(c, 3), formula="vec(g_u p_u^T), p_u = 3x3 patch of x, zero pad 1",
                       neighbourhood=True, doc="Virtual 3x3 identity convolution after the layer."))
    register(Extractor(name="iconv", factored=True, fn=identity_conv, params=[_KREQ],
                       formula="vec(g_u p_u^T), p_u = kxk patch of x, zero pad k//2", neighbourhood=True,
                       doc="Virtual kxk identity convolution after the layer, any odd k: 'iconv(k=5)'."))
    register(Extractor(name="dwconv", factored=True, fn=depthwise_conv, params=[_K],
                       formula="(g_{k,u} x_{k,u+d})_{k,d}, d in kxk offsets", neighbourhood=True,
                       doc="Virtual depthwise kxk identity convolution after the layer."))
    register(Extractor(name="conv", factored=True, fn=real_conv, needs={"input", "grad"}, applies_to=(nn.Conv2d,),
                       formula="vec(g_u p_u^T), p_u = the conv's own input patch (kernel, stride, padding, dilation, groups)",
                       doc="The chosen Conv2d's own weight gradient, per output location (no identity trick)."))
    register(Extractor(name="linear", factored=True, fn=real_linear, needs={"input", "grad"}, applies_to=(nn.Linear,),
                       formula="vec(g_u x_in_u^T), u = a patch token",
                       doc="The chosen nn.Linear's own weight gradient per token, at a token layer (ViT MLPs, "
                           "projections); a Linear with a 2-D output has no map."))
    register(Extractor(name="bn-scale", factored=False, fn=bn_scale, needs={"input", "grad"},
                       applies_to=(nn.BatchNorm2d,),
                       formula="g_u * xhat_u, xhat = (x_in - mean) / sqrt(var + eps)",
                       doc="The chosen BatchNorm2d's real scale (weight) gradient, per location."))
    register(Extractor(name="bn-bias", factored=False, fn=bias, applies_to=(nn.BatchNorm2d,), formula="g_u",
                       doc="The chosen BatchNorm2d's real bias gradient, per location."))
