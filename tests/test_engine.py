"""extagg.saliency: shapes, targets, dtypes, layers, in-place ops, reused modules, errors."""
import pytest
import torch
from torch import nn

import extagg
from extagg.errors import InputError, LayerMismatchError, UnknownNameError
from tests import oracle
from tests.conftest import builtin_registry



@pytest.fixture(scope="module")
def sweep():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 9, 9)
    reg = builtin_registry()
    names = reg.methods() + sorted(reg.named_methods)
    return extagg.saliency(net, x, names, layers=["input", "1", "2", "3"], targets=torch.tensor([[0, 1], [2, 0]]),
                           mismatched="skip", registry=reg)


@pytest.fixture(scope="module")
def token_sweep():
    """Methods of extractors that need an nn.Linear: at a ViT's MLP Linear, a token layer on a 3x3 patch grid."""
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=9, patch_size=3, num_layers=1, num_heads=1, hidden_dim=4,
                                               mlp_dim=4, num_classes=3).eval()
    nn.init.normal_(vit.heads.head.weight)
    reg = builtin_registry()
    names = [m for m in reg.methods() if reg.extractors[reg.parse(m).extractor.name].applies_to == (nn.Linear,)]
    return extagg.saliency(vit, torch.randn(2, 3, 9, 9), names, layers=["encoder.layers.encoder_layer_0.mlp.0"],
                           targets=torch.tensor([[0, 1], [2, 0]]), registry=reg)


def test_every_registered_method_runs_and_is_finite(sweep, token_sweep, builtin_method):
    method = builtin_method
    layers = [layer for m, layer in sweep if m == builtin_registry().canonical(method)]
    if not layers:  # an nn.Linear extractor: maps at token layers only
        sweep, layers = token_sweep, [layer for m, layer in token_sweep if m == builtin_registry().canonical(method)]
        for layer in layers:
            assert sweep[method, layer].shape == (2, 2, 3, 3) and torch.isfinite(sweep[method, layer]).all()
        assert layers, f"{method} fits no layer"
        return
    assert layers, f"{method} fits no layer"
    for layer in layers:
        m = sweep[method, layer]
        h = {"input": 9, "1": 9, "2": 9, "3": 5}[layer]
        assert m.shape == (2, 2, h, h) and m.dtype == torch.float32 and torch.isfinite(m).all()


def test_target_forms(tiny_net, images):
    one = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=1)["normgrad", "2"]
    per = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=[1, 1])["normgrad", "2"]
    tens = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=torch.tensor([1, 1]))["normgrad", "2"]
    assert one.shape == (2, 1, 10, 10)
    assert torch.equal(one, per) and torch.equal(one, tens)
    # counter-case: per-image targets that differ give another map
    assert not torch.equal(one, extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=[1, 0])["normgrad", "2"])
    pred = extagg.saliency(tiny_net, images, "normgrad", layers="2")
    assert torch.equal(pred.targets[:, 0], tiny_net(images).argmax(1))


def test_several_targets_per_image_equal_separate_calls(tiny_net, images):
    targets = torch.tensor([[0, 1, 3], [2, 2, 1]])
    methods = ["linear-approx", "conv3x3+relu+norm", "gradient"]
    multi = extagg.saliency(tiny_net, images, methods, layers=["input", "3"], targets=targets)
    for t in range(3):
        single = extagg.saliency(tiny_net, images, methods, layers=["input", "3"], targets=targets[:, t])
        for key in single:
            torch.testing.assert_close(multi[key][:, t], single[key][:, 0], rtol=1e-12, atol=1e-14)
            # counter-case: another column of the same call is refused
            with pytest.raises(AssertionError):
                torch.testing.assert_close(multi[key][:, (t + 1) % 3], single[key][:, 0], rtol=1e-12, atol=1e-14)


def test_batched_backward_fallback_gives_the_same_maps(tiny_net, images, monkeypatch):
    targets = torch.tensor([[0, 1], [2, 3]])
    want = extagg.saliency(tiny_net, images, "scaling+sum", layers="2", targets=targets)["scaling+sum", "2"]
    real = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    got = extagg.saliency(tiny_net, images, "scaling+sum", layers="2", targets=targets)["scaling+sum", "2"]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # counter-case: the fallback with the targets' columns swapped gives other maps
    swapped = extagg.saliency(tiny_net, images, "scaling+sum", layers="2", targets=targets.flip(1))["scaling+sum", "2"]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(swapped, want, rtol=1e-12, atol=0)


