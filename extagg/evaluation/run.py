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
from ..util import check_seed
from .common import any_pattern, batches, expand_layers, expand_methods, iterate
from .common import progress as bar
from .driver import Driver, MetricCall, make_layout, parse_metric
from .results import ImageValue, Result, find, reduce_values


@attrs.frozen
class Evaluation:
    """What :func:`evaluate` measured: ``rows`` (reduced) and ``values`` (per image)."""

    rows: tuple[Result, ...]
    values: tuple[ImageValue, ...] = attrs.field(repr=False)

    calls: tuple = attrs.field(default=(), repr=False)

    def value(self, method: str, layer: str, metric: str, measure: Optional[str] = None,
              subset: Optional[str] = None) -> float:
        """The reduced value; ``method`` as written or canonical, ``metric`` by name or canonical call,
        ``measure`` by default the metric's first, ``subset`` by default its headline subset."""
        return find(self.rows, method, layer, metric, measure, subset, calls=self.calls).value

    def per_image(self, metric: Optional[str] = None, measure: Optional[str] = None, subset: Optional[str] = None,
                  method: Optional[str] = None, layer: Optional[str] = None) -> list[float]:
        """The per-image values of one (method, layer, metric, measure, subset), in image order. Each argument
        may be left out where only one choice exists (``subset``: the first non-floor subset; ``measure``: the
        metric's first)."""
        from ..metric_spec import FLOOR_PREFIX

        rows = list(self.values)
        texts = {str(c): c for c in self.calls}
        if metric is not None:
            wanted = {t for t, c in texts.items() if metric in (t, c.name)}
            if not wanted:
                raise InputError(f"no metric {metric!r} in this evaluation; it has {sorted(texts)}")
            rows = [v for v in rows if v.metric in wanted]
        for field, want in (("method", method), ("layer", layer)):
            if want is not None:
                rows = [v for v in rows if want in (getattr(v, field), v.canonical if field == "method" else None)]
        if measure is None:
            call = texts.get(rows[0].metric) if rows else None
            measure = call.metric.measures[0].name if call is not None else None
        rows = [v for v in rows if v.measure == measure]
        if subset is None:
            subset = next((v.subset for v in rows if not v.subset.startswith(FLOOR_PREFIX)), None)
        rows = [v for v in rows if v.subset == subset]
        if len({(v.metric, v.method, v.layer) for v in rows}) > 1:
            raise InputError("several metrics, methods or layers match; name the one you want "
                             f"({sorted({(v.metric, v.method, v.layer) for v in rows})[:4]} ...)")
        return [v.value for v in rows]


def _class_map(model, data, preprocess, class_map):
    """The class map of a labelled evaluation (None when the data declares no classes: labels are then the
    model's class indices); refuses data-set classes read as the model's when their numbers differ."""
    from .class_map import resolve_class_map
    from .common import logits, model_inputs

    names = getattr(data, "class_names", None)
    if names is None:
        if class_map is not None:
            raise InputError("a class_map needs data that declares its classes (data.class_names)")
        return None
    first = next(iter(iterate(data, 1)), None)
    if first is None:
        return None
    outputs = logits(model, model_inputs(model, [first.image], preprocess)).shape[1]
    cmap = resolve_class_map(class_map, num_data_classes=len(names), data_names=list(names),
                             num_model_classes=outputs)
    if not cmap.single:
        raise InputError("this evaluation explains one model class per data-set class; map each class to one "
                         "model class index (a group of several is for pointing_game and identity_check)")
    return cmap


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
             defaults: Optional[dict] = None, settings: Optional[dict] = None, class_map=None,
             explainers: Optional[dict] = None) -> Evaluation:
    """Score every (method, layer) with every metric call, batch by batch, through :class:`Driver`.

    :param metrics: metric calls (``"deletion(steps=16)"``), see ``extagg metrics``.
    :param defaults: parameter values for the metric calls that leave them out (``{"steps": 32}``).
    :param settings: shared settings (``randomise``: blocks or patterns; ``class_map``; ``curve_batch``).
    :param targets: the explained class: ``"predicted"``, ``"label"`` or a class index.
    :param class_map: when labels are read (``targets="label"``, a metric that needs labels) and the data
        declares its classes (``data.class_names``): {data-set class: model class} or a JSON file, as
        ``extagg evaluate --class-map``; without one, the data set's classes must be the model's (else refused).
    :param explainers: external explainers ``{name: callable(model, x, targets) -> maps}`` (a pytorch-grad-cam
        or Captum explainer through :mod:`extagg.interop`), scored as methods ``name`` at the layer
        ``"external"`` by every metric, called again for every further pass (see
        :mod:`extagg.evaluation.external`); ``methods`` may then be empty.
    Batches: ``batch_size`` consecutive images (per-image metrics such as the pointing game take them one at a
    time), the batches ``extagg sweep`` uses for the same images and batch size; without ``preprocess``, also
    split where the image size changes. Images without an id get their position as id (their random draws and
    surrogates are seeded by it).
    """
    seed = check_seed(seed)  # 0..2**63-1, before any image is read
    registry = registry or default_registry()
    texts = [metrics] if isinstance(metrics, str) else list(metrics)
    if not texts:
        raise InputError("give at least one metric (see `extagg metrics`)")
    calls = [parse_metric(registry, t, defaults) for t in texts]
    from .external import check_explainers

    external = check_explainers(explainers, registry)
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
    from .driver import fitting_pairs

    pairs = fitting_pairs(registry, model, method_list, layer_list) if method_list else []
    if not pairs and not external:  # patterns that fit nowhere: nothing to score (explicit names raised above)
        return Evaluation((), (), tuple(calls))
    layout = make_layout(registry, model, method_list, layer_list, calls, asked=asked, pairs=pairs,
                         external=tuple(external))
    settings = dict(settings or {})
    if targets == "label" or any("labels" in c.metric.needs for c in calls) or class_map is not None:
        settings.setdefault("class_map", _class_map(model, data, preprocess, class_map))
    driver = Driver(model, preprocess, registry, layout, calls, targets=targets, seed=seed, settings=settings,
                    mismatched="skip", explainers=external)
    out: list[ImageValue] = []
    count = 0
    for group in bar(batches(iterate(data, limit), batch_size, by_shape=preprocess is None), progress, None,
                     "evaluate"):
        ids = [s.image_id or str(count + i) for i, s in enumerate(group)]
        group = [s if s.image_id else attrs.evolve(s, image_id=i) for s, i in zip(group, ids)]  # seeds per image
        count += len(group)
        for call, values in driver.run(group):
            out += image_values(layout, call, values, ids)
    order = {str(c): i for i, c in enumerate(calls)}
    out.sort(key=lambda v: order[v.metric])  # stable: within a metric, batch order
    return Evaluation(tuple(reduce_values(out, directions(calls))), tuple(out), tuple(calls))
