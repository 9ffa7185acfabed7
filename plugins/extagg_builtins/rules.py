"""Built-in propagation rules as pass modifiers (``guided:``, ``deconvnet:``, ``rectgrad(q=98):``,
``lrp-epsilon(eps=1e-6):``, ``lrp-zplus:``) and the named methods built on them.

A rule changes only the backward pass, for the duration of one pass: its hooks are installed when extagg enters
the modifier and removed when it leaves, also on error (:func:`extagg.plugin.rules_installed`). Methods
that carry the same rule share one forward and one backward pass. Formulas: docs/propagation_rules.md;
the rule bodies: :mod:`extagg_builtins.rule_bodies`.
"""
from __future__ import annotations

import math

from extagg.plugin import Modifier, NamedMethod, Param, hookimpl, rules_installed
from extagg_builtins.rule_bodies import deconvnet_rule, guided_rule, lrp_epsilon_rule, lrp_zplus_rule, rectgrad_rule


def _check_q(q):
    return None if 0 <= q <= 100 else "must be a percentile in [0, 100]"


def _check_eps(eps):
    return None if math.isfinite(eps) and eps >= 0 else "must be a finite number >= 0"


def _guided(model, images, targets):
    return rules_installed(model, guided_rule())


def _deconvnet(model, images, targets):
    return rules_installed(model, deconvnet_rule())


def _rectgrad(model, images, targets, q: float = 98.0):
    return rules_installed(model, rectgrad_rule(q))


def _lrp_epsilon(model, images, targets, eps: float = 1e-6):
    return rules_installed(model, lrp_epsilon_rule(eps))


def _lrp_zplus(model, images, targets):
    return rules_installed(model, lrp_zplus_rule())


# A rule writes no tensor of the model (it only adds hooks): stateless, so extagg skips its weight snapshot.
_STATELESS = {"stateless": True}

RULES = [
    Modifier(**_STATELESS, name="guided", fn=_guided,
             doc="Guided backprop's rule: at every ReLU/ReLU6, g_in = 1[x > 0] 1[g > 0] g (ReLU6: also x < 6)."),
    Modifier(**_STATELESS, name="deconvnet", fn=_deconvnet,
             doc="Deconvnet's rule: at every ReLU/ReLU6, g_in = max(g, 0), the forward mask ignored."),
    Modifier(**_STATELESS, name="rectgrad", fn=_rectgrad,
             params=[Param("q", float, 98.0, "percentile of y*g per sample below which the gradient is cut",
                           check=_check_q)],
             doc="RectGrad's rule: at every ReLU/ReLU6, g_in = 1[y g > tau] g, tau the per-sample q-th percentile "
                 "of y g (nearest rank); ReLU6 also blocks where x >= 6."),
    Modifier(**_STATELESS, name="lrp-epsilon", fn=_lrp_epsilon,
             params=[Param("eps", float, 1e-6, "stabiliser added to z with the sign of z", check=_check_eps)],
             doc="LRP-epsilon as a gradient: x * g is the relevance. Linear/Conv/BatchNorm/pooling: "
                 "g_in = J^T (g * z / (z + eps sign z)); ReLU: ordinary gradient; ReLU6: relevance pass-through."),
    Modifier(**_STATELESS, name="lrp-zplus", fn=_lrp_zplus,
             doc="LRP-z+ (alpha1-beta0, Excitation Backprop) as a gradient: x * g is the relevance. Linear/Conv: "
                 "g_in = W+^T s (x >= 0) or W-^T s (x < 0), s = z g / (W+ x+ + W- x-), bias ignored; "
                 "ReLU, pooling: ordinary gradient; ReLU6, BatchNorm: relevance pass-through."),
]

NAMED = [
    ("guided-backprop", "guided:bias+abs+max", "Guided backprop: max over channels of |g| under the guided rule "
     "(as TorchRay).", "Springenberg et al. 2015"),
    ("deconvolution", "deconvnet:bias+abs+max", "Deconvnet: max over channels of |g| under the deconvnet rule "
     "(as TorchRay).", "Zeiler & Fergus 2014"),
    ("rectified-gradient", "rectgrad:scaling+sum", "RectGrad: x * g under the RectGrad rule (q = 98), summed over "
     "channels.", "Kim et al. 2019"),
    ("excitation-backprop", "lrp-zplus:scaling+sum", "Excitation backprop = LRP-alpha1beta0: the z+ relevance "
     "x * g, summed over channels.", "Zhang et al. 2016; Montavon et al. 2017"),
]


@hookimpl
def register_modifiers(register):
    for modifier in RULES:
        register(modifier)


@hookimpl
def register_methods(register):
    for name, expansion, doc, reference in NAMED:
        register(NamedMethod(name=name, expansion=expansion, doc=doc, reference=reference))
