"""Propagation rules as pass modifiers: each rule against its published formula computed directly
(tests/rules_reference.py), the laws that relate them to the ordinary gradient, and their hygiene (forward
unchanged, model untouched, refusals that name the layer)."""
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import extagg
from model_state import assert_unchanged, snapshot
import rules_reference as ref
import rules_support
from extagg_builtins.rule_bodies import (deconvnet_rule, guided_rule, lrp_epsilon_rule, lrp_zplus_rule, rank_of_percentile,
                                           rectgrad_rule)
from extagg.propagation import UnsupportedLayerError, rules_installed

RULES = ["guided", "deconvnet", "rectgrad", "rectgrad(q=90)", "lrp-epsilon", "lrp-epsilon(eps=0.1)", "lrp-zplus"]
RULE_OBJECTS = [guided_rule, deconvnet_rule, rectgrad_rule, lrp_epsilon_rule, lrp_zplus_rule]


@pytest.fixture(scope="module")
def reg():
    return rules_support.registry()


def images(n=3, seed=1, size=8):
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def one_map(reg, net, x, method, targets, layer="input"):
    return extagg.saliency(net, x, method, layers=layer, targets=targets, registry=reg)[method, layer][:, 0]


# ----------------------------------------------------------------------------- the published formulas
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu6", [True, False])
@pytest.mark.parametrize("rule,formula", [("guided", ref.guided), ("deconvnet", ref.deconvnet),
                                          ("rectgrad", ref.rectgrad(98)), ("rectgrad(q=80)", ref.rectgrad(80))])
