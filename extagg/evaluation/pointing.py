"""The pointing game (Zhang et al.'s EBP protocol as implemented by TorchRay), hand-checkable pieces.

* :func:`saliency_point`: the map's maximiser as ``(x, y)`` = ``(column, row)``; ties go to the first index in
  row-major order; NaN entries never win (an all-NaN or all-equal map gives (0, 0)).
* :func:`pointing_hit`: a hit iff some mask pixel (r, c) has ``(r - y)^2 + (c - x)^2 < tolerance^2`` (strict).
* :func:`center_point`: the baseline point ``(W / 2, H / 2)`` (floats, not rounded).
* :class:`PointingScore`: per-class hits and misses; accuracy is the mean of per-class accuracies over the
  classes that have evaluations; classes without any are reported separately, not counted as 0.
* :func:`gaussian_smooth`: TorchRay's ``imsmooth`` (separable Gaussian, sigma = smooth * max(H, W), replicate).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import InputError
from .records import Record

Point = tuple[float, float]


def saliency_point(maps: torch.Tensor) -> torch.Tensor:
    """Points ``(x, y)`` of the maxima of maps (..., H, W) -> long tensor (..., 2).

    Row-major first index wins ties (deterministic on every device: the smallest flat index among the maxima);
    NaN is treated as -inf.
    """
    if maps.ndim < 2:
        raise InputError(f"saliency_point needs maps of shape (..., H, W), got {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], h * w)
    flat = torch.where(torch.isnan(flat), torch.full_like(flat, -math.inf), flat)
    top = flat.amax(-1, keepdim=True)
    index = torch.arange(h * w, device=flat.device).expand_as(flat)
    first = torch.where(flat == top, index, torch.full_like(index, h * w)).amin(-1)
    first = torch.where(first == h * w, torch.zeros_like(first), first)  # all -inf
    return torch.stack([first % w, torch.div(first, w, rounding_mode="floor")], -1)


def center_point(height: int, width: int) -> Point:
    """The centre baseline's point ``(W / 2, H / 2)`` as TorchRay computes it (not rounded)."""
    return (width / 2, height / 2)


def pointing_hit(mask: torch.Tensor, point: Union[Point, Sequence[float], torch.Tensor], tolerance: float = 15) -> bool:
    """True iff some pixel of the boolean (H, W) ``mask`` lies at Euclidean distance ``< tolerance`` of ``point``.

    ``point`` is ``(x, y)`` (column, row) in the mask's pixel grid, integer or float.
    """
    if mask.ndim != 2:
        raise InputError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    x, y = (float(v) for v in (point.tolist() if isinstance(point, torch.Tensor) else point))
    h, w = mask.shape
    r0, r1 = max(0, math.floor(y - tolerance)), min(h, math.ceil(y + tolerance) + 1)
    c0, c1 = max(0, math.floor(x - tolerance)), min(w, math.ceil(x + tolerance) + 1)
    if r0 >= r1 or c0 >= c1:
        return False
    win = mask[r0:r1, c0:c1].bool()
    rows = torch.arange(r0, r1, device=mask.device, dtype=torch.float64)[:, None]
    cols = torch.arange(c0, c1, device=mask.device, dtype=torch.float64)[None, :]
    close = (rows - y) ** 2 + (cols - x) ** 2 < float(tolerance) ** 2
    return bool((win & close).any())


