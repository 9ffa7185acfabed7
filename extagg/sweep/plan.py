"""What a sweep will compute: methods x layers (+ combinations) x metrics x images, and what it will cost.

A **unit** is one (method, layer, metric, image): the smallest piece of work whose result is stored, skipped on
resume and counted in the preview. ``layer`` is a layer name or a combination label ``combine:MODE:WEIGHTING``;
``metric`` the canonical text of a metric call (``sensitivity(pairing=random)``). Images are processed in fixed batches of ``batch_size`` (the same
batches on resume and on every rank, so every number is computed the same way).
"""
from __future__ import annotations

import math

import attrs
import torch

from ..phase2 import Plan as MethodPlan
from ..capture import LayerCapture
from ..contributions import Factored
from ..layers import execution_order
from ..registry import Registry
from ..evaluation.driver import Layout
from .config import SweepConfig, metric_name, parse_combination


def combination_label(text: str) -> str:
    mode, weighting = parse_combination(text)
    return f"combine:{mode}:{weighting}"


@attrs.frozen
class SweepPlan:
    """The resolved sweep. ``layout``: what is scored (:class:`~extagg.evaluation.driver.Layout`: fitting pairs,
    combinations, companions, the names the user asked for); ``calls``: the metric calls; ``metrics``: their
    canonical texts (the ``metric`` of every unit)."""

    layout: Layout
    calls: tuple = attrs.field(eq=False, repr=False)
    metrics: tuple[str, ...]
    image_ids: tuple[str, ...]
    batches: tuple[tuple[int, ...], ...]
    blocks: tuple[str, ...]  # randomisation order, output first
    per_example: frozenset  # methods with a per-example modifier (meta)
    slow: tuple[str, ...]  # methods without a closed form on a factored contribution
    explainers: dict = attrs.field(factory=dict, eq=False, repr=False)  # external: {name: callable}

    methods = property(lambda self: self.layout.methods)
    layers = property(lambda self: self.layout.layers)
    pairs = property(lambda self: self.layout.pairs)
    combinations = property(lambda self: self.layout.combinations)
    combined = property(lambda self: self.layout.combined)
    layer_order = property(lambda self: self.layout.layer_order)
    external = property(lambda self: self.layout.external)

    @property
    def twins(self) -> dict:
        """{(method, layer): companion method} of every metric with companions (the identity check's twins)."""
        return {k: t for c in self.layout.companions.values() for k, t in c.items()}

    def call(self, metric: str):
        """The metric call whose canonical text is ``metric``."""
        return next(c for c in self.calls if str(c) == metric)

    def keys(self, metric: str) -> list[tuple[str, str]]:
        """The (method, layer) keys of ``metric`` (a canonical metric text), in plan order."""
        return self.layout.keys(metric)

    def units(self, metric: str, image_ids) -> list[tuple[str, str, str, str]]:
        return [(m, layer, metric, i) for i in image_ids for m, layer in self.keys(metric)]

    def all_units(self) -> list[tuple[str, str, str, str]]:
        return [u for metric in self.metrics for u in self.units(metric, self.image_ids)]

    def as_dict(self) -> dict:
        return {"methods": list(self.methods), "layers": list(self.layers), "pairs": [list(p) for p in self.pairs],
                "combinations": list(self.combinations), "metrics": list(self.metrics),
                "images": list(self.image_ids), "randomise": list(self.blocks),
                "companions": {m: [[k[0], k[1], t] for k, t in c.items()] for m, c in self.layout.companions.items()}}


def expand_methods(config: SweepConfig, registry: Registry) -> dict[str, str]:
    """{canonical method: the name the user wrote (a pattern's matches: their canonical string)}, in order."""
    import fnmatch

    from ..evaluation.common import expand_methods as expand
    from ..evaluation.common import is_pattern

    asked: dict[str, str] = {}
    for written in config.methods:
        for canonical in expand([written], registry):
            asked.setdefault(canonical, canonical if is_pattern(written) else written)
    if config.exclude:
        asked = {m: a for m, a in asked.items() if not any(fnmatch.fnmatchcase(m, x) for x in config.exclude)}
    if not asked and config.methods:
        from ..errors import InputError

        raise InputError(f"--exclude {' '.join(config.exclude)} leaves no method of {' '.join(config.methods)}")
    return asked


