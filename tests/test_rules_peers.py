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
    # counter-case: our plain gradient (no rule) is refused by the same comparison
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours(reg, net, x, "bias+sum"), theirs.sum(1), rtol=1e-10, atol=1e-12)


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


# ----------------------------------------------------------------------------- Zennit: ReLU rules and full composites
def zennit_attribution(net, x, composite, start, inner=None):
    """Zennit's input attribution (its gradient, or its relevance under an LRP composite) for ``start``, and the
    same quantity at the output of ``net[inner]``, read with a tensor hook installed before Zennit's own hooks."""
    from zennit.attribution import Gradient

    seen = {}
    handle = None

    def read_gradient(module, args, out):
        out.register_hook(lambda g: seen.setdefault("g", g))

    if inner is not None:
        handle = net[int(inner)].register_forward_hook(read_gradient)
    try:
        with Gradient(model=net, composite=composite) as attributor:
            _, at_input = attributor(x.clone(), start)
    finally:
        if handle is not None:
            handle.remove()
    return at_input, seen.get("g")


def one_hot(out):
    return F.one_hot(TARGETS, out.shape[1]).to(out.dtype)


def one_hot_logit(out):
    return one_hot(out) * out


def ours_at(reg, net, x, method, layer):
    return extagg.saliency(net, x, method, layers=layer, targets=TARGETS, registry=reg)[method, layer][:, 0]


