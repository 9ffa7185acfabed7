"""Built-in CAM-family components: the ``bias-value`` extractor (FullGrad's bias terms) and the named methods
Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, FullGrad and their signed / positive counterparts.

Every method here is one composition; the positive variant and the signed one differ by one token
(``pooled-scaling(g=relu,pool=alpha)`` vs ``pooled-scaling(pool=alpha)``). The channel weights are the ``g`` and
``pool`` parameters of ``pooled-scaling`` (:mod:`extagg_builtins.cam_weights`); the multi-layer sum of FullGrad is
:func:`extagg_builtins.fullgrad.fullgrad`. See docs/cam_family.md.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from extagg.plugin import Extractor, InputError, NamedMethod, Product, hookimpl

BIAS_LAYERS = (nn.Conv2d, nn.BatchNorm2d)
"""Module types whose (effective) bias ``bias-value`` reads."""


def effective_bias(module: nn.Module, like: torch.Tensor, training: Optional[bool] = None,
                   batch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The bias a layer adds to each channel of its output, (C,), in ``like``'s dtype and device: a Conv2d's
    ``bias`` (zeros without one); for BatchNorm2d ``beta - gamma * mean / sqrt(var + eps)``, with the running
    statistics in eval mode and the statistics of ``batch`` (the layer's (N, C, H, W) input, as BatchNorm
    normalises it) in training mode or without running statistics. ``training``: the module's mode when it ran
    (default: its mode now)."""
    if isinstance(module, nn.Conv2d):
        if module.bias is None:
            return torch.zeros(module.out_channels, dtype=like.dtype, device=like.device)
        return module.bias.detach().to(like.dtype)
    if isinstance(module, nn.BatchNorm2d):
        if (module.training if training is None else training) or module.running_mean is None:
            if batch is None:
                raise InputError("bias-value needs the layer's input for a BatchNorm2d in training mode or without "
                                 "running statistics (it normalises with the batch's statistics)")
            x = batch.to(like.dtype)
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        else:
            mean, var = module.running_mean.to(like.dtype), module.running_var.to(like.dtype)
        gamma = torch.ones_like(mean) if module.weight is None else module.weight.detach().to(like.dtype)
        beta = torch.zeros_like(mean) if module.bias is None else module.bias.detach().to(like.dtype)
        return beta - gamma * mean / torch.sqrt(var + module.eps)
    raise InputError(f"bias-value applies to Conv2d, BatchNorm2d or the 'input' layer, not "
                     f"{type(module).__name__}")


def bias_value(c):
    """``b_k * g_ku`` at a Conv2d / BatchNorm2d (its real, effective bias times the gradient of its output);
    ``x_u * g_u`` at ``"input"`` (FullGrad's input-gradient term)."""
    if c.module is None:
        return Product(c.output, c.grad, store=c.store)
    b = effective_bias(c.module, c.output, c.training, c.input)
    return Product(b[None, :, None, None].expand_as(c.output), c.grad, store=c.store)


NAMED = [
    ("gradcampp", "pooled-scaling(g=relu,pool=alpha)+sum+relu",
     "Grad-CAM++: ReLU(sum_k w_k x_k), w_k = sum_u alpha_ku ReLU(g_ku), alpha of eq. 19 (exp-output closed form).",
     "Chattopadhay et al. 2018"),
    ("gradcampp-signed", "pooled-scaling(pool=alpha)+sum+relu",
     "Grad-CAM++ without the ReLU on the gradient: w_k = sum_u alpha_ku g_ku.", "Khakzar et al. 2020 (variant)"),
    ("gradcam-pos", "pooled-scaling(g=relu)+sum+relu",
     "Grad-CAM+ : Grad-CAM with the gradient's positive part pooled.", "Lerma & Lucas 2022"),
    ("gradcam-abs", "pooled-scaling(g=abs)+sum+relu", "Grad-CAM with |g| pooled.", "Khakzar et al. 2020 (variant)"),
    ("xgradcam", "pooled-scaling(pool=mass)+sum+relu",
     "XGrad-CAM: ReLU(sum_k w_k x_k), w_k = sum_u x_ku g_ku / sum_u x_ku.", "Fu et al. 2020"),
    ("layercam", "scaling(g=relu)+sum+relu", "LayerCAM: ReLU(sum_k ReLU(g_ku) x_ku).", "Jiang et al. 2021"),
    ("hirescam", "scaling+sum+relu", "HiResCAM: ReLU(sum_k g_ku x_ku).", "Draelos & Carin 2020"),
    ("fullgrad", "bias-value+abs+sum",
     "FullGrad's per-layer term sum_k |b_k g_ku| (x*g at 'input'); the full map sums the layer group of "
     "extagg_builtins.fullgrad.fullgrad_layers(model) with extagg_builtins.fullgrad.fullgrad().",
     "Srinivas & Fleuret 2019"),
    ("fullgrad-pos", "bias-value+relu+sum", "FullGrad's per-layer term with ReLU instead of abs.",
     "Khakzar et al. 2020 (variant)"),
    ("fullgrad-signed", "bias-value+sum", "FullGrad's per-layer term, signed (its layers sum to the logit).",
     "Khakzar et al. 2020 (variant)"),
]


@hookimpl
def register_extractors(register):
    register(Extractor(name="bias-value", factored=False, fn=bias_value, applies_to=BIAS_LAYERS, applies_to_input=True,
                       needs={"output", "input", "grad"},
                       formula="b_k * g_ku (Conv2d bias; BatchNorm2d: beta - gamma*mean/sqrt(var+eps)); x_u * g_u at input",
                       doc="The layer's real bias times its output gradient, per location (FullGrad's bias term; "
                           "the input-gradient term x*g at 'input'; BatchNorm in training mode: the batch's statistics). Summed "
                           "over channels and space, over the "
                           "layers of fullgrad_layers(model), plus the output bias, it is the logit."))


@hookimpl
def register_methods(register):
    for name, expansion, doc, reference in NAMED:
        register(NamedMethod(name=name, expansion=expansion, doc=doc, reference=reference))
