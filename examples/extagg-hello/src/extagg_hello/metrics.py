"""extagg-hello's metric: ``hello-gini``, the Gini index of a saliency map (Chalasani et al. 2020).

A plugin of its own (entry point ``extagg-hello-metrics``), so that the aggregators and the filter of
:mod:`extagg_hello` load without it. Once installed, ``extagg metrics`` lists it, ``extagg describe hello-gini``
shows its contract, and ``extagg evaluate`` / ``extagg sweep --metrics hello-gini`` score every method at every
layer with it.

The Gini index of the ``n`` nonnegative values ``c_(1) <= ... <= c_(n)`` of a map (Hurley and Rickard 2009) is
``G = sum_k (2k - n - 1) c_(k) / (n sum_k c_(k))``: 0 for a constant map, ``1 - 1/n`` for a map with one nonzero
pixel, undefined (NaN) for an all-zero map. Concise maps score high.
"""
from __future__ import annotations

import torch

from extagg.plugin import Cost, Measure, Metric, Param, Value, hookimpl


def gini(maps: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """(N, H, W) maps -> (N,) float64 Gini indices of ``|map|`` (``absolute``) or of ``max(map, 0)``; NaN where
    the map is all zero or holds a NaN."""
    v = maps.detach().flatten(1).to(torch.float64)
    v = v.abs() if absolute else v.clamp(min=0)
    n = v.shape[1]
    s = v.sort(dim=1).values  # NaN sorts last and makes the total NaN
    total = s.sum(1)
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=v.device) - n - 1
    g = (s * weights).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan")))


def _hello_gini(ctx, absolute: bool = True):
    """The Gini index of every (method, layer) map of the batch."""
    maps = ctx.maps_for()  # {(method, layer): (N, H, W)}, the explained class, resized to the model input
    out = []
    for key in ctx.keys:
        out += [Value(key, i, "all", "gini", float(g)) for i, g in enumerate(gini(maps[key], absolute))]
    return out


HELLO_GINI = Metric(
    name="hello-gini",
    compute=_hello_gini,
    measures=[Measure(name="gini", direction="higher", low=0, high=1,
                      doc="Gini index of the map's values: 0 for a constant map, 1 - 1/n for one nonzero pixel")],
    params=[Param("absolute", bool, True, "score |map| (true) or the positive part max(map, 0) (false)")],
    cost=lambda n, keys, blocks, absolute=True: Cost(),  # nothing beyond the shared saliency pass
    doc="Sparseness: the Gini index of each map (resized to the model input); higher is more concise. Floor: the "
        "same index of uniform noise drawn at the layer's resolution and resized like the map.",
    reference="Chalasani et al., Concise Explanations of Neural Networks using Adversarial Training, ICML 2020",
)


@hookimpl
def register_metrics(register):
    register(HELLO_GINI)
