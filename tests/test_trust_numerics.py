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
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 5 * 5, 3)).double()
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


# ----------------------------------------------------------------------------- multi-pass counts
from extagg import multipass  # noqa: E402
from extagg.errors import InputError  # noqa: E402
from extagg.plugin import Modifier, Samples, hookimpl  # noqa: E402


@pytest.mark.parametrize("method, cap", [
    (f"smooth(n={multipass.MAX_SAMPLES + 1}):gradcam", "MAX_SAMPLES"),
    (f"vargrad(n={10 ** 9}):gradcam", "MAX_SAMPLES"),
    (f"ig(steps={multipass.MAX_SAMPLES + 1}):scaling+sum", "MAX_SAMPLES"),
    (f"smooth(chunk={multipass.MAX_CHUNK + 1}):gradcam", "MAX_CHUNK"),
    (f"ig(chunk={multipass.MAX_CHUNK + 1}):scaling+sum", "MAX_CHUNK"),
])
def test_a_count_above_its_cap_is_refused_naming_the_cap(registry, method, cap):
    """Counts are capped as the parser's own sizes are: refused when the method string is parsed, naming the
    parameter, the accepted range and the cap; the largest accepted values parse."""
    with pytest.raises(InvalidMethodError, match=rf"(n|steps|chunk).*in \d\.\.\d+ .*extagg\.multipass\.{cap}"):
        registry.parse(method)
    registry.parse(f"smooth(chunk={multipass.MAX_CHUNK},n={multipass.MAX_SAMPLES}):gradcam")
    registry.parse(f"ig(steps={multipass.MAX_SAMPLES}):scaling+sum")


class _Recorder:
    """Sample weights that record every read: a plugin's ``Samples.weights``."""

    def __init__(self, count):
        self.count, self.reads = count, []

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if not isinstance(index, slice) and not 0 <= index < self.count:
            raise IndexError(index)
        span = range(*index.indices(self.count)) if isinstance(index, slice) else range(index, index + 1)
        self.reads.append(len(span))
        return tuple(1.0 / self.count for _ in span) if isinstance(index, slice) else 1.0 / self.count


def _registry_with(samples_fn):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_modifiers(register):
            register(Modifier(name="probe", samples=samples_fn, stateless=True))
    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=[Plugin]))


def _small():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).double().eval()
    return net, torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("reduce", ["mean", "grad"])
def test_memory_follows_the_chunk_not_the_count(reduce):
    """Guards the per-chunk reads: with 40 samples in chunks of 3, extagg never asks for more than 3 samples or 3
    weights at once (before, the whole weight sequence was read into one tensor of ``count`` numbers)."""
    made, weights = [], _Recorder(40)

    def samples(images):
        def make(start, stop):
            made.append(stop - start)
            return images.detach().expand(stop - start, *images.shape) * 1.0
        return Samples(count=40, make=make, reduce=reduce, weights=weights, chunk=3)

    net, x = _small()
    extagg.saliency(net, x, "probe:scaling+sum", "1", 0, registry=_registry_with(samples))
    assert max(made) == 3 and sum(made) == 40
    assert weights.reads and max(weights.reads) <= 3 and sum(weights.reads) == 40


def test_a_plugin_count_above_the_cap_is_an_input_error():
    reg = _registry_with(lambda images: Samples(count=multipass.MAX_SAMPLES + 1, make=lambda a, b: None))
    net, x = _small()
    with pytest.raises(InputError, match=rf"probe.*{multipass.MAX_SAMPLES + 1} samples.*MAX_SAMPLES"):
        extagg.saliency(net, x, "probe:scaling+sum", "1", 0, registry=reg)


def _accumulate(reduce, values, weights, chunk):
    acc = multipass._Moments(reduce)
    for start in range(0, len(values), chunk):
        acc.add(values[start:start + chunk], weights[start:start + chunk])
    return acc.result()


