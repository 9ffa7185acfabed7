"""Typed results of the metric driver, per image and reduced, shared by ``extagg evaluate`` and ``extagg sweep``.

:class:`ImageValue` is one per-image number (method as asked and canonical, layer, metric call, measure, subset,
image, class); :func:`reduce_values` turns them into :class:`Result` rows, one per (method, layer, metric,
measure, subset): the mean over the images where the value is defined (``n``; ``nan`` = where undefined, e.g.
a constant map's rank correlation), and ``std``, the **sample** standard deviation (``n - 1`` in the
denominator; NaN for ``n < 2``). Values that name a class (the pointing game) are averaged per class first, then
over classes (``n`` = evaluations). Sums are ``math.fsum`` over the values in the order given, so the numbers
never depend on which batch or rank computed what.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import attrs

from ..metric_spec import FLOOR_PREFIX, Direction

IMAGE_FIELDS = ("method", "canonical", "layer", "metric", "measure", "subset", "cls", "image", "value")
RESULT_FIELDS = ("method", "canonical", "layer", "metric", "measure", "subset", "value", "n", "nan", "std",
                 "direction")


@attrs.frozen
class ImageValue:
    """One per-image number. ``method``: as the user wrote it; ``canonical``: its canonical string; ``metric``:
    the metric call's canonical text (``sensitivity(pairing=random)``); ``cls``: the class it is about or None."""

    method: str
    canonical: str
    layer: str
    metric: str
    measure: str
    subset: str
    image: str
    value: float
    cls: Optional[int] = None

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in IMAGE_FIELDS}


@attrs.frozen
class Result:
    """One reduced number (see the module docstring); ``direction``: which way the measure is better."""

    method: str
    canonical: str
    layer: str
    metric: str
    measure: str
    subset: str
    value: float
    n: int
    nan: int = 0
    std: float = math.nan
    direction: str = "higher"

    @property
    def floor(self) -> bool:
        """Whether this row is a floor (``floor:...`` subset), not a measured value."""
        return self.subset.startswith(FLOOR_PREFIX)

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in RESULT_FIELDS}


def jsonable(d: dict) -> dict:
    """``d`` with non-finite floats as None (JSON ``null``)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def mean_std(values: list[float]) -> tuple[float, int, int, float]:
    """(mean of the finite values, their count, the count of the others, sample std)."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if not n:
        return math.nan, 0, len(values), math.nan
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
    return mean, n, len(values) - n, std


def reduce_values(values: Iterable[ImageValue], directions: Optional[dict] = None) -> list[Result]:
    """One :class:`Result` per (canonical method, layer, metric, measure, subset), in first-seen order.
    ``directions``: {(metric, measure): Direction or its value}; missing ones are ``"higher"``."""
    groups: dict[tuple, list[ImageValue]] = {}
    for v in values:
        groups.setdefault((v.canonical, v.layer, v.metric, v.measure, v.subset), []).append(v)
    out = []
    for (canonical, layer, metric, measure, subset), vs in groups.items():
        direction = Direction((directions or {}).get((metric, measure), "higher")).value
        if any(v.cls is not None for v in vs):
            per_class: dict = {}
            for v in vs:
                per_class.setdefault(v.cls, []).append(v.value)
            accuracies = [mean_std(x)[0] for x in per_class.values()]
            finite = [a for a in accuracies if math.isfinite(a)]
            value = math.fsum(finite) / len(finite) if finite else math.nan
            n = sum(1 for v in vs if math.isfinite(v.value))
            out.append(Result(vs[0].method, canonical, layer, metric, measure, subset, value, n, len(vs) - n,
                              math.nan, direction))
        else:
            mean, n, nan, std = mean_std([v.value for v in vs])
            out.append(Result(vs[0].method, canonical, layer, metric, measure, subset, mean, n, nan, std, direction))
    return out


def find(rows: Iterable[Result], method: str, layer: str, metric: str, measure: Optional[str],
         subset: Optional[str], calls=()) -> Result:
    """The row of ``method`` (as asked, or canonical) at ``layer`` for ``metric`` (a metric call's canonical text,
    or its name when exactly one call has it); ``measure`` None: the call's first measure; ``subset`` None: the
    metric's headline subset (else the first that is not a floor). KeyError otherwise."""
    rows = list(rows)
    mine = [c for c in calls if metric == str(c)] or [c for c in calls if metric == c.name]
    if len(mine) > 1:
        raise KeyError(f"{metric!r} names {len(mine)} metric calls ({', '.join(map(str, mine))}); give one of them")
    texts = {str(c) for c in mine} if mine else {metric}
    if measure is None:
        if not mine:
            raise KeyError((method, layer, metric, measure, subset))
        measure = mine[0].metric.measures[0].name
    if subset is None:
        subsets = list(dict.fromkeys(r.subset for r in rows if r.metric in texts and not r.floor))
        head = mine[0].metric.headline(subsets, **mine[0].kwargs) if mine and mine[0].metric.headline else None
        subset = head if head in subsets else (subsets[0] if subsets else "all")
    for r in rows:
        if method in (r.method, r.canonical) and (r.layer, r.measure, r.subset) == (layer, measure, subset) \
                and r.metric in texts:
            return r
    raise KeyError((method, layer, metric, measure, subset))
