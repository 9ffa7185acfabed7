"""A tiny model and tiny images for the sweep tests (seconds, not minutes); importable by spawned workers."""
from __future__ import annotations

import torch

from extagg.evaluation import Sample
from extagg.sweep import SweepConfig

METHODS = ("gradcam", "normgrad", "meta:normgrad")
LAYERS = ("input", "0", "3")


def tiny_model() -> torch.nn.Module:
    """conv -> bn -> relu -> conv(stride 2) -> relu -> GAP -> linear, 5 classes, float32, seeded."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        net[1].running_var.uniform_(0.5, 2, generator=g)
    return net.eval()


def tiny_samples(n: int = 5, size: int = 32) -> list[Sample]:
    g = torch.Generator().manual_seed(1)
    return [Sample(torch.rand(3, size, size, generator=g), image_id=f"im{i}") for i in range(n)]


def tiny_config(run_dir, **kw) -> SweepConfig:
    base = dict(model="tiny", data="custom", methods=METHODS, layers=LAYERS, run_dir=str(run_dir), batch_size=2,
                steps=3, hog_cell=8, curve_batch=32, randomise=("7", "3"), progress=False, figures=False)
    base.update(kw)
    return SweepConfig(**base)


def unit_lines(run_dir) -> list[str]:
    """The run directory's finished units, one JSON line each in the form of the old ``units.jsonl`` (NaN as
    null), in stored order: what the tests compare between runs."""
    import json
    import math

    from extagg.sweep.store import RunStore

    done = RunStore(run_dir, writer=False).load()
    return [json.dumps({"method": u[0], "layer": u[1], "metric": u[2], "image": u[3],
                        "values": [[s, m, c, None if math.isnan(v) else v] for s, m, c, v in values]})
            for u, values in done.items()]
