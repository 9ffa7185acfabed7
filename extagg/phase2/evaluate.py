"""Phase 2 at one captured layer: every requested method's map, sharing work between methods.

Methods that share an extractor share its contribution and its cached statistics; aggregators with a closed
form read those statistics (prefetched together, see ``Aggregator.reads``), so a whole sweep costs a handful of
reductions and poolings per layer. Components without a closed form get the dense values or, for chunked forms,
the materialised values, in bounded slices. What plugin code returns is checked here, at the seam: each failure
names the component, its plugin and what was expected.

**Precision of the generic path.** It hands the pre-filters and the aggregator's ``reduce`` values widened to
float64 (:data:`ACCUMULATE`), a bounded slice at a time, and casts the map back to the contribution's dtype. A
reduction over D entries along a non-innermost dimension adds them one after another, so in float32 its error
grows with D: ``conv3x3+norm`` (D = 9 K^2, 4 million entries at a 672-channel layer) missed the float64 map by
6e-4 of its range where the closed form misses by 3e-7. A widened element takes twice the bytes, so a slice
holds half of :data:`CHUNK_BUDGET` elements; the products themselves are formed in the contribution's dtype (one
rounding each, nothing accumulated).
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch

from ..maps import resize_maps
from ..errors import PluginContractError, UnknownNameError, did_you_mean, raised_in
from ..method import Call, Method
from .closed_forms import IDENTITY, Profile, compose_profiles
from .contribution import Contribution
from .factored import Factored
from .sides import Store
from .stats import STAT_KIND, Stat, as_stats

CHUNK_BUDGET = 1 << 24
"""Upper bound on the bytes materialised at once by the generic path, counted in float32 elements (64 MiB)."""
ACCUMULATE = torch.float64
"""The dtype in which the generic path filters and reduces (module docstring)."""


def _widened(values: torch.Tensor) -> torch.Tensor:
    """``values`` in :data:`ACCUMULATE` if it is a floating dtype narrower than it."""
    if values.is_floating_point() and torch.finfo(values.dtype).bits < torch.finfo(ACCUMULATE).bits:
        return values.to(ACCUMULATE)
    return values


def _culprit(spec) -> str:
    return f"{spec.kind} {spec.name!r} (from {spec.origin or 'an unregistered plugin'})"


def check_map(out, want: tuple[int, ...], dtype: torch.dtype, spec, what: str) -> torch.Tensor:
    """``out`` if it is a floating tensor of shape ``want``; else a :class:`PluginContractError` naming ``spec``."""
    if isinstance(out, torch.Tensor) and out.shape == want and out.dtype.is_floating_point:
        return out  # the common case, checked cheaply
    if not isinstance(out, torch.Tensor):
        raise PluginContractError(f"{_culprit(spec)}: {what} returned {type(out).__name__}, expected a tensor of "
                                  f"shape {want}")
    if tuple(out.shape) != tuple(want):
        hint = "; a reduce must remove the dimension it is given (keepdim=False)" if out.ndim == len(want) + 1 else ""
        axes = " (N, T, h, w)" if len(want) == 4 else " (one number per location)"
        raise PluginContractError(f"{_culprit(spec)}: {what} returned shape {tuple(out.shape)}, expected "
                                  f"{tuple(want)}{axes}{hint}")
    if not out.is_floating_point():
        raise PluginContractError(f"{_culprit(spec)}: {what} returned dtype {out.dtype}, expected a floating "
                                  f"dtype ({dtype})")
    return out


@attrs.frozen
class Plan:
    """What phase 2 does for one method, resolved once per registry: the reduction to share and the post-filters."""

    name: str  # the method's canonical string
    extractor: Call
    pre: tuple  # (filter record, kwargs) pairs, resolved here once rather than on every chunk
    profile: Optional[Profile]  # sign profile of the composed pre-filters; None if one has no profile
    post: tuple  # (filter record, kwargs) pairs
    key: str  # methods of one extractor with equal keys share one reduction
    spec: object  # the aggregator's record
    kwargs: dict  # the aggregator's parameters
    reads: tuple[Stat, ...]  # the statistics its closed form declares it reads (empty: unknown or none)

    @classmethod
    def of(cls, registry, method: Method) -> "Plan":
        pre = tuple((registry.filters[c.name], c.kwargs) for c in method.pre)
        profile = IDENTITY
        for spec, _ in pre:
            if spec.sign_profile is None:
                profile = None
                break
            profile = compose_profiles(profile, tuple(spec.sign_profile))
        post = tuple((registry.filters[c.name], c.kwargs) for c in method.post)
        shared = "+".join(map(str, method.pre)) if profile is None else repr(profile)
        spec, kwargs = registry.aggregators[method.aggregator.name], method.aggregator.kwargs
        reads: tuple[Stat, ...] = ()
        if profile is not None and spec.closed_form is not None and spec.reads is not None:
            with raised_in(spec, "reads"):
                declared = spec.reads(profile, **kwargs)
            try:
                reads = as_stats(declared)
            except (TypeError, UnknownNameError) as e:
                raise PluginContractError(
                    f"{_culprit(spec)}: reads{profile} returned {declared!r}: {e}") from None
        return cls(str(method), method.extractor, pre, profile, post,
                   f"{shared}|{method.aggregator}", spec, kwargs, reads)


class _LayerEvaluator:
    """Maps of many methods at one captured layer, caching shared intermediate results."""

    def __init__(self, registry, capture, *, closed_forms: bool, plans: dict):
        self.registry = registry
        self.capture = capture
        self.closed_forms = closed_forms
        self.plans = plans
        self.contributions: dict[str, Contribution] = {}  # by extractor string
        self.reduced: dict[str, torch.Tensor] = {}  # by plan key, for the current extractor

    def plan(self, method: Method) -> Plan:
        plan = self.plans.get(method)
        if plan is None:
            plan = self.plans[method] = Plan.of(self.registry, method)
        return plan

    def contribution(self, call: Call) -> Contribution:
        key = str(call)
        out = self.contributions.get(key)
        if out is None:
            spec = self.registry.extractors[call.name]
            with raised_in(spec, "fn"):
                out = spec.fn(self.capture, **call.kwargs)
            if not isinstance(out, Contribution):
                raise PluginContractError(
                    f"{_culprit(spec)} returned {type(out).__name__}; expected a contribution form from "
                    "extagg.plugin (Dense, Scaled, Product or Factored)")
            if spec.factored is not None and isinstance(out, Factored) != spec.factored:
                raise PluginContractError(
                    f"{_culprit(spec)} returned a {type(out).__name__} contribution but declares factored="
                    f"{spec.factored}; declare factored={not spec.factored} (or None: undeclared)")
            want = tuple(self.capture.grad.shape[:2])  # (N, T) of the capture's gradient
            if len(out.shape) != 4 or tuple(out.shape[:2]) != want:
                raise PluginContractError(f"{_culprit(spec)} returned a contribution of shape {out.shape}; "
                                          f"expected (N, T, h, w) with (N, T) = {want}, as the capture's gradient")
            self.contributions[key] = out
        return out

    def release(self, call: Call) -> None:
        """Forget the contribution of ``call`` and everything derived from it (after its last method)."""
        self.contributions.pop(str(call), None)
        self.reduced.clear()

    def prefetch(self, extractor: Call, methods) -> None:
        """Let the contribution compute, in one sweep, every statistic the closed forms of ``methods`` read."""
        if not self.closed_forms:
            return
        stats: dict = {}
        for method in methods:
            stats.update(dict.fromkeys(self.plan(method).reads))
        if stats:
            self.contribution(extractor).prefetch(list(stats))

    @staticmethod
    def _apply(pre: tuple, x: torch.Tensor) -> torch.Tensor:
        for spec, kwargs in pre:
            with raised_in(spec, "fn"):
                out = spec.fn(x, **kwargs)
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise PluginContractError(f"{_culprit(spec)} returned {got} for an input of shape "
                                          f"{tuple(x.shape)}; a filter is elementwise (same shape out)")
            x = out
        return x

    def map(self, method: Method) -> torch.Tensor:
        """The map of ``method`` (modifiers ignored: they act on the pass), shape (N, T, h, w)."""
        plan = self.plan(method)
        out = self.reduced.get(plan.key)
        if out is None:
            out = self.reduced[plan.key] = self._reduce(plan)
        for spec, kwargs in plan.post:
            with raised_in(spec, "fn"):
                got = spec.fn(out, **kwargs)
            out = check_map(got, tuple(out.shape), out.dtype, spec, "the filter")
        return out

    def _reduce(self, plan: Plan) -> torch.Tensor:
        contribution = self.contribution(plan.extractor)
        agg, kwargs, want = plan.spec, plan.kwargs, contribution.shape
        if self.closed_forms and plan.profile is not None and agg.closed_form is not None:
            try:
                with raised_in(agg, "closed_form"):
                    out = agg.closed_form(contribution, plan.profile, **kwargs)
            except UnknownNameError as e:
                if e.kind != STAT_KIND:
                    raise
                raise PluginContractError(f"{_culprit(agg)}: its closed form read {e.name!r}, which is not a "
                                          f"contribution statistic{did_you_mean(e.suggestions)}; valid: "
                                          + ", ".join(s.value for s in Stat)) from None
            if out is not None:
                return check_map(out, want, torch.float32, agg, "closed_form")
        if not contribution.chunked:
            return self._dense(contribution.values, plan.pre, agg, kwargs)
        return self._chunked(contribution, plan.pre, agg, kwargs)

    def _dense(self, values: torch.Tensor, pre: tuple, agg, kwargs) -> torch.Tensor:
        """Filter and reduce (N, T, D, h, w) ``values`` along D, widened, a band of rows at a time."""
        n, t, d, h, w = values.shape
        rows = max(1, CHUNK_BUDGET // 2 // max(1, n * t * d * w))
        out = None
        for top in range(0, h, rows):
            band = values[:, :, :, top:top + rows]
            x = self._apply(pre, _widened(band))
            with raised_in(agg, "reduce"):
                r = agg.reduce(x, dim=2, **kwargs)
            r = check_map(r, (n, t, band.shape[3], w), values.dtype, agg, "reduce")
            if out is None:
                out = torch.empty((n, t, h, w), dtype=values.dtype, device=values.device)
            out[:, :, top:top + rows] = r
        return out

    def _chunked(self, c: Contribution, pre: tuple, agg, kwargs) -> torch.Tensor:
        n, t, h, w = c.shape
        out = None
        for i, j, sl, values in c.materialise_chunks(CHUNK_BUDGET // 2):
            x = self._apply(pre, _widened(values))
            with raised_in(agg, "reduce"):
                r = agg.reduce(x, dim=0, **kwargs)
            r = check_map(r, (values.shape[1],), values.dtype, agg, "reduce")
            if out is None:
                out = torch.empty((n, t, h * w), dtype=values.dtype, device=values.device)
            out[i, j, sl] = r
        return out.reshape(n, t, h, w)


def evaluate_layer(registry, capture, methods, *, plans: dict, closed_forms: bool = True,
                   size: Optional[tuple[int, int]] = None, store: Optional[Store] = None) -> dict[str, torch.Tensor]:
    """The maps of ``methods`` (each fitting the layer) at one captured layer, keyed by canonical method string.

    ``capture`` is an :class:`extagg.capture.LayerCapture`; it is handed to the extractors with a fresh per-layer
    :class:`~extagg.phase2.sides.Store` (``capture.store``), so their contributions share the statistics of the
    captured tensors. ``plans`` caches each method's :class:`Plan` (valid for one registry). ``size``: resize
    every map to (H, W), bilinear. ``closed_forms=False`` forces the generic path (tests). ``store``: the layer's
    store to use instead of a fresh one (to share statistics between several calls at one layer).
    """
    if store is None:
        store = Store(pinned=(capture.grad, capture.output, capture.input))
    capture = attrs.evolve(capture, store=store)
    evaluator = _LayerEvaluator(registry, capture, closed_forms=closed_forms, plans=plans)
    by_extractor: dict[Call, list[Method]] = {}
    for method in methods:
        by_extractor.setdefault(method.extractor, []).append(method)
    maps: dict[str, torch.Tensor] = {}
    for extractor, group in by_extractor.items():
        evaluator.prefetch(extractor, group)
        for method in group:
            m = evaluator.map(method)
            if size is not None:
                m = resize_maps(m, size)
            maps[evaluator.plan(method).name] = m
        evaluator.release(extractor)
    return maps