@pytest.mark.parametrize("reduce", ["mean", "mean_sq", "var", "grad"])
def test_the_running_sums_are_the_same_bit_for_bit_whatever_the_chunking(reduce):
    """The reductions take the samples one at a time in index order, so any chunking gives the very same
    floating-point operations. Float32 values with widely different magnitudes make the order visible."""
    gen = torch.Generator().manual_seed(0)
    values = (torch.randn(11, 2, 5, generator=gen) * torch.logspace(-4, 4, 11)[:, None, None]).float()
    weights = torch.rand(11, generator=gen, dtype=torch.float64)
    whole = _accumulate(reduce, values, weights, 11)
    for chunk in (1, 2, 3, 4, 10):
        assert torch.equal(_accumulate(reduce, values, weights, chunk), whole), chunk


def test_a_chunk_merged_sum_would_fail_that_test():
    """The counter-case: summing each chunk first and then the chunk sums (what a per-chunk tensordot does)
    depends on the chunking in float32: ((1 + 1) + 1e8) - 1e8 = 0 one at a time, (1 + 1) + (1e8 - 1e8) = 2 in
    chunks of two. The running sum gives 0 either way."""
    values = torch.tensor([1.0, 1.0, 1e8, -1e8], dtype=torch.float32)[:, None]

    def merged(chunk):
        return sum(values[s:s + chunk].sum(0) for s in range(0, 4, chunk))

    assert merged(1).item() == 0 and merged(2).item() == 2
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.equal(_accumulate("grad", values, ones, 1), _accumulate("grad", values, ones, 2))


@pytest.mark.parametrize("modifier", ["smooth(n=5,seed=2)", "vargrad(n=5,seed=2)", "ig(steps=5)"])
def test_chunked_and_unchunked_calls_agree(registry, modifier):
    """End to end, chunk=1 and chunk=5 give the same maps to 1e-12 (relative): the accumulation is identical
    (test above); what may differ is the model itself, run on batches of 2 and 10 images (a batched conv may
    round differently at another batch size)."""
    net, x = _small()
    one, five = (f"{modifier[:-1]},chunk={c}):normgrad" for c in (1, 5))
    maps = extagg.saliency(net, x, [one, five], "1", [0, 2], registry=registry)
    torch.testing.assert_close(maps[one], maps[five], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- LRP-z+ conservation
from torch import nn  # noqa: E402

from extagg_builtins.rule_bodies import lrp_zplus_rule  # noqa: E402
from extagg.propagation import rules_installed  # noqa: E402


class _LiteBlock(nn.Module):
    """An MBConv block as in EfficientNet-Lite: 1x1 expand, BN, ReLU6, 3x3 depthwise, BN, ReLU6, 1x1 project,
    BN, plus the block's input (a residual sum)."""

    def __init__(self, c, e):
        super().__init__()
        self.expand, self.bn0, self.act0 = nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6()
        self.dw, self.bn1 = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e)
        self.act1, self.project, self.bn2 = nn.ReLU6(), nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn2(self.project(self.act1(self.bn1(self.dw(self.act0(self.bn0(self.expand(x)))))))) + x


def _lite_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(), _LiteBlock(8, 32),
                        nn.Conv2d(8, 16, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 5, bias=False)).double().eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():   # BatchNorm statistics as after training: shifts that leave whole channels dead
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.5)
    return net


def _relevance(net, x, target, names):
    """Under LRP-z+: ``{name: (output, R = output * gradient)}`` of the named modules and ``R`` of the input."""
    modules = dict(net.named_modules())
    outs = {}
    x = x.clone().requires_grad_(True)
    with rules_installed(net, lrp_zplus_rule()):
        handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, o)) for n in names]
        try:
            logits = net(x)
            for o in outs.values():
                o.retain_grad()
            logits[:, target].sum().backward()
        finally:
            for h in handles:
                h.remove()
            net.zero_grad(set_to_none=True)
    return logits[:, target].detach(), {n: (o.detach(), (o * o.grad).detach()) for n, o in outs.items()}, \
        (x * x.grad).detach()


def _total(r):
    return r.sum(dim=tuple(range(1, r.ndim)))


