"""The CAM family against each method's published formula, computed here with plain torch autograd on small
models (the model split at the layer: ``A = body(x)``, ``g = d head(A)[c] / dA``), never through extagg's code."""
import pytest
import torch
from hypothesis import given

import extagg
from extagg.errors import InvalidMethodError, LayerMismatchError, PluginLoadError
from tests.cam_nets import small_net
from tests.strategies import net_specs


@pytest.fixture
def net():
    return small_net()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def split(net, layer: int, x, c: int):
    """A at output of ``net[layer]`` and g = dS_c/dA, by plain autograd; also S_c (N,)."""
    a = net[:layer + 1](x).detach().requires_grad_(True)
    s = net[layer + 1:](a)[:, c]
    g, = torch.autograd.grad(s.sum(), a)
    return a.detach(), g, s.detach()


def ext(net, x, method, layer, c, registry):
    return extagg.saliency(net, x, method, str(layer), targets=c, registry=registry)[method, str(layer)][:, 0]


LAYERS = [1, 3, 4]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("gfilter, fn", [("", lambda g: g), ("(g=relu)", torch.relu), ("(g=abs)", torch.abs)])
def test_gradcam_with_a_filter_on_g_before_pooling(net, x, registry, layer, gfilter, fn):
    a, g, _ = split(net, layer, x, 2)
    expected = torch.relu((fn(g).mean(dim=(2, 3), keepdim=True) * a).sum(1))
    got = ext(net, x, f"pooled-scaling{gfilter}+sum+relu", layer, 2, registry)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("layer", LAYERS)
def test_xgradcam_is_fu_et_al(net, x, registry, layer):
    a, g, _ = split(net, layer, x, 1)
    w = (a * g).sum(dim=(2, 3), keepdim=True) / a.sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(ext(net, x, "xgradcam", layer, 1, registry), torch.relu((w * a).sum(1)))


@pytest.mark.parametrize("layer", LAYERS)
def test_layercam_and_hirescam(net, x, registry, layer):
    a, g, _ = split(net, layer, x, 3)
    torch.testing.assert_close(ext(net, x, "layercam", layer, 3, registry), torch.relu((torch.relu(g) * a).sum(1)))
    torch.testing.assert_close(ext(net, x, "hirescam", layer, 3, registry), torch.relu((g * a).sum(1)))


def test_layercam_differs_from_scaling_relu_sum_on_negative_activations(net, x, registry):
    """``scaling+relu+sum`` (relu of g*A) is LayerCAM (relu of g, times A) only where A >= 0: equal after the ReLU
    (layer 4), different on the first conv's output (layer 0: signed activations, and the BatchNorm after it
    passes gradient to negative ones too)."""
    after_relu = ext(net, x, "scaling+relu+sum+relu", 4, 0, registry)
    torch.testing.assert_close(after_relu, ext(net, x, "layercam", 4, 0, registry))
    signed = ext(net, x, "scaling+relu+sum+relu", 0, 0, registry)
    a, g, _ = split(net, 0, x, 0)
    assert ((a < 0) & (g != 0)).any()
    assert not torch.allclose(signed, ext(net, x, "layercam", 0, 0, registry))


@pytest.mark.parametrize("layer", [1, 3])
def test_the_cam_formula_comparisons_can_fail(net, x, registry, layer):
    """Counter-cases of the formula tests above, through extagg's maps: each method against a neighbour's formula
    (Grad-CAM's mean weight for XGrad-CAM, HiResCAM's signed g for LayerCAM and the reverse, a g filter other
    than the one asked for) or its own formula for another target is refused."""
    a, g, _ = split(net, layer, x, 2)
    gradcam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    xw = (a * g).sum(dim=(2, 3), keepdim=True) / a.sum(dim=(2, 3), keepdim=True)
    cases = [("xgradcam", gradcam), ("layercam", torch.relu((g * a).sum(1))),
             ("hirescam", torch.relu((torch.relu(g) * a).sum(1))),
             ("pooled-scaling(g=abs)+sum+relu", torch.relu((torch.relu(g).mean(dim=(2, 3), keepdim=True) * a).sum(1))),
             ("xgradcam", torch.relu((xw * a).sum(1)))]
    for method, wrong in cases[:4]:
        with pytest.raises(AssertionError):
            torch.testing.assert_close(ext(net, x, method, layer, 2, registry), wrong)
    method, right = cases[4]
    torch.testing.assert_close(ext(net, x, method, layer, 2, registry), right)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ext(net, x, method, layer, 1, registry), right)


def _paper_gradcampp(net, layer, x, c, normalise=False):
    """Chattopadhay et al. eq. 19 on Y = exp(S_c), with the derivatives of Y taken by autograd (torch.func)."""
    head = net[layer + 1:]
    out = []
    for a in net[:layer + 1](x).detach():
        f = lambda t: torch.exp(head(t[None])[0, c])  # noqa: E731
        n = a.numel()
        d1 = torch.func.grad(f)(a)
        diag2 = lambda t: torch.func.jacfwd(torch.func.grad(f))(t).reshape(n, n).diagonal().reshape(a.shape)  # noqa: E731
        d2 = diag2(a)
        d3 = torch.func.jacfwd(diag2)(a).reshape(n, n).diagonal().reshape(a.shape)
        den = 2 * d2 + a.sum(dim=(1, 2), keepdim=True) * d3
        alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1), 0)
        if normalise:  # the original code: alpha / sum of alpha where the gradient is positive
            total = (alpha * (d1 > 0)).sum(dim=(1, 2), keepdim=True)
            alpha = torch.where(total != 0, alpha / torch.where(total != 0, total, 1), alpha)
        w = (alpha * torch.relu(d1)).sum(dim=(1, 2), keepdim=True)
        out.append(torch.relu((w * a).sum(0)))
    return torch.stack(out)


