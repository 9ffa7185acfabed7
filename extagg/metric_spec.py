"""The metric contract: the records a metric plugin registers and the typed values it returns.

A metric is a plugin component like an extractor: ``register_metrics(register)`` hands the host a frozen
:class:`Metric`. The host (:mod:`extagg.evaluation.driver`) plans one batch at a time, builds a
:class:`~extagg.evaluation.context.BatchContext` (images, class scores, explained classes, the maps of one
saliency pass) and calls ``metric.compute(ctx, **params)``; the metric returns :class:`Value` records. The same
loop runs behind ``extagg evaluate`` and ``extagg sweep``.

Every measure a metric returns is declared up front as a :class:`Measure` with a :class:`Direction` (higher
better, lower better, closest to zero) and a range: rankings, stars and figures read the direction and nothing
else. Floors (what chance or position alone give) are values of the same measure on a subset whose name starts
with ``floor:`` (:data:`FLOOR_PREFIX`), computed next to the measured value.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, Optional

import attrs

from .specs import Origin, Param

FLOOR_PREFIX = "floor:"
"""Subsets of a measure that are floors (``floor:cross-image``, ``floor:smooth-noise``), not measured values."""
NEEDS = frozenset({"labels", "masks", "model_copy", "extra_passes"})
"""What a metric may declare in ``needs``: data-set labels, localisation masks, a copy of the model it may change
(randomisation), forward passes of its own (curves)."""


class Direction(str, enum.Enum):
    """Which way a measure is better. ``ZERO``: closest to zero by absolute value (an anti-correlated map is
    as dependent on what changed as a correlated one)."""

    HIGHER = "higher"
    LOWER = "lower"
    ZERO = "zero"

    def key(self, value: float) -> float:
        """A sort key, smaller is better; NaN sorts last."""
        if not math.isfinite(value):
            return math.inf
        return -value if self is Direction.HIGHER else value if self is Direction.LOWER else abs(value)

    def best(self, values):
        """The best finite value of ``values`` (None if none is finite)."""
        finite = [v for v in values if math.isfinite(v)]
        return min(finite, key=self.key) if finite else None

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓", "zero": "→0"}[self.value]


def _direction(value: Any) -> Direction:
    if isinstance(value, Direction):
        return value
    try:
        return Direction(str(value).lower())
    except ValueError:
        from .errors import UnknownNameError

        raise UnknownNameError("measure direction", str(value), [d.value for d in Direction]) from None


@attrs.frozen(kw_only=True)
class Measure:
    """One number a metric reports per image: ``name``, which way is better, its range ``(low, high)``."""

    name: str
    direction: Direction = attrs.field(converter=_direction)
    low: float = -math.inf
    high: float = math.inf
    doc: str = ""


@attrs.frozen
class Value:
    """One per-image result of a metric: ``measure`` on ``subset`` (e.g. ``cascading:_blocks.15``,
    ``floor:cross-image``) for image ``image`` (its index in the batch) of ``key`` = (method, layer);
    ``cls``: the class it is about, for metrics that score every annotated class (pointing), else None."""

    key: tuple
    image: int
    subset: str
    measure: str
    value: float = attrs.field(converter=float)
    cls: Optional[int] = None


@attrs.frozen(kw_only=True)
class Cost:
    """What one batch costs a metric beyond the shared pass (for the sweep's preview): ``saliency_passes`` of all
    methods (a per-example method's pass per image counts as one), ``forward_images`` through the model without
    gradients."""

    saliency_passes: int = 0
    forward_images: int = 0


def _tuple(x: Any) -> tuple:
    return tuple(x)


@attrs.frozen(kw_only=True)
class Metric:
    """A metric: how to score every (method, layer) map of a batch.

    ``compute(ctx, **params)`` returns an iterable of :class:`Value` for the keys ``ctx.keys`` and the images of
    the batch; every (key, image) should get every measure of its main subset (NaN where undefined).
    ``columns(ctx, **params)`` (optional) returns extra (N,) target-class tensors whose maps the metric reads
    from the shared pass (``ctx.maps_for(column)``);
    ``cost(n, keys, blocks, **params)`` (``n`` images, the keys, the number of blocks a model-copy
    metric may randomise) a :class:`Cost`; ``headline(subsets, **params)`` the subset a summary shows (default: the first non-floor one).
    ``per_image``: batches of one image (pointing, whose targets are each image's annotated classes).
    ``companion(registry, method, module, **params)`` (optional) names, per (method, layer module), another
    method whose map the metric compares with (the identity check's real-layer twin), or None; the metric then
    scores only the keys with a companion, whose maps come from the shared pass (``ctx.maps_for()[(twin, layer)]``).
    """

    name: str
    compute: Callable[..., Any] = attrs.field(eq=False, repr=False)
    measures: tuple[Measure, ...] = attrs.field(converter=_tuple)
    doc: str = ""
    reference: str = ""
    params: tuple[Param, ...] = attrs.field(default=(), converter=_tuple)
    needs: frozenset = attrs.field(default=frozenset(), converter=frozenset)
    columns: Optional[Callable[..., Any]] = attrs.field(default=None, eq=False, repr=False)
    cost: Optional[Callable[..., Cost]] = attrs.field(default=None, eq=False, repr=False)
    headline: Optional[Callable[..., Optional[str]]] = attrs.field(default=None, eq=False, repr=False)
    companion: Optional[Callable[..., Optional[str]]] = attrs.field(default=None, eq=False, repr=False)
    per_image: bool = False
    origin: Optional[Origin] = None
    kind = "metric"

    def measure(self, name: str) -> Measure:
        for m in self.measures:
            if m.name == name:
                return m
        from .errors import UnknownNameError

        raise UnknownNameError(f"measure of metric {self.name!r}", name, [m.name for m in self.measures])


def metric_problems(record: Metric) -> list[str]:
    """What is wrong with a registered :class:`Metric` (empty if nothing)."""
    out = []
    if not callable(record.compute):
        out.append("compute must be callable (ctx, **params) -> iterable of Value")
    if not record.measures or not all(isinstance(m, Measure) for m in record.measures):
        out.append("measures must be a non-empty tuple of extagg.plugin.Measure")
    names = [m.name for m in getattr(record, "measures", ()) if isinstance(m, Measure)]
    if len(set(names)) != len(names):
        out.append(f"measure names repeat: {names}")
    unknown = set(record.needs) - NEEDS
    if unknown:
        out.append(f"needs {sorted(unknown)} unknown; a metric may need {sorted(NEEDS)}")
    for name in ("columns", "cost", "headline", "companion"):
        f = getattr(record, name)
        if f is not None and not callable(f):
            out.append(f"{name} must be callable or None")
    return out
