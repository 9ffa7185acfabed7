"""Tests of the extagg-hello example plugin.

Most tests build a registry from extagg's built-ins plus this plugin module only (``autoload=False``), so they
do not depend on which other plugins happen to be installed; one test checks the installed entry point.
"""
from __future__ import annotations

import importlib.metadata as md

import pytest
import torch

import extagg
import extagg_hello
from extagg.contributions import Factored, PatchGeometry, apply_profile

PROFILES = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]


@pytest.fixture(scope="module")
def registry():
    pm = extagg.make_plugin_manager(autoload=False, extra=[extagg_hello])
    return extagg.Registry.from_plugin_manager(pm)


def tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3),
    ).double()


def test_entry_point_is_declared():
    """The installed distribution exposes the module under the ``extagg`` group, named after itself."""
    eps = [ep for ep in md.entry_points(group="extagg") if ep.name == "extagg-hello"]
    assert len(eps) == 1, "run `pip install -e examples/extagg-hello`"
    assert eps[0].value == "extagg_hello"
    assert eps[0].dist.metadata["Name"] == "extagg-hello"


def test_components_are_registered(registry):
    assert {"median", "l1", "topk"} <= set(registry.aggregators)
    assert "square" in registry.filters
    assert registry.filters["square"].sign_profile is None
    assert registry.aggregators["median"].closed_form is None
    assert registry.aggregators["l1"].closed_form is not None


def test_reducers_on_known_values():
    x = torch.tensor([[3.0, -1.0, 2.0, 5.0], [0.0, 4.0, -2.0, 1.0]])
    assert extagg_hello.median(x, 1).tolist() == [2.0, 0.0]  # lower median of 4 entries
    assert extagg_hello.median(x[:, :3], 1).tolist() == [2.0, 0.0]
    assert extagg_hello.l1(x, 1).tolist() == [11.0, 7.0]
    assert extagg_hello.topk(x, 1, k=2).tolist() == [4.0, 2.5]
    assert extagg_hello.topk(x, 1, k=10).tolist() == [2.25, 0.75]  # capped at the 4 entries
    assert extagg_hello.topk(x, 0, k=1).tolist() == [3.0, 4.0, 2.0, 5.0]


def test_parameters_and_canonical_form(registry):
    assert registry.canonical("Scaling + Square + TopK(k=3)") == "scaling+square+topk"  # default dropped
    assert registry.canonical("scaling+topk(k=2)") == "scaling+topk(k=2)"
    with pytest.raises(extagg.InvalidMethodError, match="at least 1"):
        registry.parse("scaling+topk(k=0)")
    with pytest.raises(extagg.InvalidMethodError, match="must be int"):
        registry.parse("scaling+topk(k=1.5)")


def test_design_space_redundancy(registry):
    space = set(registry.methods("conv1x1+*"))
    assert {"conv1x1+median", "conv1x1+square+median", "conv1x1+l1", "conv1x1+topk", "conv1x1+sum+square"} <= space
    assert "conv1x1+abs+l1" not in space     # abs_invariant: abs before l1 changes nothing
    assert "conv1x1+l1+relu" not in space    # nonnegative: relu after l1 changes nothing
    assert "conv1x1+relu+median+relu" not in space  # keeps_sign after a nonnegative pre-filter


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("groups", [1, 2])
def test_l1_closed_form_matches_materialised(profile, groups):
    torch.manual_seed(1)
    g = torch.randn(2, 2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    c = Factored(g, x, PatchGeometry.identity(3, groups=groups))
    expected = apply_profile(c.dense().values, profile).abs().sum(2)
    torch.testing.assert_close(extagg_hello.l1_closed_form(c, profile), expected)


@pytest.mark.parametrize("method", [
    "conv3x3+l1", "conv3x3+relu+l1", "conv1x1+neg+l1", "conv3x3+square+median", "conv1x1+topk(k=4)",
    "conv3x3+relu+topk", "dwconv+median",
])
def test_closed_and_generic_paths_agree(registry, method):
    """With ``closed_forms=False`` extagg materialises every contribution; both paths must give one map."""
    model, x = tiny_cnn(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    kw = dict(layers=["1", "3"], targets=[0, 2], registry=registry)
    fast = extagg.saliency(model, x, method, closed_forms=True, **kw)
    slow = extagg.saliency(model, x, method, closed_forms=False, **kw)
    for layer in ("1", "3"):
        assert fast[method, layer].shape == (2, 1, 8, 8)
        torch.testing.assert_close(fast[method, layer], slow[method, layer])


def test_scaling_square_median_by_hand(registry):
    """``scaling+square+median`` at the input: lower median over RGB of (x * dS/dx)^2."""
    model, x = tiny_cnn(), torch.randn(1, 3, 6, 6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.eval()(xr)[0, 1], xr)
    c = (x * g) ** 2
    expected = c.sort(dim=1).values[:, 1]  # 3 channels: the middle one
    maps = extagg.saliency(model, x, "scaling+square+median", layers="input", targets=1, registry=registry)
    torch.testing.assert_close(maps["scaling+square+median", "input"][:, 0], expected)
