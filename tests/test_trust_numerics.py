"""Numerical trust: Grad-CAM++'s weights near the pole of eq. 19, and the relative stabiliser ``alpha_eps``.

The Lite0 tests use the embedded EfficientNet-Lite0 (``efficientnet-lite-pytorch``; skipped without it)."""
import pytest
import torch

import extagg
from extagg.errors import InvalidMethodError
from extagg_builtins.cam_weights import MAX_ALPHA_EPS, channel_weights, gradcampp_alpha


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    from extagg import models

    net, pre = models.load_model()
    return net, pre(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))


def _capture(net, x, layer, target):
    """The layer's output and the target logit's gradient there, by a forward hook and autograd."""
    keep = {}
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: keep.setdefault("out", o))
    try:
        logits = net(x)
    finally:
        handle.remove()
    g, = torch.autograd.grad(logits[:, target].sum(), keep["out"])
    return keep["out"].detach(), g.detach()


@pytest.mark.slow
@pytest.mark.parametrize("target", [0, 1, 500])
def test_gradcampp_on_a_float32_model_is_eq19_in_float64_at_a_middle_layer(lite0, registry, target):
    """Guards the float64 weights: at ``_blocks.10`` of Lite0, where ``2 + S_k g`` comes within 4e-4 of 0,
    extagg's signed Grad-CAM++ map on the float32 model equals eq. 19 evaluated in float64 on the same float32
    activation and gradient to 2e-6 of the map's range (measured: at most 4.2e-7, the float32 channel sum). The
    weights computed in float32 missed by 1.3e-5, 2.0e-4 and 1.6e-5 of the range for these three targets."""
    net, x = lite0
    a, g = (t.double() for t in _capture(net, x, "_blocks.10", target))
    alpha = torch.nan_to_num(g ** 2 / (2 * g ** 2 + a.sum(dim=(2, 3), keepdim=True) * g ** 3), nan=0.0)
    want = ((alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(1)[0]
    method = "pooled-scaling(g=relu,pool=alpha)+sum"
    got = extagg.saliency(net, x, method, "_blocks.10", target, registry=registry)[method][0, 0]
    assert got.dtype == torch.float32
    gap = ((got.double() - want).abs().max() / (want.max() - want.min())).item()
    assert gap <= 2e-6, gap


def _near_pole():
    """A gradient and activation whose ``d = 2 + S g`` spans the pole: S = 4 in every channel, g from -1 to 1."""
    g = torch.linspace(-1, 1, 41, dtype=torch.float64).reshape(1, 1, 1, 41, 1)
    x = torch.full((1, 1, 41, 1), 4.0 / 41, dtype=torch.float64)
    return g, x


def test_alpha_eps_zero_is_eq19_and_a_positive_eps_floors_the_pole_relative_to_its_terms():
    """``alpha_eps=0`` is eq. 19 exactly (alpha = 1 / (2 + S g), 0 at g = 0 and at d = 0); ``alpha_eps > 0``
    changes alpha only where ``|d| < eps (2 + |S g|)``, keeps its sign there, and bounds ``|alpha|`` by
    ``1 / (2 eps)``. Fails if the floor is absolute, dropped, or applied everywhere."""
    g, x = _near_pole()
    sg = 4 * g
    d = 2 + sg
    plain = gradcampp_alpha(g, x)
    want = torch.where((g == 0) | (d == 0), 0, 1 / torch.where(d == 0, 1, d))
    torch.testing.assert_close(plain, want, rtol=1e-15, atol=0)
    eps = 0.1
    floored = gradcampp_alpha(g, x, eps)
    far = d.abs() >= eps * (2 + sg.abs())
    assert (~far).any() and far.any()
    torch.testing.assert_close(floored[far], plain[far], rtol=0, atol=0)
    near = ~far & (g != 0)
    assert (floored[near].abs() <= 1 / (2 * eps) + 1e-12).all()
    assert (torch.sign(floored[near]) == torch.where(d[near] < 0, -1.0, 1.0)).all()
    assert plain.abs().max() > 1 / (2 * eps)     # without the floor the pole exceeds the bound


def test_alpha_eps_is_scale_free():
    """The floor is relative: scaling the logit (g -> c g, S fixed: alpha depends on S g only) by 10^-3 leaves the
    weights' shape, w(c g) = c w(g); pytorch-grad-cam's absolute 1e-6 would not."""
    g, x = _near_pole()
    x = x.reshape(1, 1, 41, 1)
    c = 1e-3
    w1 = channel_weights(g, x * 1, "relu", "alpha", alpha_eps=0.05)
    wc = channel_weights(g * c, x / c, "relu", "alpha", alpha_eps=0.05)
    torch.testing.assert_close(wc, w1 * c, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", ["-0.1", "0.75", "1e400"])
def test_alpha_eps_outside_its_range_is_refused(registry, bad):
    with pytest.raises(InvalidMethodError, match=rf"alpha_eps.*0\.\.{MAX_ALPHA_EPS}"):
        registry.parse(f"pooled-scaling(g=relu,pool=alpha,alpha_eps={bad})+sum+relu")


def test_alpha_eps_in_a_method_string_reaches_the_weights(registry):
    """``pooled-scaling(...,alpha_eps=...)`` changes the map where the pole is near and not elsewhere."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 5 * 5, 3)).double()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    plain, floored = "pooled-scaling(g=relu,pool=alpha)+sum", "pooled-scaling(g=relu,pool=alpha,alpha_eps=0.5)+sum"
    maps = extagg.saliency(net, x, [plain, floored], "0", 0, registry=registry)
    a, g = _capture(net, x, "0", 0)   # the conv: signed activations, so S g < 0 where g > 0 happens
    s = a.sum(dim=(2, 3), keepdim=True) * g
    d = 2 + s
    alpha = torch.where(g == 0, 0, 1 / torch.where((d.abs() >= 0.5 * (2 + s.abs())), d,
                                                    torch.where(d < 0, -0.5 * (2 + s.abs()), 0.5 * (2 + s.abs()))))
    want = ((alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    torch.testing.assert_close(maps[floored], want, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(maps[floored], maps[plain])


def _patch_norm(a: torch.Tensor) -> torch.Tensor:
    """``|p_u|``: the L2 norm of the zero-padded 3x3 patch of ``a`` (N, C, h, w) at every location, (N, h, w)."""
    sq = torch.nn.functional.pad((a * a).sum(1, keepdim=True), (1, 1, 1, 1))
    return torch.nn.functional.avg_pool2d(sq, 3, 1, divisor_override=1)[:, 0].sqrt()


@pytest.mark.slow
def test_the_generic_path_accumulates_in_float64(lite0, registry):
    """Guards the widened generic path: ``conv3x3+norm`` at ``_blocks.10._depthwise_conv`` of the float32 Lite0
    (672 channels, 4 million entries per location), without closed forms, equals the float64 value
    ``|g_u| |p_u|`` of the same captured tensors to 1e-6 of the map's range, for two targets (measured: 4e-8; the
    closed form: 3e-7). Reducing in float32 missed by 6.3e-4 and 4.5e-4."""
    net, x = lite0
    layer, targets = "_blocks.10._depthwise_conv", torch.tensor([[0, 1]])
    got = extagg.saliency(net, x, "conv3x3+norm", layer, targets, closed_forms=False,
                          registry=registry)["conv3x3+norm"]
    assert got.dtype == torch.float32 and got.shape[:2] == (1, 2)
    for k, target in enumerate([0, 1]):
        a, g = (t.double() for t in _capture(net, x, layer, target))
        want = g[0].norm(dim=0) * _patch_norm(a)[0]
        gap = ((got[0, k].double() - want).abs().max() / (want.max() - want.min())).item()
        assert gap <= 1e-6, (target, gap)