@pytest.mark.parametrize("layer", [3, 4])
@pytest.mark.parametrize("normalise", [False, True])
def test_gradcampp_is_equation_19_under_the_exponential_output(net, x, registry, layer, normalise):
    """extagg leaves out the global factor exp(S_c) of dY/dA (one positive number per image and target)."""
    c = 2
    _, _, s = split(net, layer, x, c)
    method = "pooled-scaling(alpha_norm=true,g=relu,pool=alpha)+sum+relu" if normalise else "gradcampp"
    got = ext(net, x, method, layer, c, registry)
    expected = _paper_gradcampp(net, layer, x, c, normalise)
    assert expected.amax() > 0
    torch.testing.assert_close(got * torch.exp(s)[:, None, None], expected)
    # counter-case: without the factor exp(S_c), or with the other alpha normalisation, the comparison fails
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, expected)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got * torch.exp(s)[:, None, None], _paper_gradcampp(net, layer, x, c, not normalise))


def test_gradcampp_signed_is_one_token_from_gradcampp(net, x, registry):
    a, g, _ = split(net, 1, x, 0)
    alpha = g ** 2 / (2 * g ** 2 + a.sum(dim=(2, 3), keepdim=True) * g ** 3)
    alpha = torch.nan_to_num(alpha, nan=0.0)
    for method, fg in [("gradcampp-signed", g), ("gradcampp", torch.relu(g))]:
        expected = torch.relu(((alpha * fg).sum(dim=(2, 3), keepdim=True) * a).sum(1))
        torch.testing.assert_close(ext(net, x, method, 1, 0, registry), expected)
    assert str(registry.parse("gradcampp")).replace("g=relu,", "") == str(registry.parse("gradcampp-signed"))


def _gap_layer(spec) -> str:
    return str(len(spec.build()) - 4)  # the last ReLU, before AdaptiveAvgPool2d, Flatten, Linear


@given(spec=net_specs(head="gap"))
def test_at_the_layer_feeding_gap_gradcam_equals_xgradcam_equals_scaling_sum_relu(spec):
    """[R] g is constant over space there, so pooling it (by mean or by activation mass) changes nothing."""
    from tests.conftest import builtin_registry
    methods = ["gradcam", "xgradcam", "scaling+sum+relu"]
    res = extagg.saliency(spec.build(), spec.images(), methods, _gap_layer(spec), targets=0,
                          registry=builtin_registry())
    maps = [res[m] for m in methods]
    torch.testing.assert_close(maps[0], maps[2])
    torch.testing.assert_close(maps[1], maps[2])


def test_the_gap_identities_fail_where_g_varies_in_space(net, x, registry):
    """Layer 1 feeds a conv, not GAP: Grad-CAM, XGrad-CAM and scaling+sum+relu are three different maps."""
    res = extagg.saliency(net, x, ["gradcam", "xgradcam", "scaling+sum+relu"], "1", targets=0, registry=registry)
    assert not torch.allclose(res["gradcam"], res["scaling+sum+relu"])
    assert not torch.allclose(res["xgradcam"], res["scaling+sum+relu"])
    assert not torch.allclose(res["gradcam"], res["xgradcam"])


@pytest.mark.parametrize("bad, accepted", [("pooled-scaling(pool=max)+sum", "mean, mass, alpha"),
                                           ("scaling(g=pos)+sum", "signed, relu, abs")])
def test_bad_choices_name_the_accepted_ones(registry, bad, accepted):
    with pytest.raises(InvalidMethodError, match=f"must be one of {accepted}, got"):
        registry.parse(bad)


def test_bias_value_refuses_other_modules(net, x, registry):
    with pytest.raises(LayerMismatchError, match="Conv2d or BatchNorm2d or 'input'"):
        extagg.saliency(net, x, "fullgrad", "2", targets=0, registry=registry)


@pytest.mark.parametrize("param, problem", [
    (extagg.specs.Param("g", str, "none", choices=("signed", "relu")), "not one of its choices"),
    (extagg.specs.Param("g", str, "relu", choices=("relu", 1)), "lists the choices [1]"),
])
def test_a_param_with_bad_choices_is_refused_when_it_registers(param, problem):
    from extagg.plugin import Dense, Extractor, hookimpl
    mod = type(extagg)("bad_choices")
    mod.register_extractors = hookimpl(lambda register: register(
        Extractor(name="odd", fn=lambda c, g="relu": Dense(c.grad), params=[param])))
    with pytest.raises(PluginLoadError, match="extractor 'odd'.*" + __import__("re").escape(problem)):
        extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=[mod]))


def test_choices_are_enumerated_in_the_design_space(registry):
    """Each positive / signed pair is in the space, one token apart."""
    space = set(registry.methods())
    for named in ("gradcam", "gradcam-pos", "gradcam-abs", "gradcampp", "gradcampp-signed", "xgradcam",
                  "layercam", "hirescam", "fullgrad", "fullgrad-pos", "fullgrad-signed"):
        assert str(registry.parse(named)) in space, named