def test_relu_rules_match_their_formula(reg, bias, relu6, rule, formula):
    net, x, t = ref.model(bias=bias, relu6=relu6, scale=3.0), images(), torch.tensor([0, 1, 2])
    expected = ref.relu_rule_gradient(net, x, t, formula)
    torch.testing.assert_close(one_map(reg, net, x, f"{rule}:bias+sum", t), expected.sum(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(one_map(reg, net, x, f"{rule}:scaling+sum", t), (x * expected).sum(1),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu6", [True, False])
@pytest.mark.parametrize("rule,eps", [("epsilon", 1e-6), ("epsilon", 0.5), ("zplus", 0.0)])
def test_lrp_rules_match_the_relevance_formula(reg, bias, relu6, rule, eps):
    """x * g at the input (and at an inner layer) under the rule is the LRP relevance, R_0 = one-hot * logit."""
    net, x, t = ref.model(bias=bias, relu6=relu6, scale=3.0), images(), torch.tensor([0, 1, 2])
    method = f"lrp-epsilon(eps={eps}):scaling+sum" if rule == "epsilon" else "lrp-zplus:scaling+sum"
    expected = ref.lrp(net, x, t, rule, eps)
    torch.testing.assert_close(one_map(reg, net, x, method, t), expected.sum(1), rtol=1e-9, atol=1e-12)
    inner = len(net) - 6   # the output of the first ReLU/ReLU6
    expected_inner = ref.lrp(net, x, t, rule, eps, upto=inner)
    torch.testing.assert_close(one_map(reg, net, x, method, t, layer=str(inner)), expected_inner.sum(1),
                               rtol=1e-9, atol=1e-12)


def test_the_formula_tests_can_fail(reg):
    """Each rule gives a different map on the same model: a test above passing for one rule is not trivial."""
    net, x, t = ref.model(scale=3.0), images(), torch.tensor([0, 1, 2])
    maps = [one_map(reg, net, x, f"{r}:scaling+sum", t) for r in ["guided", "deconvnet", "rectgrad", "lrp-zplus"]]
    maps.append(one_map(reg, net, x, "scaling+sum", t))
    for i in range(len(maps)):
        for j in range(i):
            assert not torch.allclose(maps[i], maps[j], atol=1e-6)


def test_rectgrad_threshold_is_the_nearest_rank_percentile():
    for size in (1, 2, 5, 50, 101):
        values = torch.randperm(size).double()
        for q in (0.0, 12.5, 50.0, 98.0, 100.0):
            k = rank_of_percentile(q, size)
            assert values.sort().values[k - 1] == torch.quantile(values, q / 100, interpolation="nearest")


# ----------------------------------------------------------------------------- laws
@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), bias=st.booleans(), eps=st.sampled_from([1e-9, 1e-7]))
def test_lrp_epsilon_with_small_eps_is_gradient_times_input_on_relu_nets(reg, seed, bias, eps):
    """Ancona et al. 2018: on ReLU networks LRP-epsilon -> gradient x input as eps -> 0, biases or not (in the
    gradient x input form both are x * J^T g; the bias only breaks *conservation*, tested below)."""
    net, x, t = ref.model(bias=bias, relu6=False, seed=seed), images(seed=seed), torch.tensor([0, 1, 2])
    lrp = one_map(reg, net, x, f"lrp-epsilon(eps={eps}):scaling+sum", t)
    gxi = one_map(reg, net, x, "scaling+sum", t)
    torch.testing.assert_close(lrp, gxi, rtol=1e-4, atol=1e-4 * float(gxi.abs().max()))


@pytest.mark.parametrize("breaker", ["large-eps", "relu6-saturates"])
def test_lrp_epsilon_differs_from_gradient_times_input_where_the_law_does_not_hold(reg, breaker):
    net, x, t = ref.model(relu6=breaker == "relu6-saturates", scale=3.0), images(), torch.tensor([0, 1, 2])
    eps = 1.0 if breaker == "large-eps" else 1e-9
    relu6 = [m for m in net if isinstance(m, nn.ReLU6)]
    if relu6:   # the law needs ReLU; ReLU6 above 6 is flat, but relevance passes through it
        assert (ref.run(net, x)[1][2] > 6).any()
    lrp = one_map(reg, net, x, f"lrp-epsilon(eps={eps}):scaling+sum", t)
    gxi = one_map(reg, net, x, "scaling+sum", t)
    assert (lrp - gxi).abs().max() > 1e-2 * gxi.abs().max()


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16))
def test_lrp_conserves_relevance_on_bias_free_nets_and_epsilon_not_with_biases(reg, seed):
    """sum_i R_i = logit on bias-free ReLU nets (LRP-epsilon with tiny eps, and z+); with biases LRP-epsilon
    loses relevance to them (z+ leaves biases out of its denominators, so it is not tested there)."""
    x, t = images(seed=seed), torch.tensor([0, 1, 2])
    for bias in (False, True):
        net = ref.model(bias=bias, relu6=False, seed=seed)
        logit = net(x).gather(1, t[:, None])[:, 0].detach()
        for method in ("lrp-epsilon(eps=1e-12):scaling+sum", "lrp-zplus:scaling+sum"):
            total = one_map(reg, net, x, method, t).sum((-2, -1))
            if not bias:
                torch.testing.assert_close(total, logit, rtol=1e-6, atol=1e-9)
            elif method.startswith("lrp-epsilon"):
                assert (total - logit).abs().max() > 1e-3 * logit.abs().max()


@pytest.mark.parametrize("rule", ["guided", "deconvnet", "rectgrad(q=0)"])
def test_relu_rules_are_the_gradient_on_a_net_without_relu(reg, rule):
    """No ReLU, nothing to change: guided, deconvnet (and RectGrad with nothing to cut) give the gradient."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Conv2d(4, 2, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x, t = images(), torch.tensor([0, 1, 2])
    torch.testing.assert_close(one_map(reg, net, x, f"{rule}:bias+sum", t), one_map(reg, net, x, "bias+sum", t))
    with_relu = ref.model(relu6=False)
    if rule != "rectgrad(q=0)":   # ... and show that with ReLUs they are not
        assert not torch.allclose(one_map(reg, with_relu, x, f"{rule}:bias+sum", t),
                                  one_map(reg, with_relu, x, "bias+sum", t))


# ----------------------------------------------------------------------------- the forward pass is untouched
class Reuse(nn.Module):
    """One ReLU6 module called three times, an in-place ReLU, a residual addition (as in EfficientNet/ResNet)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.act, self.inplace = nn.ReLU6(), nn.ReLU(inplace=True)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        h = self.act(self.bn(self.conv1(x)))
        h = h + self.act(self.conv2(h))
        return self.head(self.inplace(self.act(self.conv3(h) * 4)))


