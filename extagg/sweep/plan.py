"""What a sweep will compute: methods x layers (+ combinations) x metrics x images, and what it will cost.

A **unit** is one (method, layer, metric, image): the smallest piece of work whose result is stored, skipped on
resume and counted in the preview. ``layer`` is a layer name, a combination label ``combine:MODE:WEIGHTING`` or
``""`` (the pointing game's centre baseline). Images are processed in fixed batches of ``batch_size`` (the same
batches on resume and on every rank, so every number is computed the same way).
"""
from __future__ import annotations

import math
from typing import Optional

import attrs
import torch

from ..phase2 import Plan as MethodPlan
from ..capture import LayerCapture
from ..contributions import Factored
from ..engine import fits
from ..layers import execution_order
from ..registry import Registry
from .config import SweepConfig, parse_combination

CENTER = "center-baseline"
PER_IMAGE_METRICS = ("pointing",)


def combination_label(text: str) -> str:
    mode, weighting = parse_combination(text)
    return f"combine:{mode}:{weighting}"


@attrs.frozen
class SweepPlan:
    """The resolved sweep. ``pairs``: fitting (method, layer); ``combined``: {method: layers it combines};
    ``twins``: {(method, conv layer): the method with the real ``conv`` extractor} for the identity check."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    combinations: tuple[str, ...]  # labels combine:MODE:WEIGHTING
    combined: dict  # method -> tuple of layers
    twins: dict  # (method, layer) -> twin method
    metrics: tuple[str, ...]
    image_ids: tuple[str, ...]
    batches: tuple[tuple[int, ...], ...]
    layer_order: tuple[str, ...]
    blocks: tuple[str, ...]  # randomisation order, output first
    per_example: frozenset  # methods with a per-example modifier (meta)
    slow: tuple[str, ...]  # methods without a closed form on a factored contribution

    def keys(self, metric: str) -> list[tuple[str, str]]:
        """The (method, layer) keys of ``metric``, in plan order."""
        if metric == "identity":
            return [k for k in self.pairs if k in self.twins]
        keys = list(self.pairs)
        for method in self.methods:
            if method in self.combined:
                keys += [(method, c) for c in self.combinations]
        order = {m: i for i, m in enumerate(self.methods)}
        keys.sort(key=lambda k: order[k[0]])
        if metric == "pointing":
            keys.append((CENTER, ""))
        return keys

    def units(self, metric: str, image_ids) -> list[tuple[str, str, str, str]]:
        return [(m, layer, metric, i) for i in image_ids for m, layer in self.keys(metric)]

    def all_units(self) -> list[tuple[str, str, str, str]]:
        return [u for metric in self.metrics for u in self.units(metric, self.image_ids)]

    def as_dict(self) -> dict:
        return {"methods": list(self.methods), "layers": list(self.layers), "pairs": [list(p) for p in self.pairs],
                "combinations": list(self.combinations), "metrics": list(self.metrics),
                "images": list(self.image_ids), "randomise": list(self.blocks),
                "identity": [[m, layer, t] for (m, layer), t in self.twins.items()]}


def expand_methods(config: SweepConfig, registry: Registry) -> list[str]:
    from ..evaluation.common import expand_methods as expand

    methods = expand(list(config.methods), registry)
    if config.exclude:
        import fnmatch

        methods = [m for m in methods if not any(fnmatch.fnmatchcase(m, x) for x in config.exclude)]
    if not methods:
        from ..errors import InputError

        raise InputError(f"--exclude {' '.join(config.exclude)} leaves no method of {' '.join(config.methods)}")
    return methods


def twin_of(registry: Registry, method: str, extractor: str = "conv") -> Optional[str]:
    """``method`` with its extractor replaced by ``extractor`` (modifiers, filters, aggregator kept); None if the
    method already uses it."""
    parsed = registry.parse(method)
    if parsed.extractor.name == extractor:
        return None
    from ..method import Call

    twin = attrs.evolve(parsed, extractor=Call(extractor, ()), named=None)
    return str(twin)


def check_identity_extractor(config: SweepConfig, registry: Registry) -> None:
    """The identity check's real-layer extractor must be registered and take no required parameter."""
    name = config.identity_extractor
    if name not in registry.extractors:
        from ..errors import UnknownNameError

        raise UnknownNameError("identity extractor (--identity-extractor)", name, sorted(registry.extractors))
    required = [p.name for p in registry.extractors[name].params if p.required]
    if required:
        from ..errors import InputError

        raise InputError(f"identity extractor {name!r} needs parameter(s) {required}; choose a real-layer extractor "
                         "without required parameters, such as 'conv'")


