"""Phase 2 on captured layers: turn contributions into maps, sharing work between methods.

Methods at one layer that share an extractor share its contribution and its cached statistics (see
:mod:`extagg.contributions`); aggregators with a closed form read those statistics, so a whole sweep costs a
handful of reductions and pooling operations per layer. Components without a closed form get the filtered dense
tensor (shared by methods with the same pre-filters) or, for factored contributions, bounded chunks.
"""
from __future__ import annotations

from typing import Optional

import torch

from .capture import LayerCapture
from .contributions import IDENTITY, Dense, Factored, Profile, compose_profiles
from .method import Call, Method

CHUNK_BUDGET = 1 << 24
"""Upper bound on elements materialised at once by the generic path (64 MiB in float32)."""


class LayerEvaluator:
    """Computes maps of many methods at one captured layer, caching shared intermediate results."""

    def __init__(self, registry, capture: LayerCapture, *, closed_forms: bool = True):
        self.registry = registry
        self.capture = capture
        self.closed_forms = closed_forms
        self._contrib: dict[Call, object] = {}
        self._filtered: dict[tuple, torch.Tensor] = {}
        self._reduced: dict[tuple, torch.Tensor] = {}
        self._shared: dict = {}  # side statistics shared by this layer's factored contributions

    def contribution(self, call: Call):
        if call not in self._contrib:
            spec = self.registry.extractors[call.name]
            out = spec.fn(self.capture, **call.kwargs)
            if not isinstance(out, (Dense, Factored)):
                raise TypeError(f"extractor {call.name!r} ({spec.origin}) returned {type(out).__name__}, "
                                "expected extagg.contributions.Dense or Factored")
            if isinstance(out, Factored):
                out.shared = self._shared
            self._contrib[call] = out
        return self._contrib[call]

    def release(self, call: Call) -> None:
        """Forget the contribution of ``call`` and everything derived from it (after its last method)."""
        self._contrib.pop(call, None)
        for cache in (self._filtered, self._reduced):
            for key in [k for k in cache if k[0] == call]:
                del cache[key]

    def _profile(self, pre: tuple[Call, ...]) -> Optional[Profile]:
        profile = IDENTITY
        for call in pre:
            spec = self.registry.filters[call.name]
            if spec.sign_profile is None:
                return None
            profile = compose_profiles(profile, tuple(spec.sign_profile))
        return profile

    def _apply(self, calls: tuple[Call, ...], x: torch.Tensor) -> torch.Tensor:
        for call in calls:
            x = self.registry.filters[call.name].fn(x, **call.kwargs)
        return x

    def map(self, method: Method) -> torch.Tensor:
        """The map of ``method`` (modifiers ignored: they act on the pass), shape (N, T, h, w)."""
        key = (method.extractor, method.pre, method.aggregator)
        if key not in self._reduced:
            self._reduced[key] = self._reduce(method)
        return self._apply(method.post, self._reduced[key])

    def _reduce(self, method: Method) -> torch.Tensor:
        contribution = self.contribution(method.extractor)
        agg = self.registry.aggregators[method.aggregator.name]
        kwargs = method.aggregator.kwargs
        profile = self._profile(method.pre)
        if self.closed_forms and profile is not None and agg.closed_form is not None:
            out = agg.closed_form(contribution, profile, **kwargs)
            if out is not None:
                return out
        if isinstance(contribution, Dense):
            fkey = (method.extractor, method.pre)
            if fkey not in self._filtered:
                self._filtered[fkey] = self._apply(method.pre, contribution.values)
            return agg.reduce(self._filtered[fkey], dim=2, **kwargs)
        return self._chunked(contribution, method.pre, agg, kwargs)

    def _chunked(self, c: Factored, pre: tuple[Call, ...], agg, kwargs) -> torch.Tensor:
        n, t, h, w = c.shape
        out = None
        for i, j, sl, values in c.materialise_chunks(CHUNK_BUDGET):
            r = agg.reduce(self._apply(pre, values), dim=0, **kwargs)
            if out is None:
                out = r.new_empty(n, t, h * w)
            out[i, j, sl] = r
        return out.reshape(n, t, h, w)
