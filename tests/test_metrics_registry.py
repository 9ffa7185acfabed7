"""Every built-in metric, parametrised over the registry (the example plugin's has its own tests): it runs through the
one driver on a tiny model, returns values in its declared range for every (method, layer, image), and the sweep
(through its store and files) gives exactly the numbers ``evaluate`` gives. Heavy defaults (200 noise samples)
are lightened through the metric's own parameters, so the law is checked on every metric in seconds."""
from __future__ import annotations

import io
import math

import pytest
import torch

from extagg import default_registry
from extagg.evaluation import Sample, evaluate
from extagg.sweep import sweep
from sweep_fixtures import tiny_config, tiny_model

LIGHT = {"nr_samples": 2, "nr_runs": 3, "subset_size": 16, "regions_evaluation": 4, "features_in_step": 64,
         "percentage_step": 40, "checkpoints": 1, "hog_cell": 4, "steps": 2, "n_bins": 10}
METHODS = ("gradcam", "linear-approx")
LAYERS = ("0", "3")


def samples(n: int = 3, size: int = 32) -> list[Sample]:
    """Images with a label (a class of the tiny model) and its mask (a rectangle), for metrics that need them."""
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        mask[0, 4 + 2 * i:20 + 2 * i, 6:22] = True
        out.append(Sample(torch.rand(3, size, size, generator=g), image_id=f"im{i}", classes=(i % 5,), masks=mask))
    return out


def call_of(metric) -> str:
    """The metric with its heavy parameters lightened (only those it declares, within their checks)."""
    args = [f"{p.name}={LIGHT[p.name]}" for p in metric.params if p.name in LIGHT]
    return metric.name + (f"({','.join(args)})" if args else "")


def test_every_metric_scores_every_map_and_the_sweep_agrees(builtin_metric, tmp_path):
    metric = default_registry().metrics[builtin_metric]
    text = call_of(metric)
    if metric.companion is not None:
        pytest.skip("companion metrics (identity) compare extagg methods with their twins: tests/test_metrics_contract.py")
    settings = {"randomise": ["7", "3"], "curve_batch": 32}
    got = evaluate(tiny_model(), samples(), list(METHODS), list(LAYERS), [text], batch_size=2, settings=settings)
    declared = {m.name: m for m in metric.measures}
    assert got.values, f"{text} returned nothing"
    for v in got.values:
        m = declared[v.measure]
        assert math.isnan(v.value) or m.low - 1e-6 <= v.value <= m.high + 1e-6, (v, m)
    main = [v for v in got.values if not v.subset.startswith("floor:")]
    assert any(math.isfinite(v.value) for v in main), f"{text}: every value is NaN"
    keys = {(v.canonical, v.layer) for v in main}
    assert len(keys) == len(METHODS) * len(LAYERS), keys
    cfg = tiny_config(tmp_path, methods=METHODS, layers=LAYERS, metrics=(text,), combine=(), batch_size=2,
                      targets="predicted")
    swept = sweep(cfg, model=tiny_model(), samples=samples(), out=io.StringIO())
    table = {(r.canonical, r.layer, r.metric, r.measure, r.subset): (r.value, r.n, r.nan) for r in swept.rows}
    want = {(r.canonical, r.layer, r.metric, r.measure, r.subset): (r.value, r.n, r.nan) for r in got.rows}
    assert table.keys() == want.keys()
    for k in want:
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(table[k], want[k])), k
