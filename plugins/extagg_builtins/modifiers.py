"""Built-in pass modifiers: meta-saliency (Rebuffi et al. 2020, Sec. 4.3), written ``meta(lr=...,negative=...):``;
the step itself is in :mod:`extagg_builtins.meta`."""
from __future__ import annotations

from extagg.plugin import Modifier, Param, hookimpl
from extagg_builtins.meta import DEFAULT_LR, check_lr, meta_step


def _meta(model, images, targets, lr: float = DEFAULT_LR, negative: bool = False):
    return meta_step(model, images, targets, lr=lr, negative=negative)


@hookimpl
def register_modifiers(register):
    register(Modifier(
        name="meta",
        fn=_meta,
        per_example=True,
        stateless=True,
        params=[
            Param("lr", float, DEFAULT_LR, "SGD learning rate of the step (paper: 2*eps, eps = 0.001)", check=check_lr),
            Param("negative", bool, False, "gradient ascent on the cross-entropy instead of descent"),
        ],
        doc="Meta-saliency: the method on the weights after one SGD step on the cross-entropy of the explained "
            "class, theta' = theta -/+ lr * grad CE (eval mode, plain SGD); one image and one target per pass "
            "(extagg.saliency_per_example loops over a batch). The model's own tensors are never written.",
    ))
