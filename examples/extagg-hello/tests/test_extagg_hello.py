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


@pytest.mark.parametrize("method", ["conv3x3+l1", "conv3x3+relu+l1", "conv1x1+neg+l1", "dwconv+l1"])
def test_closed_and_generic_paths_agree(registry, method):
    """``l1`` has a closed form: with ``closed_forms=False`` extagg materialises every contribution instead; both
    paths must give one map. (``median`` and ``topk`` have none, so both paths would run the same generic code:
    they are checked against a reference computed here, below.)"""
    model, x = tiny_cnn(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    kw = dict(layers=["1", "3"], targets=[0, 2], registry=registry)
    assert registry.aggregators[registry.parse(method).aggregator.name].closed_form is not None
    fast = extagg.saliency(model, x, method, closed_forms=True, **kw)
    slow = extagg.saliency(model, x, method, closed_forms=False, **kw)
    for layer in ("1", "3"):
        assert fast[method, layer].shape == (2, 1, 8, 8)
        torch.testing.assert_close(fast[method, layer], slow[method, layer])


def test_closed_and_generic_paths_counter_case(registry):
    """The comparison above can fail: the closed form of ``conv3x3+l1`` against the generic path of
    ``conv3x3+relu+l1`` (another sign profile) gives another map."""
    model, x = tiny_cnn(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    kw = dict(layers="1", targets=[0, 2], registry=registry)
    fast = extagg.saliency(model, x, "conv3x3+l1", closed_forms=True, **kw)["conv3x3+l1", "1"]
    slow = extagg.saliency(model, x, "conv3x3+relu+l1", closed_forms=False, **kw)["conv3x3+relu+l1", "1"]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(fast, slow)


def naive_contributions(model, x, targets, extractor):
    """Every entry of each location's contribution at layer "1" of :func:`tiny_cnn`, built from its definition
    (docs/components.md), as ``(N, entries, H, W)``: ``conv1x1`` ``g_u x_u^T``, ``conv3x3`` ``g_u p_u^T`` (zero
    padding 1), ``dwconv`` ``g_{c,u} x_{c,u+d}`` over the 3x3 offsets ``d``."""
    act = model[:2](x).detach().requires_grad_(True)
    out = model[2:](act)
    (g,) = torch.autograd.grad(out[torch.arange(len(x)), torch.as_tensor(targets)].sum(), act)
    n, k, h, w = act.shape
    act = act.detach()
    if extractor == "conv1x1":
        c = g[:, :, None] * act[:, None]
    elif extractor == "conv3x3":
        patches = torch.nn.functional.unfold(act, 3, padding=1).view(n, 1, k * 9, h, w)
        c = g[:, :, None] * patches
    else:  # dwconv
        c = g[:, :, None] * torch.nn.functional.unfold(act, 3, padding=1).view(n, k, 9, h, w)
    return c.reshape(n, -1, h, w)


@pytest.mark.parametrize("method, extractor, reduce", [
    ("conv3x3+square+median", "conv3x3", lambda c: (c ** 2).sort(1).values[:, (c.shape[1] - 1) // 2]),
    ("dwconv+median", "dwconv", lambda c: c.sort(1).values[:, (c.shape[1] - 1) // 2]),
    ("conv1x1+topk(k=4)", "conv1x1", lambda c: c.topk(4, 1).values.mean(1)),
    ("conv3x3+relu+topk", "conv3x3", lambda c: c.relu().topk(3, 1).values.mean(1)),
])
def test_median_and_topk_against_a_naive_reference(registry, method, extractor, reduce):
    """``median`` and ``topk`` (no closed form) at a hidden layer equal the reduction, written out here, of every
    entry of the contributions built from their definition; a reference reducing with ``amax`` instead is
    refused (replacing ``median`` by ``amax`` in the plugin fails this test)."""
    model, x, targets = tiny_cnn(), torch.randn(2, 3, 8, 8, dtype=torch.float64), [0, 2]
    got = extagg.saliency(model, x, method, layers="1", targets=targets, registry=registry)[method, "1"][:, 0]
    c = naive_contributions(model, x, targets, extractor)
    torch.testing.assert_close(got, reduce(c))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, c.amax(1) if "square" not in method else (c ** 2).amax(1))


def test_scaling_square_median_by_hand(registry):
    """``scaling+square+median`` at the input: lower median over RGB of (x * dS/dx)^2."""
    model, x = tiny_cnn(), torch.randn(1, 3, 6, 6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.eval()(xr)[0, 1], xr)
    c = (x * g) ** 2
    expected = c.sort(dim=1).values[:, 1]  # 3 channels: the middle one
    maps = extagg.saliency(model, x, "scaling+square+median", layers="input", targets=1, registry=registry)
    torch.testing.assert_close(maps["scaling+square+median", "input"][:, 0], expected)