def reuse_model():
    torch.manual_seed(0)
    net = Reuse().double().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("make", RULE_OBJECTS)
def test_rules_leave_the_forward_output_bit_for_bit(make):
    net, x = reuse_model(), images() * 5
    expected = net(x)
    with rules_installed(net, make()):
        with torch.enable_grad():
            inside = net(x.requires_grad_(True))
    assert torch.equal(inside, expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("make", RULE_OBJECTS)
def test_a_probe_hooked_before_the_rule_still_receives_the_rule_gradient(make):
    """The rule's hooks go first, so a layer probe registered earlier (or later) sees the same gradient."""
    net, x = reuse_model(), images()
    grads = []
    for probe_first in (True, False):
        probe = []

        def hook(module, args, output):
            probe.append(torch.zeros_like(output, requires_grad=True))
            return output + probe[-1]

        handle = net.act.register_forward_hook(hook) if probe_first else None
        with rules_installed(net, make()), torch.enable_grad():
            handle = handle or net.act.register_forward_hook(hook)
            out = net(x.clone().requires_grad_(True))
            grads.append(torch.autograd.grad(out[:, 1].sum(), probe[0])[0])
        handle.remove()
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_a_module_called_three_times_gets_the_rule_at_each_call(reg):
    """Guided backprop on the reused ReLU6 (and the in-place ReLU), written out by hand for this model."""
    net, x, t = reuse_model(), images() * 5, torch.tensor([0, 1, 2])
    xg = x.clone().requires_grad_(True)
    act = _GuidedRelu.apply
    h = act(net.bn(net.conv1(xg)), 6.0)
    h = h + act(net.conv2(h), 6.0)
    out = net.head(act(act(net.conv3(h) * 4, 6.0), float("inf")))
    expected = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xg)[0]
    torch.testing.assert_close(one_map(reg, net, x, "guided:bias+sum", t), expected.sum(1))
    assert not torch.allclose(one_map(reg, net, x, "bias+sum", t), expected.sum(1))


class _GuidedRelu(torch.autograd.Function):
    """min(max(z, 0), upper) forward; 1[0 < z < upper] 1[g > 0] g backward."""

    @staticmethod
    def forward(ctx, z, upper):
        ctx.save_for_backward(z)
        ctx.upper = upper
        return z.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        z, = ctx.saved_tensors
        return ((z > 0) & (z < ctx.upper) & (g > 0)) * g, None


# ----------------------------------------------------------------------------- the model is left as it was
def user_model():
    net = reuse_model().train()
    net.conv1.weight.requires_grad_(False)
    net.conv2.weight.grad = torch.ones_like(net.conv2.weight)
    net.conv3.register_forward_hook(lambda m, i, o: None)
    return net


@pytest.mark.parametrize("rule", RULES)
def test_model_untouched_after_a_call(reg, rule):
    net, x = user_model(), images()
    before = snapshot(net)
    extagg.saliency(net, x, [f"{rule}:scaling+sum", f"{rule}:conv1x1+norm"], layers=["input", "bn", "act@1"],
                    targets=[0, 1, 2], registry=reg)
    assert_unchanged(before, net)


class Functional(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv, self.fn, self.fc = nn.Conv2d(3, 4, 3), fn, nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.fn(self.conv(x)).mean((-2, -1)))


@pytest.mark.parametrize("rule", ["guided", "deconvnet", "rectgrad", "lrp-epsilon", "lrp-zplus"])
def test_model_untouched_after_an_exception(reg, rule):
    net, x = Functional(torch.sigmoid).double(), images()
    net.conv.register_forward_hook(lambda m, i, o: None)
    before = snapshot(net)
    with pytest.raises(UnsupportedLayerError):
        extagg.saliency(net, x, f"{rule}:scaling+sum", targets=0, registry=reg)
    assert_unchanged(before, net)

    def boom(out):   # fails after the forward pass, inside the rule's block
        raise RuntimeError("objective failed")
    net = user_model()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="objective failed"):
        extagg.saliency(net, x, f"{rule}:scaling+sum", objective=boom, registry=reg)
    assert_unchanged(before, net)


