"""``evaluate()``: any registered metrics over a data set, through the one driver (a sweep without a store).

::

    from extagg.evaluation import evaluate
    out = evaluate(model, samples, ["gradcam", "normgrad"], ["layer3", "layer4"],
                   ["sensitivity(pairing=random)", "deletion(steps=16)"])
    out.rows          # Result rows: value, n, nan, sample std, direction; floors as floor:... subsets
    out.values        # ImageValue per image
    out.value("gradcam", "layer4", "deletion", "deletion_auc")
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import attrs
import torch

from ..errors import InputError
from ..registry import default_registry
from .common import any_pattern, batches, expand_layers, expand_methods, iterate
from .common import progress as bar
from .driver import Driver, MetricCall, make_layout, parse_metric
from .results import ImageValue, Result, find, reduce_values


@attrs.frozen
class Evaluation:
    """What :func:`evaluate` measured: ``rows`` (reduced) and ``values`` (per image)."""

    rows: tuple[Result, ...]
    values: tuple[ImageValue, ...] = attrs.field(repr=False)

    def value(self, method: str, layer: str, metric: str, measure: str, subset: str = "all") -> float:
        """The reduced value; ``method`` as written or canonical, ``metric`` by name or canonical call."""
        return find(self.rows, method, layer, metric, measure, subset).value


def image_values(layout, call: MetricCall, values, image_ids: Sequence[str]) -> list[ImageValue]:
    """The driver's :class:`~extagg.metric_spec.Value` records of one batch as :class:`ImageValue` rows."""
    text = str(call)
    return [ImageValue(layout.asked.get(v.key[0], v.key[0]), v.key[0], v.key[1], text, v.measure, v.subset,
                       image_ids[v.image], v.value, v.cls) for v in values]


def directions(calls: Sequence[MetricCall]) -> dict:
    return {(str(c), m.name): m.direction for c in calls for m in c.metric.measures}


def evaluate(model: torch.nn.Module, data, methods, layers="input", metrics: Union[str, Sequence[str]] = "sensitivity",
             *, preprocess=None, batch_size: int = 8, limit: Optional[int] = None, progress: bool = False,
             registry=None, mismatched: Optional[str] = None, targets="predicted", seed: int = 0,
             defaults: Optional[dict] = None, settings: Optional[dict] = None) -> Evaluation:
    """Score every (method, layer) with every metric call, batch by batch, through :class:`Driver`.

    :param metrics: metric calls (``"deletion(steps=16)"``), see ``extagg metrics``.
    :param defaults: parameter values for the metric calls that leave them out (``{"steps": 32}``).
    :param settings: shared settings (``randomise``: blocks or patterns; ``class_map``; ``curve_batch``).
    :param targets: the explained class: ``"predicted"``, ``"label"`` or a class index.
    Batches: up to ``batch_size`` consecutive same-size images (one image for per-image metrics such as the
    pointing game), the same batches ``extagg sweep`` uses for the same images and batch size.
    """
    registry = registry or default_registry()
    texts = [metrics] if isinstance(metrics, str) else list(metrics)
    if not texts:
        raise InputError("give at least one metric (see `extagg metrics`)")
    calls = [parse_metric(registry, t, defaults) for t in texts]
    asked = {}
    for m in ([methods] if isinstance(methods, str) else list(methods)):
        for canonical in expand_methods([m], registry):
            asked.setdefault(canonical, m if not any_pattern([m]) else canonical)
    method_list = list(asked)
    layer_list = expand_layers(model, layers)
    mismatched = mismatched or ("skip" if any_pattern(methods, layers) else "raise")
    if mismatched == "raise":  # explicit names: a method that does not fit a layer is an error, as in saliency()
        from ..capture import resolve_layers
        from ..engine import check_layer_fit

        modules = resolve_layers(model, layer_list)
        for m in method_list:
            for layer in layer_list:
                check_layer_fit(registry, registry.parse(m), layer, modules[layer])
    layout = make_layout(registry, model, method_list, layer_list, calls, asked=asked)
    driver = Driver(model, preprocess, registry, layout, calls, targets=targets, seed=seed, settings=settings,
                    mismatched="skip")
    per_image = any(c.metric.per_image for c in calls)
    out: list[ImageValue] = []
    count = 0
    for group in bar(batches(iterate(data, limit), 1 if per_image else batch_size), progress, None, "evaluate"):
        ids = [s.image_id or str(count + i) for i, s in enumerate(group)]
        count += len(group)
        for call, values in driver.run(group):
            out += image_values(layout, call, values, ids)
    order = {str(c): i for i, c in enumerate(calls)}
    out.sort(key=lambda v: order[v.metric])  # stable: within a metric, batch order
    return Evaluation(tuple(reduce_values(out, directions(calls))), tuple(out))