def _net(inplace: bool):
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def test_inplace_relu_after_the_layer_changes_nothing():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    methods = ["linear-approx", "normgrad", "conv3x3+sum", "gradient", "conv+norm"]
    a = extagg.saliency(_net(True), x, methods, layers=["0", "2"], targets=1)
    b = extagg.saliency(_net(False), x, methods, layers=["0", "2"], targets=1)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # counter-case: the same nets for another target give other maps
    c = extagg.saliency(_net(True), x, methods, layers=["0", "2"], targets=0)
    assert not any(torch.equal(a[key], c[key]) for key in a)
    # and it is the pre-ReLU conv output that is explained (not the rectified one)
    want = oracle.method_map(extagg.parse_method("linear-approx"), _net(False), x, 0, torch.tensor([[1], [1]]))
    torch.testing.assert_close(a["linear-approx", "0"], want)


class Shared(nn.Module):
    """One ReLU module called twice per forward pass (as in EfficientNet)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def test_module_called_twice_is_refused_without_a_call_index():
    net, x = Shared().double(), torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(InputError, match=r"called 2 times.*'act@0', 'act@1'"):
        extagg.saliency(net, x, "linear-approx", layers="act", targets=0)
    with pytest.raises(InputError, match=r"called only 2 time"):
        extagg.saliency(net, x, "linear-approx", layers="act@2", targets=0)


def test_each_call_of_a_reused_module_is_captured_separately():
    net, x = Shared().double(), torch.randn(1, 3, 6, 6, dtype=torch.float64)
    maps = extagg.saliency(net, x, "linear-approx", layers=["act@0", "act@1"], targets=0)
    a0 = net.act(net.c1(x)).detach().requires_grad_(True)
    a1 = net.act(net.c2(a0))
    s = net.fc(a1.mean((2, 3)))[:, 0].sum()
    g0, g1 = torch.autograd.grad(s, [a0, a1])
    torch.testing.assert_close(maps["linear-approx", "act@0"][:, 0], (a0 * g0).sum(1))
    torch.testing.assert_close(maps["linear-approx", "act@1"][:, 0], (a1 * g1).sum(1))


def test_works_inside_no_grad(tiny_net, images):
    want = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=0)["normgrad", "2"]
    with torch.no_grad():
        got = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=0)["normgrad", "2"]
        other = extagg.saliency(tiny_net, images, "normgrad", layers="2", targets=1)["normgrad", "2"]
    assert torch.equal(got, want)
    assert not torch.equal(other, want)  # counter-case: another target inside no_grad


@pytest.mark.parametrize("dtype,out", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                       (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_dtypes(tiny_net, images, dtype, out):
    net = tiny_net.to(dtype)
    maps = extagg.saliency(net, images.float(), ["normgrad", "conv3x3+max", "gradcam"], layers=["2", "input"], targets=0)
    ref = extagg.saliency(tiny_net.double(), images.double(), ["normgrad"], layers=["2"], targets=0)
    for m in maps.values():
        assert m.dtype == out and torch.isfinite(m).all()
    got, want = maps["normgrad", "2"].double(), ref["normgrad", "2"]
    assert agrees(got, want, dtype)
    # counter-cases: an all-zero map, and the map of another target at the same dtype, are refused
    other = extagg.saliency(net, images.float(), "normgrad", layers="2", targets=1)["normgrad", "2"].double()
    assert not agrees(torch.zeros_like(want), want, dtype)
    assert not agrees(other, want, dtype)


def agrees(got, want, dtype):
    """``got`` is ``want`` computed in ``dtype``: the largest error is within a tolerance of ``want``'s range
    (not of its magnitude, so an all-zero map fails) and the pixels' Spearman rank correlation is near 1."""
    from scipy.stats import spearmanr

    rel_tol, min_rho = {torch.float16: (1e-2, 0.999), torch.bfloat16: (0.2, 0.99)}.get(dtype, (1e-5, 0.99999))
    spread = float(want.max() - want.min())
    assert spread > 0
    if got.max() == got.min():  # constant: no rank correlation
        return False
    rel = float((got - want).abs().max()) / spread
    rho = spearmanr(got.flatten().numpy(), want.flatten().numpy()).statistic
    return rel <= rel_tol and bool(rho >= min_rho)


def test_resize(tiny_net, images):
    raw = extagg.saliency(tiny_net, images, "normgrad", layers="3", targets=0)["normgrad", "3"]
    up = extagg.saliency(tiny_net, images, "normgrad", layers="3", targets=0, resize=True)["normgrad", "3"]
    sized = extagg.saliency(tiny_net, images, "normgrad", layers="3", targets=0, resize=(7, 12))["normgrad", "3"]
    assert raw.shape[-2:] == (5, 5) and up.shape[-2:] == (10, 10) and sized.shape[-2:] == (7, 12)
    torch.testing.assert_close(up, torch.nn.functional.interpolate(raw, size=(10, 10), mode="bilinear"))


