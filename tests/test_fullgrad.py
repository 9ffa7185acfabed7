"""FullGrad: completeness (input term + bias terms + output bias = the logit) and the reference post-processing,
computed here with plain autograd (hooks that keep each bias layer's output), never through extagg."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch import nn

from extagg.errors import InputError
from extagg_builtins.fullgrad import fullgrad, fullgrad_layers
from tests.cam_nets import perturb_batchnorm
from tests.strategies import net_specs


def conv_bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.Conv2d(5, 4, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    perturb_batchnorm(net[1], net[4])
    return net


@pytest.fixture
def net():
    return conv_bn_net()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_the_layer_group_is_the_input_and_every_bias_layer(net):
    assert fullgrad_layers(net) == ["input", "0", "1", "4", "6"]  # "3" is a Conv2d without bias


@pytest.mark.parametrize("c", [0, 2])
def test_completeness_signed_terms_sum_to_the_logit(net, x, registry, c):
    _, maps = fullgrad(net, x, c, method="fullgrad-signed", normalise="none", per_layer=True, registry=registry)
    logit = net(x)[:, c]
    total = sum(m.sum(dim=(-2, -1))[:, 0] for m in _at_layer_size(net, x, c, registry).values())
    torch.testing.assert_close(total + net[-1].bias[c], logit.detach())
    assert set(maps) == set(fullgrad_layers(net))


def _at_layer_size(net, x, c, registry, layers=None):
    import extagg
    layers = layers or fullgrad_layers(net)
    res = extagg.saliency(net, x, "fullgrad-signed", layers, c, registry=registry)
    return {layer: res["fullgrad-signed", layer] for layer in layers}


def test_completeness_fails_without_the_batchnorm_bias_or_with_abs(net, x, registry):
    logit = net(x)[:, 1].detach()
    without_bn = [layer for layer in fullgrad_layers(net) if layer not in ("1", "4")]
    part = sum(m.sum(dim=(-2, -1))[:, 0] for m in _at_layer_size(net, x, 1, registry, without_bn).values())
    assert not torch.allclose(part + net[-1].bias[1], logit)
    import extagg
    res = extagg.saliency(net, x, "fullgrad", fullgrad_layers(net), 1, registry=registry)
    absolute = sum(m.sum(dim=(-2, -1))[:, 0] for m in res.values())
    assert not torch.allclose(absolute + net[-1].bias[1], logit)


def _reference_fullgrad(net, x, c, post):
    """Srinivas & Fleuret's saliency: post(x * grad_x) and post(g_l * b_l) per bias layer (BatchNorm: its
    effective bias), post = f then min-max over C x H x W per image, bilinear (align_corners) upsampling, channel
    sum, uniform sum over layers."""
    outs, biases = [], []

    def keep(module, _inp, out):
        out.retain_grad()
        outs.append(out)
        if isinstance(module, nn.BatchNorm2d):
            b = module.bias - module.weight * module.running_mean / torch.sqrt(module.running_var + module.eps)
        else:
            b = module.bias
        biases.append(b.detach())

    handles = [m.register_forward_hook(keep) for m in net if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
               and m.bias is not None]
    try:
        xx = x.clone().requires_grad_(True)
        net(xx)[:, c].sum().backward()
    finally:
        for h in handles:
            h.remove()
        net.zero_grad(set_to_none=True)

    def process(t):
        t = post(t)
        flat = t.flatten(1)
        t = t - flat.min(1).values[:, None, None, None]
        return t / (t.flatten(1).max(1).values[:, None, None, None] + 1e-6)

    cam = process(xx.grad * x).sum(1)
    for out, b in zip(outs, biases):
        t = process(out.grad * b[None, :, None, None])
        cam = cam + F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=True).sum(1)
    return cam


@pytest.mark.parametrize("method, post", [("fullgrad", torch.abs), ("fullgrad-pos", torch.relu)])
def test_fullgrad_is_the_reference_post_processing(net, x, registry, method, post):
    got = fullgrad(net, x, 1, method=method, registry=registry)[:, 0]
    torch.testing.assert_close(got, _reference_fullgrad(net, x, 1, post))
    # counter-case: the reference with the other post-processing, or for another class, is refused
    other = torch.relu if post is torch.abs else torch.abs
    for wrong in (_reference_fullgrad(net, x, 1, other), _reference_fullgrad(net, x, 0, post)):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got, wrong)


def test_fullgrad_refuses_a_method_that_is_not_a_bias_value_sum(net, x, registry):
    with pytest.raises(InputError, match="bias-value"):
        fullgrad(net, x, 0, method="gradcam", registry=registry)
    with pytest.raises(InputError, match="minmax, maxabs, none"):
        fullgrad(net, x, 0, normalise="max", registry=registry)


def test_bias_value_uses_the_batch_statistics_in_training_mode(net, x, registry):
    """In training mode BatchNorm normalises with the batch's statistics: bias-value's term at it is
    (beta - gamma * batch mean / sqrt(batch var + eps)) * g, written here with plain autograd; the model's mode and
    running statistics are left as they were (phase 2 runs after the mode is restored)."""
    import extagg
    net.train()
    stats = (net[1].running_mean.clone(), net[1].running_var.clone())
    got = extagg.saliency(net, x, "fullgrad-signed", "1", 0, registry=registry, eval_mode=False)["fullgrad-signed", "1"]
    twin = conv_bn_net().train()
    inp = twin[0](x).detach()
    out = twin[1](inp)
    out.retain_grad()
    twin[2:](out)[:, 0].sum().backward()
    mean, var = inp.mean((0, 2, 3)), inp.var((0, 2, 3), unbiased=False)
    b = twin[1].bias - twin[1].weight * mean / torch.sqrt(var + twin[1].eps)
    want = (b.detach()[None, :, None, None] * out.grad).sum(1, keepdim=True)
    torch.testing.assert_close(got[:, 0], want[:, 0])
    running = net[1].running_mean / torch.sqrt(net[1].running_var + net[1].eps)
    assert not torch.allclose(b.detach(), net[1].bias - net[1].weight * running)  # the two modes differ here
    assert net[1].training and torch.equal(net[1].running_mean, stats[0]) and torch.equal(net[1].running_var, stats[1])


@given(spec=net_specs())
def test_completeness_on_random_relu_networks(spec):
    """Any conv (+BN) + ReLU network with a GAP or flatten linear head: the signed terms sum to the logit."""
    import extagg
    from tests.conftest import builtin_registry
    net, x = spec.build(), spec.images()
    c = spec.classes - 1
    layers = fullgrad_layers(net)
    res = extagg.saliency(net, x, "fullgrad-signed", layers, c, registry=builtin_registry())
    total = sum(m.sum(dim=(-2, -1))[:, 0] for m in res.values()) + net[-1].bias[c]
    torch.testing.assert_close(total, net(x)[:, c].detach())
