"""A worked example of a third-party propagation rule: LRP-alpha-beta (Bach et al. 2015) as a pass modifier.

``alphabeta(alpha=2):gradcam``, ``alphabeta:scaling+sum``, ... run the method with the rule's backward pass for
one pass (``beta = alpha - 1``, so relevance is conserved where no stabiliser is needed). The rule follows
extagg's gradient x input convention: the relevance of a tensor ``a`` is ``R_a = a * g_a``, so the relevance
of the explained logit is the logit itself and ``alphabeta:scaling+sum`` at ``input`` is the LRP map.

At ``Linear`` / ``Conv2d`` (``z_ij = x_i w_ij``, bias left out of the split):

    R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j,   z+_j = sum_i z+_ij,  z-_j = sum_i z-_ij  (0/0 = 0)

which, as a gradient, is ``g_x = alpha W+^T s+ - beta W-^T s-`` where ``x >= 0`` and ``alpha W-^T s+ - beta W+^T
s-`` where ``x < 0``, with ``s+- = y g / z+-``. ReLU, pooling, ``Flatten``, ``Dropout`` (eval) and ``Identity``
keep their ordinary gradient (relevance pass-through / proportional routing); any other module is refused
before anything runs, and a functional activation or linear map called in a ``forward`` is refused when called.

Everything comes from :mod:`extagg.plugin`; the hooks live only for the pass and are removed also on error.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from extagg.plugin import KEEP, Modifier, Param, Rule, Swap, UnsupportedLayerError, hookimpl, refuse_modules, \
    rules_installed

UNITS = (nn.Linear, nn.Conv2d)
PASS_THROUGH = (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b == 0, 0.0, a / b)


def _linear_map(module: nn.Module, weight: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The module's map with ``weight`` and no bias."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight)
    return F.conv2d(a, weight, None, module.stride, module.padding, module.dilation, module.groups)


def _alphabeta(alpha: float) -> Swap:
    beta = alpha - 1.0

    def prepare(module, x, y):
        w = module.weight.detach()
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        # the positive and the negative contributions, each with the vector-Jacobian product of its two streams
        zp, tp = torch.func.vjp(lambda a, b: _linear_map(module, wp, a) + _linear_map(module, wn, b), xp, xn)
        zn, tn = torch.func.vjp(lambda a, b: _linear_map(module, wn, a) + _linear_map(module, wp, b), xp, xn)
        return x, _safe_divide(y, zp), _safe_divide(y, zn), tp, tn

    def backward(g, x, ratio_p, ratio_n, tp, tn):
        pos_a, pos_b = tp(g * ratio_p)
        neg_a, neg_b = tn(g * ratio_n)
        return torch.where(x < 0, alpha * pos_b - beta * neg_b, alpha * pos_a - beta * neg_a)

    return Swap(prepare, backward)


def alphabeta_rule(alpha: float = 2.0) -> Rule:
    """The :class:`~extagg.plugin.Rule` for LRP-alpha-beta with ``beta = alpha - 1``."""

    def handler(layer: str, module: nn.Module):
        if isinstance(module, UNITS):
            if type(module).forward not in (nn.Linear.forward, nn.Conv2d.forward) or \
                    getattr(module, "padding_mode", "zeros") != "zeros":
                raise UnsupportedLayerError(
                    f"propagation rule 'alphabeta': layer {layer!r} ({type(module).__name__}) has its own forward "
                    "or a padding mode other than 'zeros'; it handles plain Linear and zero-padded Conv2d")
            return _alphabeta(alpha)
        if isinstance(module, PASS_THROUGH):
            return KEEP
        refuse_modules("alphabeta", layer, module, UNITS + PASS_THROUGH)

    refused = {f: "a functional linear map gets the ordinary gradient, not the rule" for f in (F.linear, F.conv2d)}
    refused.update({f: "alpha-beta is defined here for ReLU networks"
                    for f in (torch.sigmoid, torch.tanh, F.gelu, F.silu, F.elu, F.leaky_relu)})
    return Rule("alphabeta", handler, refused, units=UNITS)


def _check_alpha(alpha):
    return None if math.isfinite(alpha) and alpha >= 1 else "must be a finite number >= 1 (beta = alpha - 1 >= 0)"


def _alphabeta_modifier(model, images, targets, alpha: float = 2.0):
    return rules_installed(model, alphabeta_rule(alpha))


ALPHABETA = Modifier(
    name="alphabeta", fn=_alphabeta_modifier, stateless=True,
    params=[Param("alpha", float, 2.0, "weight of the positive contributions; beta = alpha - 1", check=_check_alpha)],
    doc="LRP-alpha-beta as a gradient (x * g is the relevance): Linear/Conv2d split relevance by positive and "
        "negative contributions z_ij = x_i w_ij, R_i = sum_j (alpha z+_ij/z+_j - beta z-_ij/z-_j) R_j, "
        "beta = alpha - 1, bias ignored; ReLU, pooling, Flatten: ordinary gradient.")


@hookimpl
def register_modifiers(register):
    register(ALPHABETA)
