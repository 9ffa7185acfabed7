"""Tests of extagg-hello's ``alphabeta`` propagation rule (LRP-alpha-beta), the worked example of a third-party rule.

The registry is built from extagg's built-ins plus the rule module (``autoload=False``). Expected values come from
an independent reference in float64: the relevance split written out over the contributions ``z_ij = x_i w_ij``
of each layer (the convolution as its dense matrix, built by applying it to basis images), with no autograd.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import extagg
from extagg.plugin import InputError, UnsupportedLayerError
from extagg_hello import rules as hello_rules

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@pytest.fixture(scope="module")
def registry():
    pm = extagg.make_plugin_manager(autoload=False, extra=[hello_rules])
    return extagg.Registry.from_plugin_manager(pm)


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)).eval()


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (id(p), p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "buffers": {n: (id(b), b.clone()) for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: tuple(tuple(getattr(m, h, {})) for h in HOOKS) for n, m in model.named_modules()},
    }


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    for name, (ident, value, flag, grad) in before["params"].items():
        now = after["params"][name]
        assert now[0] == ident and torch.equal(now[1], value) and now[2] == flag and now[3] is grad, name
    assert after["buffers"].keys() == before["buffers"].keys()
    assert after["modes"] == before["modes"] and after["hooks"] == before["hooks"]


# ----------------------------------------------------------------------------- independent reference (float64)
def dense_conv(conv: nn.Conv2d, shape) -> torch.Tensor:
    """(out_features, in_features) matrix of the conv without bias: column k is the conv of the k-th basis image."""
    size = int(torch.tensor(shape).prod())
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    with torch.no_grad():
        out = nn.functional.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding)
    return out.reshape(size, -1).T


def split(x: torch.Tensor, w: torch.Tensor, relevance: torch.Tensor, alpha: float) -> torch.Tensor:
    """R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j, z_ij = x_i w_ji; one sample, 0/0 = 0."""
    beta = alpha - 1
    z = x[None, :] * w                        # (out j, in i)
    zp, zn = z.clamp(min=0), z.clamp(max=0)
    sp, sn = zp.sum(1, keepdim=True), zn.sum(1, keepdim=True)
    frac = alpha * torch.where(sp == 0, 0.0, zp / sp) - beta * torch.where(sn == 0, 0.0, zn / sn)
    return (frac * relevance[:, None]).sum(0)


def reference(model: nn.Sequential, x: torch.Tensor, target: int, alpha: float):
    """(relevance at the input summed over channels, gradient at the ReLU output) for one image."""
    conv, lin = model[0], model[3]
    x = x.double()
    w_conv = dense_conv(conv, x.shape)
    y_conv = w_conv @ x.flatten() + conv.bias.double().repeat_interleave(16)
    a = y_conv.clamp(min=0)
    w_lin = lin.weight.double()
    logit = w_lin[target] @ a + lin.bias.double()[target]
    r_out = torch.zeros(5, dtype=torch.float64)
    r_out[target] = logit                     # the relevance of the explained logit is the logit itself
    r_a = split(a, w_lin, r_out, alpha)       # ReLU passes relevance on: R at its input = R at its output
    r_x = split(x.flatten(), w_conv, torch.where(y_conv > 0, r_a, 0.0), alpha)
    # the gradient at the ReLU output: g_i = alpha sum_j w+_ji s+_j - beta sum_j w-_ji s-_j (a >= 0)
    zp, zn = w_lin.clamp(min=0) @ a, w_lin.clamp(max=0) @ a
    sp = torch.where(zp == 0, 0.0, r_out / zp)
    sn = torch.where(zn == 0, 0.0, r_out / zn)
    g_a = alpha * w_lin.clamp(min=0).T @ sp - (alpha - 1) * w_lin.clamp(max=0).T @ sn
    return r_x.reshape(x.shape).sum(0), g_a.reshape(3, 4, 4)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_lrp_map_matches_the_reference(registry, alpha):
    """``alphabeta(alpha=a):scaling+sum`` at the input is the alpha-beta relevance written out over z_ij."""
    model, x, targets = tiny_model(), images(), [1, 3]
    method = f"alphabeta(alpha={alpha}):scaling+sum"
    got = extagg.saliency(model, x, method, layers="input", targets=targets, registry=registry)[method, "input"]
    for n, t in enumerate(targets):
        expected, _ = reference(model, x[n], t, alpha)
        torch.testing.assert_close(got[n, 0].double(), expected, rtol=1e-4, atol=1e-5)


def test_composes_with_gradcam(registry):
    """``alphabeta:gradcam`` is Grad-CAM, ReLU(sum_k a_k mean_u g_k), of the rule's gradient, and differs from
    plain Grad-CAM (the rule really changes the backward pass)."""
    model, x, targets = tiny_model(), images(), [0, 4]
    maps = extagg.saliency(model, x, ["alphabeta:gradcam", "gradcam"], layers="1", targets=targets,
                           registry=registry)
    with torch.no_grad():
        a = model[1](model[0](x)).double()
    for n, t in enumerate(targets):
        _, g = reference(model, x[n], t, 2.0)
        expected = (a[n] * g.mean((1, 2), keepdim=True)).sum(0).clamp(min=0)
        torch.testing.assert_close(maps["alphabeta:gradcam", "1"][n, 0].double(), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps["alphabeta:gradcam", "1"], maps["gradcam", "1"], atol=1e-4)


def test_alpha_one_is_the_builtin_zplus(registry):
    """With beta = 0 the rule is LRP-z+, which extagg ships as ``lrp-zplus``: an independent implementation."""
    model, x = tiny_model(2), images(3)
    methods = ["alphabeta(alpha=1):scaling+sum", "lrp-zplus:scaling+sum"]
    maps = extagg.saliency(model, x, methods, layers="input", targets=[2, 2], registry=registry)
    torch.testing.assert_close(maps[methods[0], "input"], maps[methods[1], "input"])


def test_model_untouched(registry):
    model = tiny_model()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    extagg.saliency(model, images(), "alphabeta:gradcam", layers="1", targets=[0, 1], registry=registry)
    assert_unchanged(before, model)


class FunctionalSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 4)

    def forward(self, x):
        return self.lin(torch.sigmoid(x.flatten(1)))


def test_refused_layers_leave_the_model_untouched(registry):
    """Counter-cases: a Sigmoid module is refused before anything is installed; a functional sigmoid is refused
    in the middle of the forward pass, after the hooks are in. Both are InputErrors naming the layer, and the
    model keeps no hook, mode or tensor change."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(32, 3)).eval()
    before = snapshot(model)
    with pytest.raises(UnsupportedLayerError, match=r"'alphabeta'.*layer '1' \(Sigmoid\)"):
        extagg.saliency(model, images(), "alphabeta:scaling+sum", layers="input", targets=0, registry=registry)
    assert_unchanged(before, model)

    model = FunctionalSigmoid().train()
    before = snapshot(model)
    with pytest.raises(InputError, match=r"torch\.sigmoid"):
        extagg.saliency(model, images(), "alphabeta:scaling+sum", layers="input", targets=0, registry=registry)
    assert_unchanged(before, model)
    assert model.training


def test_bad_alpha_refused(registry):
    """alpha < 1 would make beta negative: refused when the method string is parsed, naming the value."""
    with pytest.raises(extagg.ExtaggError, match=r"alpha.*0\.5|0\.5.*alpha"):
        extagg.saliency(tiny_model(), images(), "alphabeta(alpha=0.5):scaling+sum", layers="input", targets=0,
                        registry=registry)