# ----------------------------------------------------------------------------- refusals name the layer
@pytest.mark.parametrize("fn,rules,name", [
    (torch.relu, ["guided", "deconvnet", "rectgrad"], "torch.relu"),
    (F.relu6, RULES, "torch.nn.functional.relu6"),
    (lambda h: h.relu(), ["guided", "deconvnet", "rectgrad"], "Tensor.relu"),
    (F.silu, RULES, "torch.nn.functional.silu"),
    (torch.sigmoid, RULES, "torch.sigmoid"),
])
def test_functional_activations_are_refused_naming_the_layer(reg, fn, rules, name):
    net = Functional(fn).double()
    for rule in rules:
        with pytest.raises(UnsupportedLayerError, match=rf"layer '<Functional>' calls {re.escape(name)} in its forward"):
            extagg.saliency(net, images(), f"{rule}:bias+sum", targets=0, registry=reg)


def test_lrp_accepts_functional_relu_as_relevance_pass_through(reg):
    """For LRP an ordinary ReLU gradient is the pass-through rule, so torch.relu needs no module."""
    net, x = Functional(torch.relu).double(), images()
    with_module = Functional(nn.ReLU()).double()
    with_module.load_state_dict(net.state_dict())
    for rule in ("lrp-epsilon", "lrp-zplus"):
        torch.testing.assert_close(one_map(reg, net, x, f"{rule}:scaling+sum", 1),
                                   one_map(reg, with_module, x, f"{rule}:scaling+sum", 1))
        # counter-case: the module's map for another target is refused
        with pytest.raises(AssertionError):
            torch.testing.assert_close(one_map(reg, net, x, f"{rule}:scaling+sum", 1),
                                       one_map(reg, with_module, x, f"{rule}:scaling+sum", 0))


@pytest.mark.parametrize("module,rules", [
    (nn.SiLU(), RULES), (nn.GELU(), RULES), (nn.LeakyReLU(), RULES),
    (nn.Upsample(scale_factor=2), ["lrp-epsilon", "lrp-zplus"]),
    (nn.LayerNorm([4, 6, 6]), ["lrp-epsilon", "lrp-zplus"]),
])
def test_unsupported_modules_are_refused_naming_the_layer(reg, module, rules):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), module, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    for rule in rules:
        with pytest.raises(UnsupportedLayerError, match=rf"layer '1' \({type(module).__name__}\)"):
            extagg.saliency(net, images(), f"{rule}:scaling+sum", targets=0, registry=reg)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("text,problem", [("rectgrad(q=101):bias+sum", "percentile in"),
                                          ("lrp-epsilon(eps=-1):bias+sum", ">= 0"),
                                          ("lrp-epsilon(epsilon=1):bias+sum", "did you mean 'eps'"),
                                          ("guided-backprop:bias+sum", "unknown modifier 'guided-backprop'")])
def test_bad_rule_strings_say_what_is_accepted(reg, text, problem):
    with pytest.raises(extagg.ExtaggError, match=problem):
        reg.parse(text)


# ----------------------------------------------------------------------------- composition
def test_rule_names_and_method_names_are_distinct_and_canonical(reg):
    assert {"guided", "deconvnet", "rectgrad", "lrp-epsilon", "lrp-zplus"} <= set(reg.modifiers)
    assert reg.canonical("guided-backprop") == "guided:bias+abs+max"
    assert reg.canonical("deconvolution") == "deconvnet:bias+abs+max"
    assert reg.canonical("rectified-gradient") == "rectgrad:scaling+sum"
    assert reg.canonical("excitation-backprop") == "lrp-zplus:scaling+sum"
    assert reg.canonical("LRP-Epsilon(eps=1e-6):scaling+sum") == "lrp-epsilon:scaling+sum"
    assert reg.canonical("lrp-epsilon(eps=1e-3):scaling+sum") == "lrp-epsilon(eps=0.001):scaling+sum"
    assert reg.canonical("rectgrad(q=98):scaling+sum") == "rectgrad:scaling+sum"
    assert reg.canonical("rectgrad(q=90):scaling+sum") == "rectgrad(q=90.0):scaling+sum"


