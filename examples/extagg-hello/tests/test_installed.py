"""The example third-party plugin, examples/extagg-hello, seen from an ordinary extagg installation (moved here
from extagg's core suite, which is hermetic: third-party plugins test themselves).

Skipped unless the distribution is installed (``pip install -e examples/extagg-hello``, as the CI script does).
Expected maps are computed here by hand: the gradient with ``torch.autograd.grad`` on a split model, the
contributions materialised with plain tensor algebra, the reductions written out with ``sort``.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import extagg

DIST = "extagg-hello"
ENTRY_POINT = "extagg-hello"


def _skip_reason():
    try:
        md.distribution(DIST)
    except md.PackageNotFoundError:
        return f"{DIST} is not installed; run `pip install -e examples/extagg-hello`"
    blocked = {x.strip() for x in os.environ.get("EXTAGG_BLOCK_PLUGINS", "").split(",")}
    if ENTRY_POINT in blocked:
        return f"{DIST} is installed but blocked by EXTAGG_BLOCK_PLUGINS"
    if os.environ.get("EXTAGG_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() not in ("", "0", "false", "no"):
        return f"{DIST} is installed but EXTAGG_DISABLE_PLUGIN_AUTOLOAD is set"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

COMPONENTS = {"aggregator": {"median", "l1", "topk"}, "filter": {"square"}}
LAYER = "2"  # the second conv's output in the net below: (N, 5, 6, 6)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3),
    ).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


TARGETS = torch.tensor([2, 0])


@pytest.fixture(scope="module")
def a_and_g(net, x):
    """The activation at LAYER and +d logit_target / d activation, without extagg."""
    head, tail = net[: int(LAYER) + 1], net[int(LAYER) + 1:]
    a = head(x).detach().requires_grad_(True)
    score = tail(a)[torch.arange(2), TARGETS].sum()
    (g,) = torch.autograd.grad(score, a)
    return a.detach(), g


# Contributions as (N, D, h, w), built by hand.
def scaling(a, g):
    return a * g


def conv1x1(a, g):
    return torch.einsum("nchw,ndhw->ncdhw", g, a).flatten(1, 2)


def conv3x3(a, g):
    n, _, h, w = a.shape
    patches = F.unfold(a, 3, padding=1).reshape(n, -1, h, w)  # (N, 9K, h, w)
    return torch.einsum("nchw,ndhw->ncdhw", g, patches).flatten(1, 2)


# Reductions over dim 1, written independently of the plugin.
def lower_median(c):
    return c.sort(dim=1).values[:, (c.shape[1] - 1) // 2]


def top_mean(k):
    return lambda c: c.sort(dim=1, descending=True).values[:, :k].mean(1)


CASES = [
    ("scaling+square+median", scaling, lambda c: lower_median(c ** 2)),
    ("scaling+median", scaling, lower_median),
    ("scaling+l1", scaling, lambda c: c.abs().sum(1)),
    ("scaling+topk(k=2)", scaling, top_mean(2)),
    ("scaling+sum+square", scaling, lambda c: c.sum(1) ** 2),
    ("conv1x1+square+median", conv1x1, lambda c: lower_median(c ** 2)),
    ("conv1x1+relu+l1", conv1x1, lambda c: c.clamp(min=0).sum(1)),
    ("conv3x3+l1", conv3x3, lambda c: c.abs().sum(1)),
    ("conv3x3+neg+l1", conv3x3, lambda c: (-c).clamp(min=0).sum(1)),
    ("conv3x3+median", conv3x3, lower_median),
    ("conv3x3+topk", conv3x3, top_mean(3)),  # default k=3
    ("conv3x3+topk(k=100)", conv3x3, top_mean(100)),  # 180 entries per location
]


def test_entry_point_and_origin():
    registry = extagg.default_registry()
    for kind, names in COMPONENTS.items():
        for name in names:
            spec = registry.get(kind, name)
            assert spec.origin.distribution == DIST
            assert spec.origin.plugin == ENTRY_POINT
            assert spec.origin.version == md.version(DIST)
    assert ENTRY_POINT in {p.name for p in registry.plugins}


def test_components_join_the_design_space():
    space = set(extagg.methods("*"))
    for name in ("scaling+square+median", "conv3x3+l1", "bias+topk", "conv1x1+relu+median", "scaling+sum+square"):
        assert name in space
    assert set(extagg.methods("*+median*")) == {m for m in space if "+median" in m}
    assert "scaling+abs+l1" not in space  # l1 is declared abs_invariant


@pytest.mark.parametrize("method,contribution,reduce", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("closed_forms", [True, False], ids=["closed", "generic"])
def test_maps_match_hand_computation(net, x, a_and_g, method, contribution, reduce, closed_forms):
    a, g = a_and_g
    expected = reduce(contribution(a, g))
    maps = extagg.saliency(net, x, method, layers=LAYER, targets=TARGETS, closed_forms=closed_forms)
    got = maps[method, LAYER]
    assert got.shape == (2, 1, 6, 6)
    torch.testing.assert_close(got[:, 0], expected)


def test_median_at_the_input(net, x):
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr)[torch.arange(2), TARGETS].sum(), xr)
    expected = ((x * g) ** 2).sort(dim=1).values[:, 1]  # 3 channels: the middle one
    maps = extagg.saliency(net, x, "scaling+square+median", layers="input", targets=TARGETS)
    torch.testing.assert_close(maps["scaling+square+median", "input"][:, 0], expected)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "extagg", *args], capture_output=True, text=True, timeout=300)


def test_cli_methods_lists_plugin_compositions():
    proc = _cli("methods", "*median*")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert "scaling+square+median" in lines
    assert "conv3x3+relu+median" in lines
    assert all("median" in line for line in lines)
    assert lines == extagg.methods("*median*")


def test_cli_plugins_names_the_distribution():
    proc = _cli("plugins")
    assert proc.returncode == 0, proc.stderr
    assert ENTRY_POINT in proc.stdout and DIST in proc.stdout
