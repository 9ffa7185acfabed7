"""The bodies of the built-in propagation rules: guided backprop, deconvnet, RectGrad, LRP-epsilon and LRP-z+
(alpha1-beta0).

Each rule is an :class:`extagg.plugin.Rule` built only from :mod:`extagg.plugin` (as a third-party rule would be);
``extagg_builtins.rules`` registers them as pass modifiers.
Notation: a module maps its input ``x`` to its output ``y``; ``g`` is the (modified) gradient arriving at ``y``
and the rule returns the gradient sent to ``x``. The formulas, and what peers do differently, are in
docs/propagation_rules.md.

LRP rules follow the gradient x input convention (Captum, Zennit with ``attr_output = one-hot * output``): the
relevance of any tensor ``a`` is ``R_a = a * g_a``, so the relevance of the explained logit is the logit itself
and the LRP map at the input is ``x * g_x`` (``lrp-zplus:scaling+sum``). In that convention an ordinary ReLU
gradient *is* relevance pass-through, and LRP rules reduce to:

* Linear / Conv (epsilon): ``g_x = J^T (g * y / (y + eps * sign(y)))``, the ordinary backward of a rescaled
  gradient (``sign(0) = +1``);
* Linear / Conv (z+): ``s = g * y / z+``, ``z+ = W+ x+ + W- x-`` (no bias), ``g_x = W+^T s`` where ``x >= 0`` and
  ``W-^T s`` where ``x < 0`` (``0/0 = 0``);
* ReLU6 (both): relevance pass-through, ``g_x = g * y / x`` (``0`` where ``x = 0``);
* BatchNorm: epsilon: as Linear (it is affine); z+: relevance pass-through like ReLU6;
* pooling: epsilon: as Linear (max pool routes to the argmax, average pools in proportion); z+: ordinary gradient
  (the same routing without the stabiliser);
* ReLU, Dropout (eval), Flatten, Identity: ordinary gradient; residual additions (functional ``+``): ordinary
  gradient, i.e. relevance split in proportion to the summands.
"""
from __future__ import annotations

import copy
import math
import torch
import torch.nn.functional as F
from torch import nn

from extagg.plugin import KEEP, Modulate, Rule, Swap, refuse_modules

RELU_LIKE = (nn.ReLU, nn.ReLU6)
LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
PLAIN = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.ZeroPad1d,
         nn.ZeroPad2d, nn.ZeroPad3d)

RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
                  F.hardtanh, F.hardtanh_)
OTHER_ACTIVATIONS = (torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.tanh, torch.Tensor.tanh, F.tanh, F.silu,
                     F.gelu, F.elu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.softplus, F.mish, F.selu, F.celu,
                     F.prelu)
LINEAR_FUNCTIONS = (F.linear, F.conv1d, F.conv2d, F.conv3d, F.batch_norm, torch.matmul, torch.Tensor.matmul)