def test_methods_sharing_a_rule_share_one_pass(reg):
    net, x, calls = reuse_model(), images(), []
    handle = net.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        extagg.saliency(net, x, ["guided:bias+sum", "guided-backprop", "guided:scaling+norm", "lrp-zplus:scaling+sum",
                                 "excitation-backprop", "scaling+sum"], layers=["input", "conv2"], registry=reg)
    finally:
        handle.remove()
    assert len(calls) == 3


@pytest.mark.parametrize("rule", ["guided", "lrp-epsilon", "lrp-zplus", "rectgrad"])
def test_a_rule_with_every_builtin_extractor_at_several_layers(reg, rule):
    net, x = reuse_model(), images(n=2)
    methods = []
    for name, spec in reg.extractors.items():
        params = ",".join(f"{p.name}=3" for p in spec.params if p.required)
        methods.append(f"{rule}:{name}{f'({params})' if params else ''}+sum")
    layers = ["input", "conv1", "bn", "act@0", "conv3"]
    maps = extagg.saliency(net, x, methods, layers=layers, targets=[[0, 1], [2, 0]], registry=reg, mismatched="skip")
    sizes = {"input": 8, "conv1": 8, "bn": 8, "act@0": 8, "conv3": 8}
    seen = set()
    for (method, layer), m in maps.items():
        assert m.shape == (2, 2, sizes[layer], sizes[layer]) and torch.isfinite(m).all()
        seen.add(method.split(":")[1].split("+")[0].split("(")[0])
    assert seen == set(reg.extractors) - {"linear"}  # an nn.Linear's maps exist at token layers only (test_tokens)


def test_several_targets_in_one_pass_equal_one_target_at_a_time(reg):
    net, x = reuse_model(), images(n=2)
    both = extagg.saliency(net, x, [f"{r}:scaling+sum" for r in RULES], targets=[[0, 2], [1, 0]], registry=reg)
    for r in RULES:
        for k, col in enumerate(([0, 1], [2, 0])):
            alone = extagg.saliency(net, x, f"{r}:scaling+sum", targets=col, registry=reg)
            torch.testing.assert_close(both[f"{r}:scaling+sum"][:, k], alone[f"{r}:scaling+sum"][:, 0])
            # counter-case: the other column's targets give another map
            with pytest.raises(AssertionError):
                torch.testing.assert_close(both[f"{r}:scaling+sum"][:, 1 - k], alone[f"{r}:scaling+sum"][:, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_work(reg, dtype):
    net, x = reuse_model(), images(n=2)
    low = extagg.saliency(net.to(dtype), x.to(dtype), [f"{r}:scaling+sum" for r in RULES], targets=1, registry=reg)
    full = extagg.saliency(reuse_model().float(), x.float(), [f"{r}:scaling+sum" for r in RULES], targets=1,
                           registry=reg)
    for r in ("guided", "deconvnet", "lrp-epsilon", "lrp-zplus"):
        a, b = low[f"{r}:scaling+sum"], full[f"{r}:scaling+sum"]
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95


@pytest.mark.slow
def test_the_embedded_efficientnet_lite0_takes_every_rule(reg):
    """The default model: ReLU6 throughout, convs that pad through a child module, BatchNorm, residual sums."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from extagg import models

    net, pre = models.load_model()
    x = pre(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    before = snapshot(net)
    with torch.no_grad():
        logits = net(x)
    methods = ["guided-backprop", "deconvolution", "rectified-gradient", "excitation-backprop",
               "lrp-epsilon:scaling+sum"]
    maps = extagg.saliency(net, x, methods, layers=["input", "_blocks.3"], targets=1, registry=reg)
    for (method, layer), m in maps.items():
        assert m.shape[:2] == (1, 1) and torch.isfinite(m).all() and m.abs().sum() > 0, (method, layer)
    for make in RULE_OBJECTS:   # the forward pass under every rule is the plain one, bit for bit
        with rules_installed(net, make()), torch.enable_grad():
            assert torch.equal(net(x.clone().requires_grad_(True)), logits)
    assert_unchanged(before, net)
