"""Virtual-identity check (Rebuffi et al. 2020, Sec. 4.1, supp. B Table 4).

At a Conv2d layer, NormGrad with the virtual 1x1 identity placed after the conv (``normgrad`` =
``conv1x1+norm``: ``||g_out|| ||x_out||``) is compared with NormGrad of the real convolution (``normgrad-conv`` =
``conv+norm``: ``||g_out|| ||unfold(x_in)||`` with the conv's own kernel, stride, padding, dilation, groups).
Both maps come from the same forward and backward pass.

* Classification data (samples without masks): per image, Spearman between the two maps at the model's input
  resolution, for the ground-truth label (TorchRay's script) or, with ``targets="predicted"``, the predicted
  class; reported as mean and standard deviation (``spearman``, ``spearman_std``, ``spearman_nan``).
* Pointing data (samples with masks): the same correlation per (image, class) at the original image size, plus
  the pointing accuracy of both methods and ``pointing_difference`` = accuracy(identity) - accuracy(real conv).
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

from ..engine import saliency
from ..errors import InputError
from ..registry import default_registry
from .class_map import group_objective, resolve_class_map
from .common import batches, expand_layers, iterate, logits, model_inputs, total_of
from .common import progress as bar
from .pointing import pointing_game
from .records import Record, summarise
from .similarity import spearman

IDENTITY, REAL = "normgrad", "normgrad-conv"


def _conv_layers(model: torch.nn.Module, layers) -> list[str]:
    modules = dict(model.named_modules())
    names = expand_layers(model, layers, keep=lambda n, m: isinstance(m, torch.nn.Conv2d))
    for n in names:
        base = n.split("@")[0]
        if base in modules and not isinstance(modules[base], torch.nn.Conv2d):
            raise InputError(f"the identity check needs Conv2d layers; {n!r} is {type(modules[base]).__name__}")
    return names


def identity_check(model: torch.nn.Module, data, layers, *, preprocess=None, targets: str = "label",
                   batch_size: int = 8, limit: Optional[int] = None, tolerance: float = 15,
                   difficult="rule", num_classes: Optional[int] = None, progress: bool = False,
                   registry=None, class_map=None) -> list[Record]:
    """Spearman(NormGrad identity trick, NormGrad real conv) per image and layer; pointing difference with masks.

    :param layers: Conv2d layer names or patterns (patterns keep only Conv2d modules).
    :param num_classes: number of classes of pointing data without a ``class_names`` attribute.
    :param targets: ``"label"`` (the sample's first class; TorchRay uses the ground truth) or ``"predicted"``.
    :param class_map: data-set class -> model class(es) for ``"label"`` targets (and pointing data); needed
        when the data set declares its classes (``class_names`` or ``num_classes``) and the model's number of
        outputs differs (see :mod:`extagg.evaluation.class_map`). Labels of a plain list of samples without
        ``num_classes`` are model class indices.
    :returns: records with ``method`` = ``"normgrad vs normgrad-conv"``, subset ``"all"``, metric ``spearman``
        (+ ``_std``, ``_nan``); with pointing data also both methods' pointing records and ``pointing_difference``
        (``count``: evaluations) per subset.
    """
    if targets not in ("label", "predicted"):
        raise InputError(f"targets must be 'label' or 'predicted', got {targets!r}")
    registry = registry or default_registry()
    conv_layers = _conv_layers(model, layers)
    ident, real = registry.canonical(IDENTITY), registry.canonical(REAL)
    pair = f"{IDENTITY} vs {REAL}"
    stream = iterate(data, limit)
    first = next(stream, None)
    if first is None:
        raise InputError("the identity check got no samples")
    stream = itertools.chain([first], stream)
    corr: dict[str, list[torch.Tensor]] = {layer: [] for layer in conv_layers}
    records: list[Record] = []
    if first.masks is not None:
        def on_image(sample, classes, maps):
            for layer in conv_layers:
                corr[layer].append(spearman(maps[ident, layer], maps[real, layer]).flatten().cpu())

        point = pointing_game(model, stream, [ident, real], conv_layers, preprocess=preprocess,
                              num_classes=num_classes, class_names=getattr(data, "class_names", None),
                              difficult=difficult, tolerance=tolerance, per_class=False, progress=progress,
                              registry=registry, mismatched="raise", on_image=on_image, class_map=class_map)
        records += point
        acc = {(r.method, r.layer, r.subset): r for r in point if r.metric == "pointing_accuracy"}
        for (method, layer, subset), r in acc.items():
            if method == ident and (real, layer, subset) in acc:
                other = acc[real, layer, subset]
                records.append(Record(pair, layer, subset, "pointing_difference", r.value - other.value, r.count))
    else:
        names = getattr(data, "class_names", None)
        declared = num_classes or (len(names) if names else None)
        cmap = None
        for group in bar(batches(stream, batch_size), progress, total_of(data, limit), "identity check"):
            x = model_inputs(model, [s.image for s in group], preprocess)
            kw: dict = {}
            if targets == "label":
                if any(not s.classes for s in group):
                    raise InputError("targets='label' needs a label on every sample; use targets='predicted'")
                labels = [s.classes[0] for s in group]
                if cmap is None and (declared or class_map is not None):
                    if not declared:
                        raise InputError("a class_map needs the data set's classes: pass num_classes")
                    cmap = resolve_class_map(class_map, num_data_classes=declared, data_names=names,
                                             num_model_classes=logits(model, x).shape[1])
                if cmap is None:
                    kw["targets"] = torch.tensor(labels, dtype=torch.long)
                else:
                    bad = [c for c in labels if not 0 <= c < declared or not cmap.mapped(c)]
                    if bad:
                        raise InputError(f"label {bad[0]} has no model class in the class map (data set of {declared} "
                                         "classes); map it or use targets='predicted'")
                    if cmap.single:
                        kw["targets"] = torch.tensor([cmap.groups[c][0] for c in labels], dtype=torch.long)
                    else:
                        kw["objective"] = group_objective([[cmap.groups[c]] for c in labels])
            maps = saliency(model, x, [ident, real], conv_layers, resize=True, registry=registry, **kw)
            for layer in conv_layers:
                corr[layer].append(spearman(maps[ident, layer], maps[real, layer]).flatten().cpu())
    for layer, parts in corr.items():
        if parts:
            records += summarise(torch.cat(parts), pair, layer, "all", "spearman")
    return records