def _is_activation_module(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation"


def _upper(module: nn.Module) -> float:
    return 6.0 if isinstance(module, nn.ReLU6) else math.inf


# ----------------------------------------------------------------------------- ReLU rules
def _guided(module: nn.Module) -> Modulate:
    """``max(g, 0)`` at the output; the module's own backward then applies ``1[x > 0]`` (ReLU6: ``1[0 < x < 6]``)."""

    def prepare(module, x, y):
        return ()

    def backward(g):
        return g.clamp(min=0)

    return Modulate(prepare, backward)


def _deconvnet(module: nn.Module) -> Swap:
    def prepare(module, x, y):
        return ()

    def backward(g):
        return g.clamp(min=0)

    return Swap(prepare, backward)


def rank_of_percentile(q: float, size: int) -> int:
    """The 1-based rank k of the q-th percentile of ``size`` values, nearest rank: ``round(q/100 * (size-1)) + 1``
    (``torch.quantile(..., interpolation="nearest")``)."""
    return int(torch.tensor(q / 100 * (size - 1), dtype=torch.float64).round()) + 1


def percentile_threshold(t: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample q-th percentile of ``t`` over all but the first dimension, shaped to broadcast against ``t``."""
    flat = t.reshape(t.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    tau = work.kthvalue(rank_of_percentile(q, flat.shape[1]), dim=1).values
    return tau.to(t.dtype).view(-1, *([1] * (t.ndim - 1)))


def _rectgrad(module: nn.Module, q: float) -> Swap:
    upper = _upper(module)

    def prepare(module, x, y):
        return (y,)

    def backward(g, y):
        keep = (y * g) > percentile_threshold(y * g, q)
        if upper < math.inf:
            keep = keep & (y < upper)
        return torch.where(keep, g, 0.0)

    return Swap(prepare, backward)


def relu_rule(name: str, make, doc_name: str) -> Rule:
    """A rule that replaces the backward of every ReLU / ReLU6 module with ``make(module)`` and refuses other
    activation modules and functional activations."""

    def handler(layer: str, module: nn.Module):
        if isinstance(module, RELU_LIKE):
            return make(module)
        if _is_activation_module(module):
            refuse_modules(doc_name, layer, module, RELU_LIKE)
        return None

    refused = {f: "functional ReLU gets the ordinary gradient, not the rule" for f in RELU_FUNCTIONS}
    refused.update({f: f"{doc_name} is defined for ReLU and ReLU6 only" for f in OTHER_ACTIVATIONS})
    return Rule(name, handler, refused)


def guided_rule() -> Rule:
    """Guided backprop (Springenberg et al. 2015): at ReLU, ``g_x = 1[x > 0] 1[g > 0] g`` (ReLU6: also ``x < 6``)."""
    return relu_rule("guided", _guided, "guided")


def deconvnet_rule() -> Rule:
    """Deconvnet (Zeiler & Fergus 2014): at ReLU / ReLU6, ``g_x = max(g, 0)``; the forward mask is ignored."""
    return relu_rule("deconvnet", _deconvnet, "deconvnet")


def rectgrad_rule(q: float = 98.0) -> Rule:
    """RectGrad (Kim et al. 2019): at ReLU, ``g_x = 1[y g > tau] g``, ``tau`` the per-sample q-th percentile of
    ``y g`` (nearest rank); ReLU6 also blocks where ``x >= 6``."""
    return relu_rule("rectgrad", lambda m: _rectgrad(m, q), "rectgrad")


# ----------------------------------------------------------------------------- LRP rules
def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b``, 0 where ``b == 0``."""
    return torch.where(b == 0, 0.0, a / b)


def _relevance_pass() -> Swap:
    """``R_x = R_y``: ``g_x = g * y / x``."""

    def prepare(module, x, y):
        return (_safe_divide(y, x),)

    def backward(g, ratio):
        return g * ratio

    return Swap(prepare, backward)


def _epsilon(eps: float) -> Modulate:
    def prepare(module, x, y):   # z / (z + eps sign z) = |z| / (|z| + eps), with sign(0) = +1
        size = y.abs()
        return ((size / (size + eps)) if eps > 0 else (y != 0).to(y.dtype),)

    def backward(g, factor):
        return g * factor

    return Modulate(prepare, backward)


_STANDARD_FORWARDS = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def _with_weight(module: nn.Module, weight: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The module's linear map with ``weight`` and no bias, applied to ``a``; a subclass with its own ``forward``
    (e.g. a conv with "same" padding done by a child module) runs that forward on the swapped parameters."""
    if type(module).forward in _STANDARD_FORWARDS:
        return F.linear(a, weight) if isinstance(module, nn.Linear) else module._conv_forward(a, weight, None)
    twin = copy.copy(module)   # shares children and buffers; its own parameter table, so the module is untouched
    twin._parameters = {**module._parameters, "weight": weight}
    if "bias" in twin._parameters:
        twin._parameters["bias"] = None
    return type(module).forward(twin, a)


def _zplus_linear(layer: str, module: nn.Module) -> Swap:
    """``s = y g / z+`` with ``z+ = W+ x+ + W- x-``; ``g_x = W+^T s`` where ``x >= 0``, ``W-^T s`` where ``x < 0``
    (the transposes are the vector-Jacobian product of the two streams, built once in the forward pass)."""

    def prepare(module, x, y):
        weight = module.weight.detach()
        wp = weight.clamp(min=0)
        if not bool((x < 0).any()):   # after a ReLU: one stream (one sync, saves a conv and its transpose)
            zp, transpose = torch.func.vjp(lambda a: _with_weight(module, wp, a), x)
            return x, _safe_divide(y, zp), transpose, False
        wn = weight.clamp(max=0)

        def streams(a, b):
            return _with_weight(module, wp, a) + _with_weight(module, wn, b)

        zp, transpose = torch.func.vjp(streams, x.clamp(min=0), x.clamp(max=0))
        return x, _safe_divide(y, zp), transpose, True

    def backward(g, x, ratio, transpose, mixed):
        grads = transpose(g * ratio)
        return torch.where(x < 0, grads[1], grads[0]) if mixed else grads[0]

    return Swap(prepare, backward)


LRP_SUPPORTED = (*LINEAR_LIKE, *NORMS, *POOLS, *RELU_LIKE, *PLAIN)


def _lrp_refused(doc_name: str) -> dict:
    refused = {f: "LRP here handles module ReLU6 only" for f in (F.relu6, F.hardtanh, F.hardtanh_)}
    refused.update({f: f"{doc_name} is defined for ReLU networks" for f in OTHER_ACTIVATIONS})
    refused.update({f: "a functional linear map gets the ordinary gradient, not the rule" for f in LINEAR_FUNCTIONS})
    return refused


def lrp_epsilon_rule(eps: float = 1e-6) -> Rule:
    """LRP-epsilon (Bach et al. 2015) in the gradient x input convention; see the module docstring."""

    def handler(layer: str, module: nn.Module):
        if isinstance(module, (*LINEAR_LIKE, *NORMS, *POOLS)):
            return _epsilon(eps)
        if isinstance(module, nn.ReLU6):
            return _relevance_pass()
        if isinstance(module, (nn.ReLU, *PLAIN)):
            return KEEP
        refuse_modules("lrp-epsilon", layer, module, LRP_SUPPORTED)

    return Rule("lrp-epsilon", handler, _lrp_refused("lrp-epsilon"), units=LINEAR_LIKE)


def lrp_zplus_rule() -> Rule:
    """LRP-z+ = alpha1-beta0 = Excitation Backprop (Montavon et al. 2017; Zhang et al. 2016) in the gradient x
    input convention; see the module docstring."""

    def handler(layer: str, module: nn.Module):
        if isinstance(module, LINEAR_LIKE):
            return _zplus_linear(layer, module)
        if isinstance(module, (nn.ReLU6, *NORMS)):
            return _relevance_pass()
        if isinstance(module, (nn.ReLU, *POOLS, *PLAIN)):
            return KEEP
        refuse_modules("lrp-zplus", layer, module, LRP_SUPPORTED)

    return Rule("lrp-zplus", handler, _lrp_refused("lrp-zplus"), units=LINEAR_LIKE)
