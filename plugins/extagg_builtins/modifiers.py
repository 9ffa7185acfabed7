"""Built-in pass modifiers: meta-saliency (Rebuffi et al. 2020, Sec. 4.3), written ``meta(lr=...,negative=...):``."""
from __future__ import annotations

import extagg
from extagg.meta import DEFAULT_LR, check_lr, meta_step
from extagg.specs import Modifier, Param


def _meta(model, images, targets, lr: float = DEFAULT_LR, negative: bool = False):
    return meta_step(model, images, targets, lr=lr, negative=negative)


@extagg.hookimpl
def register_modifiers(register):
    register(Modifier(
        name="meta",
        fn=_meta,
        params=[
            Param("lr", float, DEFAULT_LR, "SGD learning rate of the step (paper: 2*eps, eps = 0.001)", check=check_lr),
            Param("negative", bool, False, "gradient ascent on the cross-entropy instead of descent"),
        ],
        doc="Meta-saliency: the method on the weights after one SGD step on the cross-entropy of the explained "
            "class, theta' = theta -/+ lr * grad CE (eval mode, plain SGD); one image and one target per pass "
            "(extagg.meta.meta_saliency loops over a batch). The model is restored bit for bit.",
    ))
