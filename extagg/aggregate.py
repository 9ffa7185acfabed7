"""Phase 2 on captured layers: turn contributions into maps, sharing work between methods.

Methods at one layer that share an extractor share its contribution and its cached statistics (see
:mod:`extagg.contributions`); aggregators with a closed form read those statistics, so a whole sweep costs a
handful of reductions and pooling operations per layer. Components without a closed form get the filtered dense
tensor (shared by methods with the same pre-filters) or, for factored contributions, bounded chunks.
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch

from .capture import LayerCapture
from .closed_forms import IDENTITY, Profile, compose_profiles
from .contributions import Dense, Factored
from .statistics import Store
from .method import Call, Method

CHUNK_BUDGET = 1 << 24
"""Upper bound on elements materialised at once by the generic path (64 MiB in float32)."""


@attrs.frozen
class Plan:
    """What phase 2 does for one method, resolved once per registry: the reduction to share and the post-filters."""

    name: str  # the method's canonical string
    extractor: Call
    pre: tuple[Call, ...]
    profile: Optional[Profile]  # sign profile of the composed pre-filters; None if one has no profile
    post: tuple  # (filter fn, kwargs) pairs
    extractor_key: str
    key: str  # methods of one extractor with equal keys share one reduction
    spec: object  # the aggregator's record
    kwargs: dict  # the aggregator's parameters
    reads: tuple[str, ...]  # the statistics its closed form declares it reads (empty: unknown or none)

    @classmethod
    def of(cls, registry, method: Method) -> "Plan":
        profile = IDENTITY
        for call in method.pre:
            spec = registry.filters[call.name]
            if spec.sign_profile is None:
                profile = None
                break
            profile = compose_profiles(profile, tuple(spec.sign_profile))
        post = tuple((registry.filters[c.name].fn, c.kwargs) for c in method.post)
        shared = "+".join(map(str, method.pre)) if profile is None else repr(profile)
        spec, kwargs = registry.aggregators[method.aggregator.name], method.aggregator.kwargs
        reads = ()
        if profile is not None and spec.closed_form is not None and spec.reads is not None:
            reads = tuple(spec.reads(profile, **kwargs))
        return cls(str(method), method.extractor, method.pre, profile, post,
                   str(method.extractor), f"{shared}|{method.aggregator}", spec, kwargs, reads)


class LayerEvaluator:
    """Computes maps of many methods at one captured layer, caching shared intermediate results.

    ``plans`` may be shared between evaluators (a method's plan depends only on the registry).
    """

    def __init__(self, registry, capture: LayerCapture, *, closed_forms: bool = True,
                 plans: Optional[dict] = None):
        self.registry = registry
        self.capture = capture
        self.closed_forms = closed_forms
        self.plans = {} if plans is None else plans
        self._contrib: dict[str, object] = {}  # by extractor string
        self._filtered: dict[str, dict] = {}  # by extractor string, then pre-filters
        self._reduced: dict[str, dict] = {}  # by extractor string, then plan key
        # parts and side statistics of the captured tensors, shared by this layer's contributions
        self._store = Store(pinned=(capture.grad, capture.output, capture.input))

    def plan(self, method: Method) -> Plan:
        plan = self.plans.get(method)
        if plan is None:
            plan = self.plans[method] = Plan.of(self.registry, method)
        return plan

    def contribution(self, call: Call):
        key = str(call)
        out = self._contrib.get(key)
        if out is None:
            spec = self.registry.extractors[call.name]
            out = spec.fn(self.capture, **call.kwargs)
            if not isinstance(out, (Dense, Factored)):
                raise TypeError(f"extractor {call.name!r} ({spec.origin}) returned {type(out).__name__}, "
                                "expected extagg.contributions.Dense (or Scaled, Product) or Factored")
            out.store = self._store
            self._contrib[key] = out
        return out

    def prefetch(self, extractor: Call, methods) -> None:
        """Let the contribution of ``extractor`` compute, in one sweep, every statistic that the closed forms of
        ``methods`` declare they read (see :class:`extagg.specs.Aggregator` ``reads``)."""
        if not self.closed_forms:
            return
        names: dict = {}
        for method in methods:
            names.update(dict.fromkeys(self.plan(method).reads))
        if names:
            self.contribution(extractor).prefetch(list(names))

    def release(self, call: Call) -> None:
        """Forget the contribution of ``call`` and everything derived from it (after its last method)."""
        key = str(call)
        for cache in (self._contrib, self._filtered, self._reduced):
            cache.pop(key, None)

    def _apply(self, calls: tuple[Call, ...], x: torch.Tensor) -> torch.Tensor:
        for call in calls:
            x = self.registry.filters[call.name].fn(x, **call.kwargs)
        return x

    def map(self, method: Method) -> torch.Tensor:
        """The map of ``method`` (modifiers ignored: they act on the pass), shape (N, T, h, w)."""
        plan = self.plan(method)
        reduced = self._reduced.get(plan.extractor_key)
        if reduced is None:
            reduced = self._reduced[plan.extractor_key] = {}
        out = reduced.get(plan.key)
        if out is None:
            out = reduced[plan.key] = self._reduce(plan)
        for fn, kwargs in plan.post:
            out = fn(out, **kwargs)
        return out

    def _reduce(self, plan: Plan) -> torch.Tensor:
        contribution = self.contribution(plan.extractor)
        agg, kwargs = plan.spec, plan.kwargs
        if self.closed_forms and plan.profile is not None and agg.closed_form is not None:
            out = agg.closed_form(contribution, plan.profile, **kwargs)
            if out is not None:
                return out
        if isinstance(contribution, Dense):
            filtered = self._filtered.setdefault(plan.extractor_key, {})
            fkey = "+".join(map(str, plan.pre))
            if fkey not in filtered:
                filtered[fkey] = self._apply(plan.pre, contribution.values)
            return agg.reduce(filtered[fkey], dim=2, **kwargs)
        return self._chunked(contribution, plan.pre, agg, kwargs)

    def _chunked(self, c: Factored, pre: tuple[Call, ...], agg, kwargs) -> torch.Tensor:
        n, t, h, w = c.shape
        out = None
        for i, j, sl, values in c.materialise_chunks(CHUNK_BUDGET):
            r = agg.reduce(self._apply(pre, values), dim=0, **kwargs)
            if out is None:
                out = r.new_empty(n, t, h * w)
            out[i, j, sl] = r
        return out.reshape(n, t, h, w)
