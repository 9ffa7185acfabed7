"""Class sensitivity (Rebuffi et al. 2020, Sec. 4.3): do the maps change with the class being explained?

The metric is the built-in ``sensitivity`` plugin (:mod:`extagg_builtins.metrics`), run by
:func:`extagg.evaluation.class_sensitivity` or ``extagg sweep``. Per image, the Spearman rank correlation between the map of the most probable class and the map of the least
probable class, at the model's input resolution (bilinear, ``align_corners=False``). Values near 0 (or
negative) mean class-sensitive maps; near 1 means the map ignores the class. Works for any method string,
including pass modifiers (``meta:normgrad`` once that modifier is installed): the two classes are passed as
explicit (N, 2) targets, so both maps come from one batched backward of the engine.
"""
from __future__ import annotations

import torch

from ..errors import InputError

def top_bottom_classes(scores: torch.Tensor) -> torch.Tensor:
    """(N, 2) long: the most and the least probable class per row of (N, C) scores (first index on ties).

    Ranks the logits, not softmax probabilities: the order is the same, without softmax underflow creating ties.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise InputError(f"class sensitivity needs (N, C) scores with C >= 2 classes, got shape {tuple(scores.shape)}")
    return torch.stack([scores.argmax(1), scores.argmin(1)], 1).cpu()
