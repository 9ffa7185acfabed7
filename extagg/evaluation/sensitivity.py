"""Class sensitivity (Rebuffi et al. 2020, Sec. 4.3): do the maps change with the class being explained?

Per image, the Spearman rank correlation between the map of the most probable class and the map of the least
probable class, at the model's input resolution (bilinear, ``align_corners=False``). Values near 0 (or
negative) mean class-sensitive maps; near 1 means the map ignores the class. Works for any method string,
including pass modifiers (``meta:normgrad`` once that modifier is installed): the two classes are passed as
explicit (N, 2) targets, so both maps come from one batched backward of the engine.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from .records import Record, records_of

SUBSET = "top-vs-bottom"


def top_bottom_classes(scores: torch.Tensor) -> torch.Tensor:
    """(N, 2) long: the most and the least probable class per row of (N, C) scores (first index on ties).

    Ranks the logits, not softmax probabilities: the order is the same, without softmax underflow creating ties.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise InputError(f"class sensitivity needs (N, C) scores with C >= 2 classes, got shape {tuple(scores.shape)}")
    return torch.stack([scores.argmax(1), scores.argmin(1)], 1).cpu()


def class_sensitivity(model: torch.nn.Module, data, methods, layers="input", *, preprocess=None,
                      batch_size: int = 8, limit: Optional[int] = None, progress: bool = False,
                      registry=None, mismatched: Optional[str] = None, pairing: str = "bottom", seed: int = 0,
                      floors: bool = True) -> list[Record]:
    """Spearman(top-1 map, paired class's map) per image for every (method, layer): the ``sensitivity`` metric
    through the one driver (:func:`extagg.evaluation.evaluate`).

    :param data: iterable of :class:`~extagg.evaluation.datasets.Sample` (labels are not used).
    :param methods: method strings or patterns; :param layers: layer names or patterns.
    :param preprocess: (3, H, W) [0, 1] image -> model input; consecutive same-size inputs are batched.
    :param pairing: ``"bottom"`` (least probable class, the paper), ``"random"`` (seeded per image) or
        ``"second"``.
    :returns: records with subset ``"top-vs-<pairing>"``: ``spearman`` (signed maps) and ``spearman_abs``
        (absolute maps), each as mean over images with a defined correlation (``count``), ``*_std`` (sample
        std), and ``*_nan`` = number of images whose correlation is undefined (a constant map), never dropped
        silently; with ``floors``, the same for ``floor:cross-image`` and ``floor:smooth-noise``.
    """
    from .run import evaluate

    if pairing not in ("bottom", "random", "second"):
        raise InputError(f"pairing must be bottom, random or second, got {pairing!r}")
    out = evaluate(model, data, methods, layers, f"sensitivity(pairing={pairing})", preprocess=preprocess,
                   batch_size=batch_size, limit=limit, progress=progress, registry=registry, mismatched=mismatched,
                   seed=seed)
    if not out.rows:
        raise InputError("class sensitivity got no samples")
    return records_of(out.rows, floors)
