"""Quantus's complexity metrics as extagg metrics (registered through ``register_metrics`` like a third party).

Each reads only the maps of the shared pass (no forward pass of its own), pre-processed as Quantus 0.6.0 does by
default (normalised by the largest absolute value, per map rather than per call, then the absolute value).
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import Cost, Measure, Metric, Param, hookimpl

from .quantus_prep import abs_normalise_params, emit, maps_of, nan_where, prepare

FREE = lambda n, keys, blocks, **params: Cost()  # noqa: E731 - the maps of the shared pass only


def _flat(ctx, normalise: bool, abs_: bool):
    keys, maps = maps_of(ctx)
    a = prepare(maps, normalise, abs_).flatten(2)
    return keys, a, ~torch.isfinite(a).all(-1)


def gini(a: torch.Tensor) -> torch.Tensor:
    """Gini index of (..., P) values as Quantus computes it: ``1e-7`` added to every value, then
    ``sum_i (2i - P - 1) a_(i) / (P sum a)`` over the values in increasing order (i = 1..P)."""
    a = (a + 1e-7).sort(-1).values
    p = a.shape[-1]
    i = torch.arange(1, p + 1, dtype=a.dtype, device=a.device)
    return ((2 * i - p - 1) * a).sum(-1) / (p * a.sum(-1))


def _sparseness(ctx, normalise: bool = True, abs: bool = True):
    keys, a, bad = _flat(ctx, normalise, abs)
    return emit(keys, {"gini": nan_where(gini(torch.nan_to_num(a)), bad)})


SPARSENESS = Metric(
    name="sparseness",
    compute=_sparseness,
    measures=[Measure(name="gini", direction="higher",
                      doc="Gini index of the map's values: 0 for a flat map, towards 1 when a few pixels hold all "
                          "of it (in [0, 1) for non-negative maps, the default abs=true; unbounded for signed "
                          "ones)")],
    params=abs_normalise_params(True, True),
    cost=FREE,
    doc="Sparseness: the Gini index of the map's absolute values; a sparse map explains with few features (Quantus's "
        "Sparseness, same definition and defaults, 1e-7 offset included).",
    reference="Chalasani et al., Concise Explanations of Neural Networks using Adversarial Training, ICML 2020",
)


def _entropy(ctx, normalise: bool = True, abs: bool = True):
    keys, a, bad = _flat(ctx, normalise, abs)
    a = torch.nan_to_num(a)
    p = a / a.abs().sum(-1, keepdim=True)
    h = -(p * torch.log(p + 1e-12)).sum(-1)
    return emit(keys, {"entropy": nan_where(h, bad | ~torch.isfinite(h))})


COMPLEXITY = Metric(
    name="complexity",
    compute=_entropy,
    measures=[Measure(name="entropy", direction="lower", low=-math.inf, high=math.inf,
                      doc="Shannon entropy (nats) of the map's share per pixel: 0 for one pixel, log(H W) for a "
                          "flat map (NaN for an all-zero map)")],
    params=abs_normalise_params(True, True),
    cost=FREE,
    doc="Complexity: the entropy of the map's absolute values taken as a distribution over pixels; lower is a "
        "simpler explanation (Quantus's Complexity, same definition and defaults, 1e-12 inside the log included).",
    reference="Bhatt et al., Evaluating and Aggregating Feature-based Model Explanations, IJCAI 2020",
)


def _effective(ctx, eps: float = 1e-5, normalise: bool = True, abs: bool = True):
    keys, a, bad = _flat(ctx, normalise, abs)
    return emit(keys, {"count": nan_where((a > eps).sum(-1).to(torch.float64), bad)})


EFFECTIVE_COMPLEXITY = Metric(
    name="effective-complexity",
    compute=_effective,
    measures=[Measure(name="count", direction="lower", low=0, high=math.inf,
                      doc="how many pixels of the (normalised) map exceed eps")],
    params=[Param("eps", float, 1e-5, "the threshold a pixel's normalised value must exceed to count",
                  check=lambda v: None if v >= 0 else "must be >= 0")] + abs_normalise_params(True, True),
    cost=FREE,
    doc="Effective complexity: the number of pixels whose normalised absolute value exceeds eps. Differs from "
        "Quantus 0.6.0 in one way: each map is normalised by its own maximum, where Quantus divides a whole call's "
        "maps by their common maximum, so that a count there depends on the other images of the call.",
    reference="Nguyen & Martinez, On Quantitative Aspects of Model Interpretability, arXiv 2007.07584, 2020",
)

METRICS: tuple = (SPARSENESS, COMPLEXITY, EFFECTIVE_COMPLEXITY)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
