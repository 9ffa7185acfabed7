"""Propagation rules against Captum and Zennit where the definitions coincide, and where they do not.

Captum and Zennit are not test dependencies: each test skips when its peer is not installed
(``pip install captum zennit``). The rules are also tested against their formulas written directly, without any
peer, in tests/test_rules.py.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import extagg
import rules_support


@pytest.fixture(scope="module")
def reg():
    return rules_support.registry()


def randomised(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net.double().eval()


def pooled_cnn(bias=True):
    return randomised(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(4, 5, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
                                    nn.Flatten(), nn.Linear(20, 3, bias=bias)))


def strided_cnn(bias=True):
    return randomised(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(),
                                    nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(80, 3, bias=bias)))


class FlatInput(nn.Module):
    """An MLP that reads an image (Captum's LRP cannot pass a Flatten module)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x.reshape(x.shape[0], -1))


def mlp(bias=True):
    return randomised(nn.Sequential(nn.Linear(12, 10, bias=bias), nn.ReLU(), nn.Linear(10, 8, bias=bias), nn.ReLU(),
                                    nn.Linear(8, 3, bias=bias)))


TARGETS = torch.tensor([0, 1, 2])


def images(nonnegative=False, size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.rand if nonnegative else torch.randn
    return x(3, 3, size, size, dtype=torch.float64, generator=g)


def ours(reg, net, x, method):
    return extagg.saliency(net, x, method, targets=TARGETS, registry=reg)[method][:, 0]


@pytest.mark.parametrize("peer,rule", [("GuidedBackprop", "guided"), ("Deconvolution", "deconvnet")])
def test_captum_guided_backprop_and_deconvolution(reg, peer, rule):
    captum_attr = pytest.importorskip("captum.attr")
    net, x = pooled_cnn(), images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(captum_attr, peer)(net).attribute(x.clone(), target=TARGETS)
    torch.testing.assert_close(ours(reg, net, x, f"{rule}:bias+sum"), theirs.sum(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_captum_lrp(reg, bias, rule):
    """Captum's EpsilonRule agrees with biases too; its Alpha1_Beta0_Rule keeps the bias in z (ours, Montavon
    et al.'s z+, does not), so the two agree on bias-free nets only, with nonnegative inputs (Captum clamps
    weights, not inputs)."""
    pytest.importorskip("captum.attr")
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    net, x = mlp(bias), images(nonnegative=True, size=2)
    for m in net:
        if isinstance(m, nn.Linear):
            m.rule = EpsilonRule(epsilon=1e-3) if rule == "epsilon" else Alpha1_Beta0_Rule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LRP(net).attribute(x.reshape(3, -1).clone(), target=TARGETS).reshape(x.shape).sum(1)
    method = "lrp-epsilon(eps=0.001):scaling+sum" if rule == "epsilon" else "lrp-zplus:scaling+sum"
    mine = ours(reg, FlatInput(net), x, method)
    if rule == "zplus" and bias:
        assert (mine - theirs).abs().max() > 1e-2 * theirs.abs().max()
    else:
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_zennit_lrp(reg, bias, rule):
    """Zennit's Epsilon and ZPlus with Pass at ReLU, started from one-hot * output. Its ZPlus keeps the
    positive part of the bias in the positive stream, so it agrees with ours on bias-free nets only; inputs may
    be negative (both pair negative inputs with negative weights)."""
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass, ZPlus

    net, x = strided_cnn(bias), images()
    chosen = Epsilon(epsilon=1e-3) if rule == "epsilon" else ZPlus(stabilizer=1e-30)
    composite = LayerMapComposite(layer_map=[(nn.ReLU, Pass()), (nn.Conv2d, chosen), (nn.Linear, chosen)])
    with Gradient(model=net, composite=composite) as attributor:
        _, theirs = attributor(x.clone(), lambda out: F.one_hot(TARGETS, 3).to(out.dtype) * out)
    method = "lrp-epsilon(eps=0.001):scaling+sum" if rule == "epsilon" else "lrp-zplus:scaling+sum"
    mine = ours(reg, net, x, method)
    if rule == "zplus" and bias:
        assert (mine - theirs.sum(1)).abs().max() > 1e-2 * theirs.abs().max()
    else:
        torch.testing.assert_close(mine, theirs.sum(1), rtol=1e-6, atol=1e-9)


def test_zennit_epsilon_leaves_pooling_unstabilised(reg):
    """Where they differ: ours (like Captum) applies the epsilon rule to pooling layers, Zennit's Epsilon is only
    mapped to Conv/Linear here, so with a large eps the maps of a pooled CNN differ."""
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass

    net, x = pooled_cnn(bias=False), images()
    composite = LayerMapComposite(layer_map=[(nn.ReLU, Pass()), (nn.Conv2d, Epsilon(1.0)), (nn.Linear, Epsilon(1.0))])
    with Gradient(model=net, composite=composite) as attributor:
        _, theirs = attributor(x.clone(), lambda out: F.one_hot(TARGETS, 3).to(out.dtype) * out)
    mine = ours(reg, net, x, "lrp-epsilon(eps=1.0):scaling+sum")
    assert (mine - theirs.sum(1)).abs().max() > 1e-2 * theirs.abs().max()