def _zplus_drop(conv, x, r_out):
    """The relevance z+ drops at ``conv``: ``R = y g`` of the outputs whose ``z+ = W+ x+ + W- x-`` is 0."""
    w = conv.weight.detach()

    def run(weight, a):
        return nn.functional.conv2d(a, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    zplus = run(w.clamp(min=0), x.clamp(min=0)) + run(w.clamp(max=0), x.clamp(max=0))
    return _total(torch.where(zplus == 0, r_out, 0))


def test_lrp_zplus_conserves_on_a_plain_conv_relu_chain():
    """The control: on bias-free conv-ReLU(-ReLU6 below 6) chains every layer passes on exactly what it gets."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    logit, rel, r_in = _relevance(net, x, 1, ["0", "2"])
    for name in ("0", "2"):
        torch.testing.assert_close(_total(rel[name][1]), logit, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_total(r_in), logit, rtol=1e-10, atol=1e-12)


def test_lrp_zplus_on_a_lite_block_leaks_exactly_at_the_depthwise_conv_and_its_batchnorm():
    """Where the relevance goes on conv-BN-ReLU6 with a depthwise conv and a residual sum (the EfficientNet-Lite
    block; on Lite0 the input keeps 4 % of the logit, see docs/propagation_rules.md). The residual sum, ReLU6,
    the BatchNorms with nonzero inputs and the project conv conserve exactly. Two places leak, each by exactly the
    relevance this test predicts: (1) the BatchNorm after the depthwise conv, at the outputs whose input is
    exactly 0 (a dead 3x3 window: BN's output there is its shift, which pass-through cannot send to a zero
    input); (2) the depthwise conv under z+, at outputs whose window has nonzero inputs only under negative
    weights: z+ = 0 while y < 0, and 0/0 = 0 drops y g (the expand conv too, by 3e-4 here). Measured on two
    images: 6.2 / 7.4 % and 5.2 / 4.5 % of the logit, the input keeping 89 / 88 %. Fails if either prediction
    is wrong or if a conserving module leaked."""
    net = _lite_net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = ["2", "3.expand", "3.bn0", "3.act0", "3.dw", "3.bn1", "3.act1", "3.project", "3.bn2", "3"]
    logit, rel, r_in = _relevance(net, x, 1, names)
    total = {n: _total(rel[n][1]) for n in names}
    torch.testing.assert_close(total["3"], logit, rtol=1e-10, atol=1e-12)          # above the block: nothing lost
    for later, earlier in [("3.bn2", "3.project"), ("3.project", "3.act1"), ("3.act1", "3.bn1"),
                           ("3.dw", "3.act0"), ("3.act0", "3.bn0"), ("3.bn0", "3.expand")]:
        if earlier == "3.act0":   # (2): the depthwise conv's z+ drops y g where z+ = 0
            continue
        torch.testing.assert_close(total[later], total[earlier], rtol=1e-10, atol=1e-12, msg=f"{later}/{earlier}")
    dw_out, r_bn1 = rel["3.dw"][0], rel["3.bn1"][1]
    dead = dw_out == 0
    bn_leak = _total(torch.where(dead, r_bn1, 0))
    torch.testing.assert_close(total["3.bn1"] - total["3.dw"], bn_leak, rtol=1e-10, atol=1e-12)   # (1)
    dw_leak = _zplus_drop(net[3].dw, rel["3.act0"][0], rel["3.dw"][1])
    torch.testing.assert_close(total["3.dw"] - total["3.act0"], dw_leak, rtol=1e-10, atol=1e-12)   # (2)
    # the residual sum splits exactly: the block input gets the skip's share plus what the expand conv passes on
    # (the expand conv's own z+ drop is tiny here, 3e-4 of the logit, and predicted the same way)
    skip = total["3"] - total["3.bn2"]
    expand_leak = _zplus_drop(net[3].expand, rel["2"][0], rel["3.expand"][1])
    torch.testing.assert_close(_total(rel["2"][1]), skip + total["3.expand"] - expand_leak, rtol=1e-10, atol=1e-12)
    share_bn, share_dw = (bn_leak / logit), (dw_leak / logit)
    print(f"BN leak {share_bn.tolist()}, depthwise z+ leak {share_dw.tolist()}, expand z+ leak "
          f"{(expand_leak / logit).tolist()}, input {(_total(r_in) / logit).tolist()}")
    assert (share_bn.abs() > 0.01).all() and (share_dw.abs() > 0.01).all() and (dead.double().mean() > 0.1)