def test_custom_objective_is_linear_for_linear_methods(tiny_net, images):
    diff = extagg.saliency(tiny_net, images, "linear-approx", layers="2",
                           objective=lambda out: out[:, 1] - out[:, 0])["linear-approx", "2"]
    per = extagg.saliency(tiny_net, images, "linear-approx", layers="2", targets=torch.tensor([[1, 0], [1, 0]]))
    m = per["linear-approx", "2"]
    torch.testing.assert_close(diff[:, 0], m[:, 0] - m[:, 1])
    with pytest.raises(AssertionError):  # counter-case: the other difference
        torch.testing.assert_close(diff[:, 0], m[:, 1] - m[:, 0])


def test_result_accepts_spelling_and_canonical_forms(tiny_net, images):
    maps = extagg.saliency(tiny_net, images, ["Linear-Approx", "scaling + ReLU + norm"], layers=["2", "3"], targets=0)
    assert torch.equal(maps["Linear-Approx", "2"], maps["scaling+sum", "2"])
    assert torch.equal(maps["selective-normgrad", "3"], maps["scaling+relu+norm", "3"])
    assert maps.methods == ["scaling+sum", "scaling+relu+norm"] and maps.layers == ["2", "3"]
    with pytest.raises(KeyError):
        maps["normgrad", "2"]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(layers="laye3"), UnknownNameError, "unknown layer 'laye3'"),
    (dict(layers="4", methods="conv+norm"), LayerMismatchError, "needs a Conv2d layer, but '4' is ReLU"),
    (dict(layers="input", methods="conv+norm"), LayerMismatchError, "the input image"),
    (dict(targets=4), InputError, "target 4 is out of range.*4 classes"),
    (dict(targets=-1), InputError, "out of range"),
    (dict(targets=[1, 2, 3]), InputError, "3 entries for 2 images"),
    (dict(targets=torch.zeros(2, 1, 1, dtype=torch.long)), InputError, "0-, 1- or 2-D"),
    (dict(targets=torch.tensor([0.5, 1.0])), InputError, "integer class indices"),
    (dict(methods=[]), InputError, "no methods"),
    (dict(mismatched="ignore"), InputError, "'raise' or 'skip'"),
])
def test_bad_input_errors_name_the_value(tiny_net, images, kwargs, error, match):
    args = dict(methods="normgrad", layers="2", targets=0) | kwargs
    with pytest.raises(error, match=match):
        extagg.saliency(tiny_net, images, **args)


def test_unknown_layer_suggests(tiny_net, images):
    with pytest.raises(UnknownNameError) as info:
        extagg.saliency(tiny_net, images, "normgrad", layers="inptu")
    assert "input" in info.value.suggestions


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 10, 10), "4-D.*add a batch dimension"),
    (torch.zeros(1, 3, 10, 10, dtype=torch.long), "floating point"),
    (torch.full((1, 3, 10, 10), float("nan")), "NaN or inf"),
    ("image.png", "torch.Tensor"),
])
def test_bad_images(tiny_net, bad, match):
    with pytest.raises(InputError, match=match):
        extagg.saliency(tiny_net, bad, "normgrad", layers="2")


def test_mismatched_skip_leaves_pairs_out(tiny_net, images):
    maps = extagg.saliency(tiny_net, images, ["conv+norm", "normgrad"], layers=["2", "3"], targets=0, mismatched="skip")
    assert set(maps) == {("conv+norm", "3"), ("conv1x1+norm", "2"), ("conv1x1+norm", "3")}


def test_non_tensor_output_needs_an_objective(images):
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return {"out": self.c(x)}

    net = Dict().double()
    with pytest.raises(InputError, match="objective=callable"):
        extagg.saliency(net, images, "normgrad", layers="c")
    maps = extagg.saliency(net, images, "normgrad", layers="c", objective=lambda o: o["out"][:, 1].sum((1, 2)))
    assert maps["normgrad", "c"].shape == (2, 1, 10, 10)


def test_images_follow_the_model_dtype_and_maps_stay_on_its_device(tiny_net, images):
    maps = extagg.saliency(tiny_net, images.float(), "normgrad", layers="2", targets=0)
    m = maps["normgrad", "2"]
    assert m.device == next(tiny_net.parameters()).device and m.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_stay_on_device(tiny_net, images):
    net = tiny_net.cuda()
    maps = extagg.saliency(net, images, extagg.methods("*+norm"), layers=["2", "3"], targets=0, mismatched="skip")
    assert all(m.is_cuda for m in maps.values())