def randomisation_blocks(model: torch.nn.Module, config: SweepConfig, example: torch.Tensor) -> list[str]:
    """Blocks to re-initialise, output first: ``config.randomise`` (names or patterns, in forward order) or the
    top-level children that hold parameters."""
    import fnmatch

    from ..errors import InputError, UnknownNameError

    with_params = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]
    if config.randomise:
        names = []
        for p in config.randomise:
            found = [n for n in with_params if fnmatch.fnmatchcase(n, p)]
            if not found:
                raise UnknownNameError("block to randomise", p, with_params)
            names += [n for n in found if n not in names]
    else:
        names = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not names:
        raise InputError("the model has no block with parameters to randomise")
    order = [n.split("@")[0] for n, _ in execution_order(model, example)]

    def last_call(name):  # a container that is never called itself (ModuleList) ends with its last child's call
        hits = [i for i, n in enumerate(order) if n == name or n.startswith(name + ".")]
        return max(hits) if hits else -1

    position = {n: last_call(n) for n in names}
    return sorted(names, key=lambda n: -position[n])


def is_slow(registry: Registry, method: str) -> bool:
    """True if the method's extractor gives a factored (outer-product) contribution and its aggregator, with its
    pre-filters, has no closed form: phase 2 then materialises the contribution in chunks."""
    parsed = registry.parse(method)
    plan = MethodPlan.of(registry, parsed)
    if plan.profile is not None and plan.spec.closed_form is not None:
        return False
    spec = registry.extractors[parsed.extractor.name]
    x = torch.ones(1, 4, 6, 6)
    capture = LayerCapture("probe", torch.nn.Conv2d(4, 4, 3, padding=1), output=x, input=x, grad=x[:, None])
    try:
        out = spec.fn(capture, **parsed.extractor.kwargs)
    except Exception:  # noqa: BLE001 - an extractor for other modules: unknown, assume the worst
        return True
    return isinstance(out, Factored)


def make_plan(config: SweepConfig, model: torch.nn.Module, registry: Registry, image_ids: list[str],
              example: torch.Tensor, layers: list[str]) -> SweepPlan:
    from ..capture import resolve_layers
    from ..errors import InputError

    methods = expand_methods(config, registry)
    modules = resolve_layers(model, layers)
    pairs = [(m, layer) for m in methods for layer in layers if fits(registry, registry.parse(m), modules[layer])]
    if not pairs:
        raise InputError(f"no method of {methods} fits any layer of {layers}")
    order = [n for n, _ in execution_order(model, example)]
    position = {n: i for i, n in enumerate(order)}
    layer_order = tuple(sorted((layer for layer in layers if layer != "input"),
                               key=lambda n: position.get(n, math.inf)))
    combinations = tuple(dict.fromkeys(combination_label(c) for c in config.combine))
    combined = {}
    if combinations:
        for m in methods:
            mine = tuple(layer for layer in layer_order if (m, layer) in pairs)
            if len(mine) >= 2:
                combined[m] = mine
    twins = {}
    if "identity" in config.metrics:
        check_identity_extractor(config, registry)
        for m, layer in pairs:
            module = modules[layer]
            twin = twin_of(registry, m, config.identity_extractor) if module is not None else None
            if twin is not None and fits(registry, registry.parse(twin), module):
                twins[m, layer] = twin
    per_example = frozenset(m for m in [*methods, *twins.values()] if registry.per_example(m))
    n = len(image_ids)
    size = 1 if "pointing" in config.metrics else config.batch_size
    batches = tuple(tuple(range(i, min(i + size, n))) for i in range(0, n, size))
    blocks = tuple(randomisation_blocks(model, config, example)) if "randomisation" in config.metrics else ()
    slow = tuple(m for m in dict.fromkeys([*methods, *twins.values()]) if is_slow(registry, m))
    return SweepPlan(tuple(methods), tuple(layers), tuple(pairs), combinations, combined, twins,
                     tuple(config.metrics), tuple(image_ids), batches, layer_order, blocks, per_example, slow)