def gaussian_smooth(maps: torch.Tensor, smooth: float) -> torch.Tensor:
    """TorchRay's ``imsmooth``: separable Gaussian blur of (..., H, W) maps, sigma = ``smooth * max(H, W)``.

    Kernel ``exp(-i^2 / (2 sigma^2))`` for ``|i| <= ceil(4 sigma)``, normalised; replicate padding.
    ``smooth <= 0`` returns the maps unchanged.
    """
    if smooth <= 0:
        return maps
    h, w = maps.shape[-2:]
    sigma = smooth * max(h, w)
    r = math.ceil(4 * sigma)
    i = torch.arange(-r, r + 1, device=maps.device, dtype=maps.dtype)
    k = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    x = maps.reshape(-1, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(maps.shape)


class PointingScore:
    """Per-class hit / miss counts of one (method, layer, subset).

    :meth:`add` records one evaluation; :attr:`accuracy` is the mean of ``hits / (hits + misses)`` over the
    classes with at least one evaluation (NaN if none); :attr:`torchray_accuracy` reproduces TorchRay, which
    averages over all classes and counts empty ones as 0.
    """

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.hits = torch.zeros(num_classes, dtype=torch.long)
        self.misses = torch.zeros(num_classes, dtype=torch.long)

    def add(self, class_id: int, hit: bool) -> None:
        if not 0 <= class_id < len(self.hits):
            raise InputError(f"class id {class_id} out of range 0..{len(self.hits) - 1}")
        (self.hits if hit else self.misses)[class_id] += 1

    @property
    def evaluations(self) -> torch.Tensor:
        return self.hits + self.misses

    @property
    def class_accuracies(self) -> torch.Tensor:
        """Per-class accuracy, NaN for classes without evaluations."""
        n = self.evaluations.double()
        return torch.where(n > 0, self.hits.double() / n.clamp(min=1), torch.full_like(n, math.nan))

    @property
    def empty_classes(self) -> list[int]:
        return (self.evaluations == 0).nonzero().flatten().tolist()

    @property
    def accuracy(self) -> float:
        acc = self.class_accuracies
        seen = ~torch.isnan(acc)
        return float(acc[seen].mean()) if seen.any() else math.nan

    @property
    def torchray_accuracy(self) -> float:
        return float((self.hits.double() / self.evaluations.clamp(min=1).double()).mean())

    def records(self, method: str, layer: str, subset: str,
                class_names: Optional[Sequence[str]] = None) -> list[Record]:
        """``pointing_accuracy`` (count: evaluations), ``pointing_accuracy_torchray``, ``classes_evaluated``
        (value: classes with evaluations, count: all classes), ``classes_empty`` (value: classes without),
        and ``class_accuracy:<name>`` per class (NaN and count 0 for empty classes)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.hits))]
        total = int(self.evaluations.sum())
        n_cls = len(self.hits)
        empty = len(self.empty_classes)
        out = [
            Record(method, layer, subset, "pointing_accuracy", self.accuracy, total),
            Record(method, layer, subset, "pointing_accuracy_torchray", self.torchray_accuracy, total),
            Record(method, layer, subset, "classes_evaluated", n_cls - empty, n_cls),
            Record(method, layer, subset, "classes_empty", empty, n_cls),
        ]
        acc = self.class_accuracies
        for i, name in enumerate(names):
            out.append(Record(method, layer, subset, f"class_accuracy:{name}", float(acc[i]), int(self.evaluations[i])))
        return out


# ----------------------------------------------------------------------------- the benchmark driver
CENTER = "center-baseline"
"""The ``method`` field of the centre baseline's records (its ``layer`` is ``""``)."""


def spatial_softmax_objective(targets: torch.Tensor):
    """TorchRay's ``get_pointing_gradient`` as an objective: for a (N, C, h, w) output, the class score map
    weighted by its (constant, max-subtracted) spatial softmax; for (N, C), the plain logits. (N, T) scores."""

    def objective(output: torch.Tensor) -> torch.Tensor:
        t = targets.to(output.device)
        if output.ndim == 2:
            return output.gather(1, t)
        flat = output.flatten(2)
        sel = flat.gather(1, t[..., None].expand(-1, -1, flat.shape[2]))
        return (torch.softmax(sel.detach(), dim=2) * sel).sum(2)

    return objective


def _difficult_source(difficult, num_classes: int):
    from .difficult import read_difficult_flags

    if difficult is None or difficult == "rule":
        return difficult
    if isinstance(difficult, (str, bytes)) or hasattr(difficult, "__fspath__"):
        return read_difficult_flags(difficult, num_classes)
    if hasattr(difficult, "get"):
        return difficult
    raise InputError(f"difficult must be None, 'rule', a flags-file path or a {{image_id: flags}} mapping, got {difficult!r}")


def pointing_game(model: torch.nn.Module, data, methods, layers="input", *, preprocess=None,
                  num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
                  difficult="rule", tolerance: float = 15, smooth: float = 0.0, spatial_softmax: bool = False,
                  per_class: bool = True, limit: Optional[int] = None, progress: bool = False,
                  registry=None, mismatched: Optional[str] = None, on_image=None, class_map=None) -> list[Record]:
    """The pointing game for every (method, layer), plus the centre baseline, from one pass per image.

    :param data: iterable of :class:`~extagg.evaluation.datasets.Sample` with ``masks`` (e.g. :class:`VOCPointing`).
    :param methods: method strings or fnmatch patterns (:func:`~extagg.evaluation.common.expand_methods`).
    :param layers: layer names or patterns; with any pattern, (method, layer) pairs that do not fit are skipped.
    :param preprocess: maps the (3, H, W) [0, 1] image to the model input (e.g. resize + normalise).
    :param difficult: ``"rule"`` (paper: area < 25 % and another class present), a TorchRay flags file path, a
        ``{image_id: flags}`` mapping, or None (no difficult subset).
    :param tolerance: hit radius in original-image pixels (strict ``<``). :param smooth: TorchRay's ``smooth``
        (sigma = smooth * max(H, W)), applied, as in TorchRay, only to maps at the ``"input"`` layer.
    :param spatial_softmax: weight a fully convolutional model's class score map by its spatial softmax
        (TorchRay's pointing gradient) instead of summing it; the same for (N, C) outputs.
    :param on_image: optional ``callable(sample, classes, {(method, layer): (T, H, W) maps})`` per image.
    :param class_map: ``{data-set class (id or name): model class index or [indices]}`` or a JSON file; needed
        unless the model has exactly ``num_classes`` outputs (see :mod:`extagg.evaluation.class_map`).
    :returns: records with subsets ``"all"`` and ``"difficult"``; metrics from :meth:`PointingScore.records`.
        Every image gets ONE forward and ONE backward for all its classes (``targets`` of shape (1, T)).
    """
    from .class_map import group_objective, resolve_class_map
    from .common import any_pattern, expand_layers, expand_methods, iterate, logits, model_inputs, resize
    from .common import run_saliency, total_of
    from .common import progress as bar
    from .difficult import difficult_by_rule, difficult_from_file

    names = class_names or getattr(data, "class_names", None)
    num_classes = num_classes or (len(names) if names else None)
    if not num_classes:
        raise InputError("pointing_game needs num_classes (or class_names, or data with a class_names attribute)")
    method_list = expand_methods(methods, registry)
    layer_list = expand_layers(model, layers)
    mismatched = mismatched or ("skip" if any_pattern(methods, layers) else "raise")
    source = _difficult_source(difficult, num_classes)
    subsets = ["all"] + (["difficult"] if source is not None else [])
    scores: dict[tuple[str, str], dict[str, PointingScore]] = {}

    def score(key):
        if key not in scores:
            scores[key] = {s: PointingScore(num_classes) for s in subsets}
        return scores[key]

    score((CENTER, ""))
    cmap = None
    for sample in bar(iterate(data, limit), progress, total_of(data, limit), "pointing"):
        if sample.masks is None:
            raise InputError(f"sample {sample.image_id!r} has no masks; the pointing game needs localisation data")
        keep = sample.evaluated
        if not keep:
            continue
        classes = [sample.classes[i] for i in keep]
        if any(not 0 <= c < num_classes for c in classes):
            raise InputError(f"sample {sample.image_id!r} has class ids {classes}; valid 0..{num_classes - 1}")
        x = model_inputs(model, [sample.image], preprocess)
        if cmap is None:
            cmap = resolve_class_map(class_map, num_data_classes=num_classes, data_names=names,
                                     num_model_classes=logits(model, x).shape[1])
        keep = [i for i in keep if cmap.mapped(sample.classes[i])]
        if not keep:
            continue
        classes = [sample.classes[i] for i in keep]
        masks = sample.masks[keep].bool().cpu()
        h, w = masks.shape[-2:]
        if source == "rule":
            hard = difficult_by_rule(masks, len(sample.classes)).tolist()
        elif source is not None:
            hard = difficult_from_file(source, sample.image_id, classes).tolist()
        else:
            hard = [False] * len(classes)
        if cmap.single:
            targets = torch.tensor([[cmap.groups[c][0] for c in classes]], dtype=torch.long)
            kw = dict(objective=spatial_softmax_objective(targets)) if spatial_softmax else dict(targets=targets)
        else:
            base = spatial_softmax_objective if spatial_softmax else None
            kw = dict(objective=group_objective([[cmap.groups[c] for c in classes]], base))
        maps, _ = run_saliency(model, x, method_list, layer_list, mismatched=mismatched, registry=registry, **kw)
        resized = {}
        for (method, layer), m in maps.items():
            m = resize(m, (h, w))[0]
            if layer == "input":
                m = gaussian_smooth(m, smooth)
            resized[method, layer] = m
            points = saliency_point(m).cpu()
            _tally(score((method, layer)), classes, masks, points, hard, tolerance)
        centre = torch.tensor([center_point(h, w)] * len(classes), dtype=torch.float64)
        _tally(score((CENTER, "")), classes, masks, centre, hard, tolerance)
        if on_image is not None:
            on_image(sample, classes, resized)
    records: list[Record] = []
    for (method, layer), by_subset in scores.items():
        for subset, sc in by_subset.items():
            rs = sc.records(method, layer, subset, names)
            records += rs if per_class else [r for r in rs if not r.metric.startswith("class_accuracy:")]
    return records


def _tally(score: dict, classes, masks, points, hard, tolerance) -> None:
    for t, c in enumerate(classes):
        hit = pointing_hit(masks[t], points[t], tolerance)
        score["all"].add(c, hit)
        if hard[t] and "difficult" in score:
            score["difficult"].add(c, hit)