def relative_gap(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


INNER = "3"
"""The max-pool after the first activation in rules_reference.model (conv, BN, act, maxpool, ...): no Zennit rule
is mapped to it in the composites below, so a tensor hook on its output reads the signal arriving there."""


@pytest.mark.parametrize("relu6", [False, True])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_zennit_guided_backprop_and_deconvnet(reg, rule, relu6):
    """Zennit's GuidedBackprop / DeconvNet composites: the same rule as ours at every ReLU, at the input and at an
    inner layer. Zennit maps them to ``nn.ReLU`` only; mapping its ReLU hook to ``nn.ReLU6`` as well gives our
    ReLU6 rule. Fails against the plain gradient, and (ReLU6 net) against Zennit's default composite."""
    pytest.importorskip("zennit")
    import rules_reference as ref
    from zennit.composites import DeconvNet, GuidedBackprop
    from zennit.rules import ReLUDeconvNet, ReLUGuidedBackprop

    net, x = ref.model(bias=True, relu6=relu6, scale=3.0), images()
    kind, hook = (GuidedBackprop, ReLUGuidedBackprop) if rule == "guided" else (DeconvNet, ReLUDeconvNet)
    theirs, theirs_inner = zennit_attribution(net, x, kind(layer_map=[(nn.ReLU6, hook())]), one_hot, INNER)
    mine, mine_inner = ours(reg, net, x, f"{rule}:bias+sum"), ours_at(reg, net, x, f"{rule}:bias+sum", INNER)
    torch.testing.assert_close(mine, theirs.sum(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine_inner, theirs_inner.sum(1), rtol=1e-10, atol=1e-12)
    plain, _ = zennit_attribution(net, x, None, one_hot)
    assert relative_gap(mine, plain.sum(1)) > 1e-2
    if relu6:   # Zennit's own composite leaves ReLU6 with its ordinary gradient
        default, _ = zennit_attribution(net, x, kind(), one_hot)
        assert relative_gap(mine, default.sum(1)) > 1e-2


def positive_bn_scale(net, sign=1.0):
    """BatchNorm with every scale gamma / sqrt(var + eps) positive (``sign=-1``: every one negative), and
    ``eps = 0``: Zennit's canonizer leaves the merged BatchNorm computing ``x / sqrt(1 + eps)``, not the identity,
    which changes its forward pass (and its maps) by about ``eps / 2`` relative per BatchNorm."""
    net[1].eps = 0.0
    with torch.no_grad():
        net[1].weight.abs_().mul_(sign)
    return net


@pytest.mark.parametrize("relu6", [False, True])
def test_zennit_excitation_backprop(reg, relu6):
    """Zennit's ExcitationBackprop composite (ZPlus at every Conv/Linear, the first layer included; Norm at
    average pooling) with its BatchNorm canonizer and ``zero_params=["bias"]`` is our ``lrp-zplus`` on a
    conv-BN-ReLU CNN whose BatchNorm scales are positive, at the input and at an inner layer. (Merging a BN with
    scale s > 0 into the conv scales W+ and z+ by s, which cancels; our z+ passes relevance through BN.) On the
    ReLU6 net Zennit's ``Pass`` must be mapped to ReLU6, as our rule passes relevance through it."""
    pytest.importorskip("zennit")
    import rules_reference as ref
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import ExcitationBackprop
    from zennit.rules import Pass

    net, x = positive_bn_scale(ref.model(bias=True, relu6=relu6, scale=3.0)), images()
    extra = [(nn.ReLU6, Pass())] if relu6 else []

    def composite(**kw):
        return ExcitationBackprop(stabilizer=1e-30, layer_map=list(extra), **kw)

    theirs, theirs_inner = zennit_attribution(
        net, x, composite(zero_params=["bias"], canonizers=[SequentialMergeBatchNorm()]), one_hot_logit, INNER)
    method = "excitation-backprop"
    mine, mine_inner = ours(reg, net, x, method), ours_at(reg, net, x, method, INNER)
    torch.testing.assert_close(mine, theirs.sum(1), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(mine_inner, theirs_inner.sum(1), rtol=1e-8, atol=1e-10)
    plain, _ = zennit_attribution(net, x, None, one_hot_logit)
    assert relative_gap(mine, (x * plain).sum(1)) > 1e-2   # gradient x input is not z+


def test_zennit_excitation_backprop_where_it_differs(reg):
    """By how much Zennit's usual settings differ from ours (each > 1 % of the map's largest value): its default
    keeps the positive bias in z+; without the canonizer BatchNorm takes the plain gradient (R_x = s R_y, ours
    R_x = R_y); a negative BatchNorm scale merged into the conv swaps W+ and W-; an unmapped ReLU6 stops relevance
    where it saturates."""
    pytest.importorskip("zennit")
    import rules_reference as ref
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import ExcitationBackprop

    x = images()
    net = positive_bn_scale(ref.model(bias=True, relu6=False, scale=3.0))
    mine = ours(reg, net, x, "excitation-backprop")
    gaps = {}
    for name, kw in [("bias kept in z+", {"canonizers": [SequentialMergeBatchNorm()]}),
                     ("BatchNorm not merged", {"zero_params": ["bias"]})]:
        theirs, _ = zennit_attribution(net, x, ExcitationBackprop(stabilizer=1e-30, **kw), one_hot_logit)
        gaps[name] = relative_gap(mine, theirs.sum(1))
    merged = {"zero_params": ["bias"], "canonizers": [SequentialMergeBatchNorm()]}
    flipped = positive_bn_scale(ref.model(bias=True, relu6=False, scale=3.0), sign=-1.0)
    theirs, _ = zennit_attribution(flipped, x, ExcitationBackprop(stabilizer=1e-30, **merged), one_hot_logit)
    gaps["negative BatchNorm scale"] = relative_gap(ours(reg, flipped, x, "excitation-backprop"), theirs.sum(1))
    relu6 = positive_bn_scale(ref.model(bias=True, relu6=True, scale=3.0))
    theirs, _ = zennit_attribution(relu6, x, ExcitationBackprop(stabilizer=1e-30, **merged), one_hot_logit)
    gaps["ReLU6 unmapped"] = relative_gap(ours(reg, relu6, x, "excitation-backprop"), theirs.sum(1))
    assert all(gap > 1e-2 for gap in gaps.values()), gaps


@pytest.mark.parametrize("relu6", [False, True])
def test_zennit_epsilon_on_every_layer(reg, relu6):
    """Zennit's Epsilon mapped to every layer ours applies it to (Conv, Linear, BatchNorm, max and average
    pooling), Pass at ReLU/ReLU6, no canonizer: our ``lrp-epsilon`` with the same, large eps, biases and BN shifts
    included, at the input and at an inner layer. Fails with a mismatched eps and with Zennit's BN canonizer
    (which applies epsilon once to the merged conv+BN instead of twice)."""
    pytest.importorskip("zennit")
    import rules_reference as ref
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass

    net, x = ref.model(bias=True, relu6=relu6, scale=3.0), images()

    def composite(eps, **kw):
        return LayerMapComposite(layer_map=[((nn.ReLU, nn.ReLU6), Pass()),
                                            ((nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d),
                                             Epsilon(epsilon=eps))], **kw)

    method = "lrp-epsilon(eps=0.5):scaling+sum"
    mine = ours(reg, net, x, method)
    theirs, _ = zennit_attribution(net, x, composite(0.5), one_hot_logit)
    torch.testing.assert_close(mine, theirs.sum(1), rtol=1e-9, atol=1e-11)
    # inner layer: the activation's output (Pass there, so the hook reads the relevance arriving at it)
    mine_inner = ours_at(reg, net, x, method, "2")
    _, theirs_inner = zennit_attribution(net, x, composite(0.5), one_hot_logit, inner=2)
    torch.testing.assert_close(mine_inner, theirs_inner.sum(1), rtol=1e-9, atol=1e-11)
    other, _ = zennit_attribution(net, x, composite(0.05), one_hot_logit)
    assert relative_gap(mine, other.sum(1)) > 1e-2
    merged, _ = zennit_attribution(net, x, composite(0.5, canonizers=[SequentialMergeBatchNorm()]), one_hot_logit)
    assert relative_gap(mine, merged.sum(1)) > 1e-2
