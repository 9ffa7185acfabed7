"""The one driver behind ``extagg sweep``, :func:`extagg.evaluation.evaluate` and ``extagg evaluate`` (all but the
dedicated pointing-game and identity-check loops it runs for a bare ``--metric pointing|identity``, which carry
options the metric plugins do not): a loop over metric calls, batch by batch.

A metric is written as a call in the method grammar, ``deletion(steps=8,baseline=blur)``,
``sensitivity(pairing=random)``; :func:`parse_metric` resolves it against the registry's metrics
(:class:`MetricCall`, canonical text: parameters at their default left out). :func:`make_layout` resolves what is
scored: the (method, layer) pairs that fit, the layer combinations, each metric's companions. :class:`Driver`
computes one batch: one gradient-free pass for the classes, one saliency pass for every method at every layer and
every target column the wanted metrics declared, then each metric's ``compute`` on the shared
:class:`~extagg.evaluation.context.BatchContext`; metrics that need more (randomisation, curves) ask the context.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import attrs
import torch

from ..errors import ExtaggError, InputError, PluginError, UnknownNameError
from ..metric_spec import FLOOR_PREFIX, Metric, Value
from ..method import Call, scan
from ..progress import tick
from .common import logits as class_scores
from .common import model_inputs, run_saliency
from .context import BatchContext


@attrs.frozen
class MetricCall:
    """A metric with its parameters: ``str(call)`` is the canonical text (parameters at their default left out)."""

    metric: Metric = attrs.field(eq=False, repr=False)
    call: Call

    def __str__(self) -> str:
        return str(self.call)

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def kwargs(self) -> dict[str, Any]:
        """Every parameter, defaults included."""
        return {**{p.name: p.default for p in self.metric.params if not p.required}, **self.call.kwargs}


def parse_metric(registry, text: str, defaults: Optional[dict] = None) -> MetricCall:
    """Resolve ``"name(k=v,...)"`` against ``registry.metrics``; ``defaults`` fill parameters the text leaves out
    (the sweep's ``--steps``, ``--baseline``, ...), where the metric has them."""
    if isinstance(text, MetricCall):
        return text
    if not isinstance(text, str):
        raise InputError(f"a metric is a string such as 'deletion(steps=8)', got {type(text).__name__}: {text!r}")
    raw = scan(text.strip())
    if raw.modifiers or len(raw.calls) != 1:
        raise InputError(f"a metric is one name with optional parameters, e.g. 'deletion(steps=8)', got {text!r}")
    head = raw.calls[0]
    if head.name not in registry.metrics:
        raise UnknownNameError("metric", head.name, registry.metrics, context=text)
    metric = registry.metrics[head.name]
    given = {k for k, _, _ in head.args}
    names = {p.name for p in metric.params}
    extra = tuple((k, v, head.position) for k, v in (defaults or {}).items() if k in names and k not in given)
    call = registry._call(metric, attrs.evolve(head, args=head.args + extra), text)
    return MetricCall(metric, call)


def fitting_pairs(registry, model: torch.nn.Module, methods: Sequence[str], layers: Sequence[str]) -> list:
    """The (method, layer) pairs whose extractor applies to the layer's module, in method-major order."""
    from ..capture import resolve_layers
    from ..engine import fits

    modules = resolve_layers(model, list(layers))
    return [(m, layer) for m in methods for layer in layers if fits(registry, registry.parse(m), modules[layer])]


@attrs.frozen
class Layout:
    """What a run scores. ``pairs``: fitting (method, layer); ``combinations``: labels ``combine:MODE:WEIGHTING``;
    ``combined``: {method: the layers it combines}; ``companions``: {metric text: {(method, layer): twin}};
    ``asked``: {canonical method: the name the user wrote}; ``external``: the names of external explainers
    (:mod:`.external`), also in ``methods``, scored at the layer ``"external"`` (their pairs are in ``pairs``)."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    combinations: tuple[str, ...] = ()
    combined: dict = attrs.field(factory=dict)
    layer_order: tuple[str, ...] = ()
    companions: dict = attrs.field(factory=dict)
    asked: dict = attrs.field(factory=dict)
    external: tuple[str, ...] = ()

    def external_layers(self) -> list[str]:
        """The layer labels of the external explainers' pairs (none without explainers)."""
        return list(dict.fromkeys(layer for m, layer in self.pairs if m in self.external))

    def keys(self, metric: str) -> list[tuple[str, str]]:
        """The (method, layer) keys ``metric`` (a metric text) scores, in plan order."""
        if metric in self.companions:
            return [k for k in self.pairs if k in self.companions[metric]]
        keys = list(self.pairs)
        for method in self.methods:
            if method in self.combined:
                keys += [(method, c) for c in self.combinations]
        order = {m: i for i, m in enumerate(self.methods)}
        keys.sort(key=lambda k: order[k[0]])
        return keys

    def companion_methods(self) -> list[str]:
        return [t for t in dict.fromkeys(t for c in self.companions.values() for t in c.values())
                if t not in self.methods]


def make_layout(registry, model, methods: Sequence[str], layers: Sequence[str], calls: Sequence[MetricCall], *,
                combinations: Sequence[str] = (), layer_order: Sequence[str] = (), asked: Optional[dict] = None,
                pairs: Optional[list] = None, external: Sequence[str] = ()) -> Layout:
    """Resolve the pairs, combinations and companions of a run (see :class:`Layout`); ``methods`` are extagg
    methods, ``external`` the names of external explainers (no companions, no combinations)."""
    from .external import EXTERNAL_LAYER

    from ..capture import resolve_layers
    from ..engine import fits
    from ..sweep.config import parse_combination

    pairs = fitting_pairs(registry, model, methods, layers) if pairs is None and methods else list(pairs or [])
    if not pairs and not external:
        raise InputError(f"no method of {list(methods)} fits any layer of {list(layers)}")
    combined = {}
    if combinations:
        for label in combinations:
            parse_combination(label.removeprefix("combine:"))
        for m in methods:
            mine = tuple(layer for layer in layer_order if (m, layer) in pairs)
            if len(mine) >= 2:
                combined[m] = mine
    modules = resolve_layers(model, list(layers))
    companions = {}
    for call in calls:
        if call.metric.companion is None:
            continue
        twins = {}
        for m, layer in pairs:
            module = modules[layer]
            twin = _checked(call, lambda: call.metric.companion(registry, m, module, **call.kwargs))
            if twin is not None and module is not None and fits(registry, registry.parse(twin), module):
                twins[m, layer] = registry.canonical(twin)
        companions[str(call)] = twins
    external = tuple(external)
    pairs = [*pairs, *((name, EXTERNAL_LAYER) for name in external)]
    return Layout((*methods, *external), tuple(layers), tuple(pairs), tuple(combinations), combined,
                  tuple(layer_order), companions, dict(asked or {}), external)


def _checked(call: MetricCall, fn: Callable):
    """Run plugin code of ``call``'s metric; an exception in it is a PluginError naming the metric and plugin."""
    try:
        return fn()
    except ExtaggError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
        raise PluginError(f"metric {call.name!r} from plugin {str(call.metric.origin)!r} raised "
                          f"{type(exc).__name__}: {exc}") from exc


def check_values(call: MetricCall, values, keys, n: int) -> list[Value]:
    """What a metric returned, checked at the boundary (a :class:`PluginError` naming the metric and its plugin):
    :class:`Value` records for the keys it was given, declared measures, images of the batch, finite numbers in
    the measure's declared range, and at least one value off the floors (a per-image metric may return none
    for an image with nothing to score, e.g. only difficult objects). NaN is allowed: it means "undefined
    here" (a constant map's rank correlation) and is counted in ``nan``, never averaged."""
    out = []
    known = set(keys)
    measures = {m.name: m for m in call.metric.measures}
    where = f"metric {call.name!r} from plugin {str(call.metric.origin)!r}"
    try:
        values = list(values)
    except TypeError:
        raise PluginError(f"{where} returned {type(values).__name__}, not an iterable of Value") from None
    for v in values:
        if not isinstance(v, Value):
            raise PluginError(f"{where} returned {v!r}, not an extagg.plugin.Value")
        if v.key not in known:
            raise PluginError(f"{where} returned a value for {v.key!r}, not one of the keys it was given")
        if v.measure not in measures:
            raise PluginError(f"{where} returned the undeclared measure {v.measure!r}; it declares "
                              f"{sorted(measures)}")
        if not 0 <= v.image < n:
            raise PluginError(f"{where} returned a value for image {v.image}; the batch has {n} image(s)")
        m = measures[v.measure]
        if math.isfinite(v.value) and not m.low - 1e-6 <= v.value <= m.high + 1e-6:
            raise PluginError(f"{where} returned {v.value!r} for {v.measure!r}, outside its declared range "
                              f"[{m.low}, {m.high}]")
        if math.isinf(v.value):
            raise PluginError(f"{where} returned an infinite value for {v.measure!r} ({v.key}, image {v.image})")
        out.append(v)
    main = [v for v in out if not v.subset.startswith(FLOOR_PREFIX)]
    if keys and n and not main and not call.metric.per_image:  # an image may have nothing to point at
        raise PluginError(f"{where} returned no value for {len(keys)} key(s) x {n} image(s)")
    return out


class Driver:
    """Computes every wanted metric call of one batch at a time (see the module docstring).

    :param targets: ``"predicted"``, ``"label"`` (the sample's first class, through ``settings["class_map"]``
        when one is given) or a class index (as a string or int).
    :param settings: shared settings metrics read from the context: ``randomise`` (blocks or patterns),
        ``class_map`` (a :class:`~extagg.evaluation.class_map.ClassMap`), anything a plugin documents.
    :param blocks: the randomisation blocks, output first, when already resolved (the sweep's plan records them);
        otherwise :func:`~extagg.evaluation.randomisation.cascading_order` of ``randomise`` on the first batch.
    :param explainers: {name: callable(model, x, targets) -> maps} of the layout's external methods
        (:mod:`.external`), called for every pass that needs their maps.
    """

    def __init__(self, model, preprocess, registry, layout: Layout, calls: Sequence[MetricCall], *,
                 targets="predicted", seed: int = 0, settings: Optional[dict] = None, mismatched: str = "skip",
                 blocks: Optional[Sequence[str]] = None, explainers: Optional[dict] = None):
        self.model, self.preprocess, self.registry, self.layout = model, preprocess, registry, layout
        self.calls = list(calls)
        self.targets_mode, self.seed = str(targets), seed
        self.settings = dict(settings or {})
        self.mismatched = mismatched
        self._work = None
        self._blocks = list(blocks) if blocks else None
        self.explainers = dict(explainers or {})
        self.shared: Optional[BatchContext] = None  # the last batch context with the shared pass (the sweep saves
        # its maps)

    # ----------------------------------------------------------------- shared passes
    def maps(self, model, x, methods, targets, size) -> dict:
        """{(method, layer): (N, T, H, W) resized to ``size``}, layer combinations included."""
        from ..combine import combine
        from ..sweep.config import parse_combination

        layout = self.layout
        methods = list(layout.methods if methods is None else methods)
        inside = [m for m in methods if m not in layout.external]
        maps = {}
        if inside:
            maps, _ = run_saliency(model, x, inside, list(layout.layers), targets=targets, resize=size,
                                   mismatched=self.mismatched, registry=self.registry)
        for method, layer in layout.pairs:
            if method in layout.external and method in methods:
                maps[method, layer] = self.external_maps(method, model, x, targets, size)
        tick("saliency", x.shape[0])  # one pass (extagg's methods and the external explainers): the sweep's bar moves
        for method, layers in layout.combined.items():
            if method not in methods:
                continue
            parts = {layer: maps[method, layer] for layer in layers}
            bad = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            for m in parts.values():
                bad |= ~torch.isfinite(m).flatten(1).all(1).to(x.device)
            if bool(bad.any()):  # an image with a NaN map: nothing to combine there; its combination is NaN
                parts = {layer: m.masked_fill(bad.to(m.device)[:, None, None, None], 0.0) for layer, m in parts.items()}
            for label in layout.combinations:
                mode, weighting = parse_combination(label.removeprefix("combine:"))
                combined = combine(parts, weighting, mode, order=layout.layer_order, size=size)
                maps[method, label] = combined.masked_fill(bad.to(combined.device)[:, None, None, None], math.nan)
        return maps

    def external_maps(self, name: str, model, x, targets, size) -> torch.Tensor:
        """(N, T, H, W) maps of the external explainer ``name``, one call per target column (:mod:`.external`)."""
        from .external import explain_with

        fn = self.explainers.get(name)
        if fn is None:
            raise InputError(f"no explainer was given for the external method {name!r}; pass "
                             f"explainers={{{name!r}: callable(model, x, targets) -> maps}}")
        columns = [explain_with(fn, name, model, x, targets[:, t], size) for t in range(targets.shape[1])]
        return torch.stack(columns, 1)

    def work(self):
        """(a deep copy of the model, its trained state dict), made once per driver."""
        if self._work is None:
            work = copy.deepcopy(self.model)
            self._work = (work, copy.deepcopy(work.state_dict()))
        return self._work

    def blocks(self, x) -> list[str]:
        if self._blocks is None:
            from .randomisation import cascading_order

            randomise = self.settings.get("randomise") or None
            self._blocks = cascading_order(self.work()[0], randomise, x)
        return self._blocks

    def explained(self, scores: torch.Tensor, samples) -> torch.Tensor:
        """The explained class per image (N,)."""
        mode = self.targets_mode
        if mode == "predicted":
            return scores.argmax(1).cpu()
        if mode == "label":
            missing = [s.image_id for s in samples if not s.classes]
            if missing:
                raise InputError(f"--targets label needs a label on every image; {missing[:3]} have none "
                                 "(use --targets predicted)")
            cmap = self.settings.get("class_map")
            labels = [s.classes[0] for s in samples]
            if cmap is not None:
                bad = [c for c in labels if not 0 <= c < len(cmap.groups) or len(cmap.groups[c]) != 1]
                if bad:
                    raise InputError(f"label {bad[0]} has no single model class in the class map; map it to one "
                                     "model class or use --targets predicted")
                labels = [cmap.groups[c][0] for c in labels]
            return torch.tensor(labels, dtype=torch.long)
        c = int(mode)
        if c >= scores.shape[1]:
            raise InputError(f"target class {c} is out of range for a model with {scores.shape[1]} classes")
        return torch.full((scores.shape[0],), c, dtype=torch.long)

    # ----------------------------------------------------------------- one batch
    def context(self, samples, calls: Sequence[MetricCall]) -> BatchContext:
        """The batch context with the shared pass done for ``calls`` (per-image metrics need no shared pass)."""
        x = model_inputs(self.model, [s.image for s in samples], self.preprocess)
        size = tuple(x.shape[-2:])
        shared = [c for c in calls if not c.metric.per_image]
        scores = class_scores(self.model, x) if shared else None
        explained = self.explained(scores, samples) if shared else None
        ctx = BatchContext(model=self.model, x=x, samples=list(samples), scores=scores, explained=explained,
                           keys=(), size=size, seed=self.seed, registry=self.registry, settings=self.settings,
                           maps=self.maps, work=self.work, companions={}, blocks=self.blocks)
        if not shared:
            return ctx
        columns = [explained]
        for call in shared:
            if call.metric.columns is not None:
                extra = _checked(call, lambda call=call: list(call.metric.columns(ctx, **call.kwargs)))
                for c in extra:
                    if not isinstance(c, torch.Tensor) or c.shape != explained.shape:
                        raise PluginError(f"metric {call.name!r} from plugin {str(call.metric.origin)!r}: columns "
                                          f"must be (N,) class tensors, got {getattr(c, 'shape', c)!r}")
                columns += [c.to(torch.long).cpu() for c in extra]
        unique: list[torch.Tensor] = []
        for c in columns:
            if not any(torch.equal(c, u) for u in unique):
                unique.append(c)
        methods = list(self.layout.methods) + self.layout.companion_methods()
        ctx.set_columns(unique, self.maps(self.model, x, methods, torch.stack(unique, 1), size))
        self.shared = ctx
        return ctx

    def run(self, samples, want: Callable[[MetricCall], bool] = lambda call: True
            ) -> Iterator[tuple[MetricCall, list[Value]]]:
        """Yield ``(call, values)`` for every wanted metric call of this batch of samples."""
        calls = [c for c in self.calls if want(c)]
        shared = [c for c in calls if not c.metric.per_image]
        self.shared = None
        if shared:
            ctx = self.context(samples, shared)
            for call in shared:
                yield call, self._compute(call, ctx)
        for call in (c for c in calls if c.metric.per_image):  # one image at a time, the rest of the batch kept
            values = []
            for i, sample in enumerate(samples):
                values += [attrs.evolve(v, image=i) for v in self._compute(call, self.context([sample], [call]))]
            yield call, values

    def _compute(self, call: MetricCall, ctx: BatchContext) -> list[Value]:
        text = str(call)
        keys = self.layout.keys(text)
        ctx.keys = keys
        ctx._companions = self.layout.companions.get(text, {})
        values = _checked(call, lambda: list(call.metric.compute(ctx, **call.kwargs)))
        return check_values(call, values, keys, ctx.n)
