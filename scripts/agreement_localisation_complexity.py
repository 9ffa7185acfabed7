"""The largest relative difference between extagg and Quantus 0.6.0, per metric, on the cases of
tests/test_quantus_localisation.py and tests/test_quantus_complexity.py (the numbers in docs/metrics/localisation.md
and complexity.md).

    PYTHONPATH=.:plugins:tests python scripts/agreement_localisation_complexity.py
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

import extagg
from extagg.maps import resize_maps
import test_quantus_complexity as C
import test_quantus_localisation as L


def relative(a, b) -> float:
    """max |a - b| / |b| over the entries where not both are NaN (0 where they are equal)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(a) & np.isnan(b))
    diff = np.abs(a[keep] - b[keep])
    return float(np.max(np.where(diff == 0, 0.0, diff / np.maximum(np.abs(b[keep]), 1e-300)), initial=0.0))


def maps_of(model, x, y, pairs):
    out = {}
    for method, layer in pairs:
        m = extagg.saliency(model, x, method, layers=layer, targets=y)[method, layer]
        out[method] = resize_maps(m, x.shape[-2:])[:, 0].detach()
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    worst: dict[str, float] = {}
    model = L.tiny_model()
    x = torch.rand(4, 3, L.SIZE, L.SIZE, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps, masks = maps_of(model, x, y, (("gradcam", "3"), ("bias+sum", "input"))), L.masks_for(4)
    for metric, cls, kw, methods in L.CASES:
        for method in methods:
            r = relative(L.ours(metric, model, x, y, maps[method], masks),
                         L.theirs(cls, model, x, y, maps[method], masks, **kw))
            worst[metric.split("(")[0]] = max(worst.get(metric.split("(")[0], 0.0), r)
    model = C.tiny_model()
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps = maps_of(model, x, y, (("gradcam", "3"), ("scaling+sum", "input")))
    for metric, measure, cls, kw in C.CASES:
        for method in maps:
            r = relative(C.ours(metric, model, x, y, maps[method], measure),
                         C.theirs(cls, model, x, y, maps[method], **kw))
            worst[metric.split("(")[0]] = max(worst.get(metric.split("(")[0], 0.0), r)
    for name, r in worst.items():
        print(f"{name:28s} {r:.2g}")


if __name__ == "__main__":
    main()
