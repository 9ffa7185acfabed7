"""Every builtin method equals its definition; the paper's identities hold (and fail where they should not)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import extagg
from extagg.space import spellings
from tests import oracle
from tests.strategies import NetSpec, ConvSpec, net_specs


def _layers_of(net, kinds):
    return [i for i, m in enumerate(net) if isinstance(m, kinds)]


@given(spec=net_specs(), data=st.data())
def test_every_builtin_composition_equals_its_materialised_definition(registry, spec, data):
    """Closed forms (and the dense path) equal the contribution materialised by an outer product, then reduced."""
    net, x = spec.build(), spec.images()
    convs = _layers_of(net, torch.nn.Conv2d)
    bns = _layers_of(net, torch.nn.BatchNorm2d)
    relus = _layers_of(net, torch.nn.ReLU)
    targets = torch.tensor([[0, 1], [1, 0]])
    for extractor in sorted(registry.extractors):
        spec_ = registry.extractors[extractor]
        if spec_.origin.distribution != "extagg":
            continue
        pool = {"conv": convs, "bn-scale": bns, "bn-bias": bns, "bias-value": convs + bns,
                "linear": []}.get(extractor, relus + convs)
        if not pool:
            continue
        index = data.draw(st.sampled_from(pool), label=f"layer for {extractor}")
        if any(p.name == "k" for p in spec_.params):
            head = f"{extractor}(k={data.draw(st.sampled_from([1, 3, 5]))})"
        else:  # every choice of its parameters (pooled-scaling(g=relu,pool=alpha), ...)
            head = data.draw(st.sampled_from(spellings(spec_)), label=f"{extractor} variant")
        pre = data.draw(st.lists(st.sampled_from(["relu", "abs", "neg"]), max_size=2), label="pre")
        agg = data.draw(st.sampled_from(["sum", "max", "min", "norm"]), label="agg")
        post = data.draw(st.lists(st.sampled_from(["relu", "abs", "neg"]), max_size=1), label="post")
        method = registry.parse("+".join([head, *pre, agg, *post]))
        got = extagg.saliency(net, x, method, layers=str(index), targets=targets, registry=registry)[method, str(index)]
        want = oracle.method_map(method, net, x, index, targets)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{method} at layer {index}")


@pytest.mark.parametrize("method, other", [("conv3x3+relu+sum", "conv3x3+sum"), ("conv1x1+max", "conv1x1+min"),
                                           ("scaling+abs+norm", "scaling+norm+neg"), ("dwconv(k=3)+sum", "dwconv(k=5)+sum")])
def test_the_oracle_comparison_fails_for_a_neighbouring_composition(registry, tiny_net, images, method, other):
    """Counter-case of the test above: extagg's map of a composition against the oracle of a composition one
    component away, or of the same composition for other targets, is refused by the same comparison."""
    targets = torch.tensor([[0, 1], [1, 0]])
    m = registry.parse(method)
    got = extagg.saliency(tiny_net, images, m, layers="2", targets=targets, registry=registry)[m, "2"]
    torch.testing.assert_close(got, oracle.method_map(m, tiny_net, images, 2, targets), rtol=1e-9, atol=1e-12)
    for wrong in (oracle.method_map(registry.parse(other), tiny_net, images, 2, targets),
                  oracle.method_map(m, tiny_net, images, 2, targets.flip(1))):
        assert wrong.shape == got.shape
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got, wrong, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["normgrad", "selective-normgrad", "linear-approx", "gradient", "gradient-sum",
                                    "normgrad-conv", "gradcam", "conv3x3+norm", "dwconv+relu+norm", "conv+max"])
def test_named_and_builtin_methods_match_definition_on_fixed_net(tiny_net, images, method):
    reg = extagg.default_registry()
    m = reg.parse(method)
    index = 3 if m.extractor.name == "conv" else 2  # layer 3 is a stride-2 conv; layer 2 a ReLU(inplace=True)
    targets = torch.tensor([[1], [3]])
    got = extagg.saliency(tiny_net, images, method, layers=str(index), targets=targets)[method, str(index)]
    torch.testing.assert_close(got, oracle.method_map(m, tiny_net, images, index, targets), rtol=1e-9, atol=1e-12)
    # counter-case: the definition for the other image's target is refused
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, oracle.method_map(m, tiny_net, images, index, targets.flip(0)), rtol=1e-9,
                                   atol=1e-12)


def test_closed_forms_equal_generic_chunked_path(registry, tiny_net, images):
    """The closed forms and the generic materialising path agree on the whole design space."""
    ms = extagg.methods()
    fast = extagg.saliency(tiny_net, images, ms, layers=["2", "3"], targets=torch.tensor([[0, 2], [1, 3]]),
                           mismatched="skip")
    slow = extagg.saliency(tiny_net, images, ms, layers=["2", "3"], targets=torch.tensor([[0, 2], [1, 3]]),
                           mismatched="skip", closed_forms=False)
    assert len(fast) == len(slow) > 300
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-9, atol=1e-12, msg=str(key))


def test_closed_forms_on_a_perturbed_model_differ_from_the_generic_path(tiny_net, images):
    """Counter-case of the test above: the closed forms on the model with one weight of its first conv changed
    give other maps than the generic path on the model itself, for every map that is not constant."""
    import copy

    perturbed = copy.deepcopy(tiny_net)
    with torch.no_grad():
        perturbed[0].weight[0, 0, 1, 1] += 0.5
    ms = extagg.methods()
    targets = torch.tensor([[0, 2], [1, 3]])
    fast = extagg.saliency(perturbed, images, ms, layers=["2", "3"], targets=targets, mismatched="skip")
    slow = extagg.saliency(tiny_net, images, ms, layers=["2", "3"], targets=targets, mismatched="skip",
                           closed_forms=False)
    varying = [key for key in slow if slow[key].amax((-2, -1)).ne(slow[key].amin((-2, -1))).all()]
    assert len(varying) > 300
    for key in varying:
        assert not torch.allclose(fast[key], slow[key], rtol=1e-9, atol=1e-12), key


@given(spec=net_specs(head="gap"))
def test_gradcam_equals_scaling_sum_relu_when_layer_feeds_global_average_pooling(spec):
    net, x = spec.build(), spec.images()
    last = str(len(net) - 4)  # the last ReLU, followed by GAP, Flatten, Linear
    maps = extagg.saliency(net, x, ["gradcam", "scaling+sum+relu"], layers=last, targets=0)
    assert torch.equal(maps["gradcam", last], maps["scaling+sum+relu", last]) or torch.allclose(
        maps["gradcam", last], maps["scaling+sum+relu", last], rtol=1e-12, atol=1e-15)


def test_gradcam_differs_from_scaling_sum_relu_when_gradient_varies_in_space():
    spec = NetSpec((ConvSpec(3, 4, 3, 1, 1, 1, 1), ConvSpec(4, 4, 3, 1, 1, 1, 1)), False, 8, 3, 7, "flatten")
    net, x = spec.build(), spec.images()
    maps = extagg.saliency(net, x, ["gradcam", "scaling+sum+relu"], layers="1", targets=0)
    assert (maps["gradcam", "1"] - maps["scaling+sum+relu", "1"]).abs().max() > 1e-3


@given(spec=net_specs())
def test_gradient_at_input_is_max_abs_partial_derivative(spec):
    net, x = spec.build(), spec.images()
    leaf = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(net(leaf)[:, 1].sum(), leaf)[0]
    got = extagg.saliency(net, x, "gradient", layers="input", targets=1)["gradient", "input"]
    torch.testing.assert_close(got[:, 0], grad.abs().amax(1), rtol=1e-12, atol=0)
    # counter-case: the same reduction of another target's gradient is refused (unless the two coincide)
    other = torch.autograd.grad(net(leaf)[:, 0].sum(), leaf)[0].abs().amax(1)
    if not torch.allclose(other, grad.abs().amax(1), rtol=1e-6, atol=1e-9):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got[:, 0], other, rtol=1e-12, atol=0)


@given(spec=net_specs(head="gap"), target=st.integers(0, 1))
def test_linear_approx_sums_to_logit_minus_bias_before_gap(spec, target):
    net, x = spec.build(), spec.images()
    last = str(len(net) - 4)
    m = extagg.saliency(net, x, "linear-approx", layers=last, targets=target)["linear-approx", last]
    with torch.no_grad():
        logit = net(x)[:, target]
    torch.testing.assert_close(m.sum((1, 2, 3)), logit - net[-1].bias[target], rtol=1e-10, atol=1e-12)


def test_linear_approx_sum_is_not_logit_minus_bias_where_biases_intervene():
    """The same check at the input of a net with conv biases fails: the conv biases carry part of the logit."""
    spec = NetSpec((ConvSpec(3, 4, 3, 1, 1, 1, 1),), False, 6, 3, 3, "gap")
    net, x = spec.build(), spec.images()
    with torch.no_grad():
        net[0].bias.fill_(0.5)
        logit = net(x)[:, 0]
    m = extagg.saliency(net, x, "linear-approx", layers="input", targets=0)["linear-approx", "input"]
    assert (m.sum((1, 2, 3)) - (logit - net[-1].bias[0])).abs().max() > 1e-3


@pytest.mark.parametrize("kernel,stride,groups,size", [(3, 2, 1, 10), (5, 2, 4, 10), (3, 1, 4, 7)])
def test_conv_extractor_on_tf_same_padding_conv_sums_to_the_weight_gradient(kernel, stride, groups, size):
    """EfficientNet's Conv2dStaticSamePadding pads asymmetrically in a submodule; ``conv`` must read that padding.

    Independent check: the conv contribution summed over locations, entry by entry, is autograd's dS/dW."""
    utils = pytest.importorskip("efficientnet_lite_pytorch.utils")
    torch.manual_seed(kernel + groups)
    conv = utils.Conv2dStaticSamePadding(4, 8, kernel, stride=stride, image_size=size, groups=groups, bias=False)
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 3)).double().eval()
    x = torch.randn(1, 4, size, size, dtype=torch.float64)
    assert any(conv.static_padding.padding)
    weight_grad = torch.autograd.grad(net(x)[0, 2], conv.weight)[0]
    from extagg.capture import LayerCapture
    from extagg_builtins.extractors import real_conv

    y = conv(x).detach().requires_grad_(True)
    g = torch.autograd.grad(net[1:](y)[0, 2], y)[0]
    c = real_conv(LayerCapture("0", conv, output=y.detach(), input=x, grad=g[:, None]))
    per_entry = c.dense().values.sum((3, 4))[0, 0]  # sum over locations, entry by entry
    torch.testing.assert_close(per_entry.reshape(weight_grad.shape), weight_grad)
    # and the engine's closed form and generic path agree on this layer
    fast = extagg.saliency(net, x, "conv+norm", layers="0", targets=2)["conv+norm", "0"]
    slow = extagg.saliency(net, x, "conv+norm", layers="0", targets=2, closed_forms=False)["conv+norm", "0"]
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast[0, 0], c.dense().values.pow(2).sum(2).sqrt()[0, 0])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("padding,kernel,dilation", [("same", 4, 1), ("same", 3, 2), ("valid", 3, 1)])
def test_conv_extractor_with_string_padding_equals_weight_gradient(padding, kernel, dilation):
    from extagg.capture import LayerCapture
    from extagg_builtins.extractors import real_conv

    torch.manual_seed(kernel)
    conv = torch.nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation).double()
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2)).double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    y = conv(x)
    head(y)  # materialise the lazy layer
    weight_grad = torch.autograd.grad(head(conv(x))[0, 1], conv.weight)[0]
    leaf = y.detach().requires_grad_(True)
    g = torch.autograd.grad(head(leaf)[0, 1], leaf)[0]
    c = real_conv(LayerCapture("c", conv, output=leaf.detach(), input=x, grad=g[:, None]))
    torch.testing.assert_close(c.dense().values.sum((3, 4))[0, 0].reshape(weight_grad.shape), weight_grad)
    # counter-case: the contribution built from a shifted input is not the weight gradient
    shifted = real_conv(LayerCapture("c", conv, output=leaf.detach(), input=x.roll(1, -1), grad=g[:, None]))
    assert not torch.allclose(shifted.dense().values.sum((3, 4))[0, 0].reshape(weight_grad.shape), weight_grad)