def is_slow(registry: Registry, method: str) -> bool:
    """True if the method's extractor gives a factored (outer-product) contribution and its aggregator, with its
    pre-filters, has no closed form: phase 2 then materialises the contribution in chunks. The form is the
    extractor's declared ``factored``; an extractor that leaves it undeclared (None) is called once on a small
    synthetic capture to see, and counts as factored if that call fails."""
    parsed = registry.parse(method)
    plan = MethodPlan.of(registry, parsed)
    if plan.profile is not None and plan.spec.closed_form is not None:
        return False
    spec = registry.extractors[parsed.extractor.name]
    if spec.factored is not None:
        return spec.factored
    x = torch.ones(1, 4, 6, 6)
    capture = LayerCapture("probe", torch.nn.Conv2d(4, 4, 3, padding=1), output=x, input=x, grad=x[:, None])
    try:
        out = spec.fn(capture, **parsed.extractor.kwargs)
    except Exception:  # noqa: BLE001 - an extractor for other modules: unknown, assume the worst
        return True
    return isinstance(out, Factored)


def metric_calls(config: SweepConfig, registry: Registry) -> list:
    """The configured metrics resolved against ``registry`` (the options ``--steps``, ... fill parameters a call
    leaves out); two texts that resolve to the same call are refused."""
    from ..evaluation.driver import parse_metric

    calls = []
    for text in config.metrics:
        call = parse_metric(registry, text, config.metric_defaults().get(metric_name(text)))
        if str(call) in map(str, calls):
            from ..errors import InputError

            raise InputError(f"metrics {text!r} and {str(call)!r} are the same metric call")
        calls.append(call)
    return calls


def make_plan(config: SweepConfig, model: torch.nn.Module, registry: Registry, image_ids: list[str],
              example: torch.Tensor, layers: list[str], calls=None, explainers=None) -> SweepPlan:
    """The plan of a sweep; ``calls``: :func:`metric_calls` of ``config`` when already resolved; ``explainers``:
    {name: callable} of ``config.explainers`` (external methods at the layer ``"external"``)."""
    from ..evaluation.driver import make_layout
    from ..evaluation.randomisation import cascading_order

    asked = expand_methods(config, registry)
    methods = list(asked)
    calls = metric_calls(config, registry) if calls is None else list(calls)
    order = [n for n, _ in execution_order(model, example)]
    position = {n: i for i, n in enumerate(order)}
    layer_order = tuple(sorted((layer for layer in layers if layer != "input"),
                               key=lambda n: position.get(n, math.inf)))
    combinations = tuple(dict.fromkeys(combination_label(c) for c in config.combine))
    layout = make_layout(registry, model, methods, layers, calls, combinations=combinations,
                         layer_order=layer_order, asked=asked, external=config.explainers)
    twins = [t for c in layout.companions.values() for t in c.values()]
    per_example = frozenset(m for m in [*methods, *twins] if registry.per_example(m))
    n = len(image_ids)
    size = config.batch_size  # a per-image metric (pointing) takes the batch's images one at a time
    batches = tuple(tuple(range(i, min(i + size, n))) for i in range(0, n, size))
    needs_blocks = any("model_copy" in c.metric.needs for c in calls)
    blocks = tuple(cascading_order(model, list(config.randomise) or None, example)) if needs_blocks else ()
    slow = tuple(m for m in dict.fromkeys([*methods, *twins]) if is_slow(registry, m))
    return SweepPlan(layout, tuple(calls), tuple(str(c) for c in calls), tuple(image_ids), batches, blocks,
                     per_example, slow, dict(explainers or {}))
