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
from .common import any_pattern, batches, expand_layers, expand_methods, iterate, logits, model_inputs, run_saliency
from .common import progress as bar
from .records import Record, summarise
from .similarity import spearman

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
                      registry=None, mismatched: Optional[str] = None) -> list[Record]:
    """Spearman(top-1 map, bottom-1 map) per image for every (method, layer).

    :param data: iterable of :class:`~extagg.evaluation.datasets.Sample` (labels are not used).
    :param methods: method strings or patterns; :param layers: layer names or patterns.
    :param preprocess: (3, H, W) [0, 1] image -> model input; consecutive same-size inputs are batched.
    :returns: records with subset ``"top-vs-bottom"``: ``spearman`` (signed maps) and ``spearman_abs``
        (absolute maps), each as mean over images with a defined correlation (``count``), ``*_std``, and
        ``*_nan`` = number of images whose correlation is undefined (a constant map), never dropped silently.
        The top/bottom classes come from a gradient-free forward pass; the maps from the one-pass engine.
    """
    method_list = expand_methods(methods, registry)
    layer_list = expand_layers(model, layers)
    mismatched = mismatched or ("skip" if any_pattern(methods, layers) else "raise")
    values: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
    for group in bar(batches(iterate(data, limit), batch_size), progress, None, "class sensitivity"):
        x = model_inputs(model, [s.image for s in group], preprocess)
        targets = top_bottom_classes(logits(model, x))
        maps, _ = run_saliency(model, x, method_list, layer_list, targets=targets, resize=True,
                               mismatched=mismatched, registry=registry)
        for key, m in maps.items():
            slot = values.setdefault(key, {"spearman": [], "spearman_abs": []})
            slot["spearman"].append(spearman(m[:, 0], m[:, 1]).cpu())
            slot["spearman_abs"].append(spearman(m[:, 0].abs(), m[:, 1].abs()).cpu())
    records: list[Record] = []
    for (method, layer), slot in values.items():
        for metric, parts in slot.items():
            records += summarise(torch.cat(parts), method, layer, SUBSET, metric)
    return records
