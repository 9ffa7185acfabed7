"""Multi-pass modifiers (extagg.multipass, extagg_builtins.multipass): smooth, smoothsq, vargrad, ig."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import extagg
from extagg.errors import InputError, InvalidMethodError, PluginContractError, PluginLoadError
from extagg.multipass import noise
from extagg.plugin import Modifier, Samples, hookimpl

TARGETS = [1, 2]


@pytest.fixture
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 4),
    ).double().eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def path_gradients(net, x, baseline, alphas):
    """d score / d input at b + alpha (x - b), one autograd call per point, stacked (K, N, C, H, W)."""
    out = []
    for a in alphas:
        p = (baseline + a * (x - baseline)).requires_grad_(True)
        score = net(p)[torch.arange(len(TARGETS)), TARGETS].sum()
        out.append(torch.autograd.grad(score, p)[0])
    return torch.stack(out)


def trapezoid_ig(net, x, baseline, steps):
    alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
    w = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
    w[0] /= 2
    w[-1] /= 2
    g = path_gradients(net, x, baseline, alphas)
    return ((x - baseline) * torch.tensordot(w, g, 1)).sum(1, keepdim=True)


@pytest.mark.parametrize("steps,baseline", [(2, 0.0), (9, 0.0), (9, -0.5)])
def test_ig_scaling_sum_at_input_is_the_trapezoid_integral(net, x, registry, steps, baseline):
    method = f"ig(steps={steps},baseline={baseline}):scaling+sum"
    got = extagg.saliency(net, x, method, "input", TARGETS, registry=registry)[method, "input"]
    want = trapezoid_ig(net, x, baseline, steps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    left = torch.linspace(0, 1 - 1 / steps, steps, dtype=torch.float64)  # another rule: must not match
    other = ((x - baseline) * path_gradients(net, x, baseline, left).mean(0)).sum(1, keepdim=True)
    assert not torch.allclose(got, other, rtol=1e-6, atol=1e-9)


def test_ig_matches_captum_riemann_trapezoid(net, x, registry):
    captum_attr = pytest.importorskip("captum.attr")
    steps = 7
    method = f"ig(steps={steps},baseline=0.5):scaling+sum"
    got = extagg.saliency(net, x, method, "input", TARGETS, registry=registry)[method, "input"][:, 0]
    theirs = captum_attr.IntegratedGradients(net).attribute(
        x, baselines=0.5, target=TARGETS, n_steps=steps, method="riemann_trapezoid").sum(1)
    # Captum's trapezoid steps are 1/n (halved at the ends), summing to (n - 1)/n; ours are 1/(n - 1), summing
    # to 1 (exact on a linear path integrand). Its alphas come from a float32 linspace.
    torch.testing.assert_close(got, theirs * steps / (steps - 1), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(got, theirs, rtol=1e-3, atol=1e-6)


def test_ig_completeness_within_discretisation_error(net, x, registry):
    with torch.no_grad():
        rows = torch.arange(len(TARGETS))
        delta = net(x)[rows, TARGETS] - net(torch.zeros_like(x))[rows, TARGETS]
    errors = []
    for steps in (3, 65):
        method = f"ig(steps={steps}):scaling+sum"
        total = extagg.saliency(net, x, method, "input", TARGETS, registry=registry)[method, "input"].sum((1, 2, 3))
        errors.append((total - delta).abs().max().item())
    # a ReLU net's path integrand has kinks: the trapezoid error is O(1 / steps), not exact
    assert errors[1] < 1e-2 * delta.abs().max().item()
    assert errors[1] < errors[0] / 4


def test_ig_at_a_hidden_layer_uses_the_real_activation_and_the_path_mean_gradient(net, x, registry):
    steps = 5
    method = f"ig(steps={steps}):scaling+sum"
    got = extagg.saliency(net, x, method, "3", TARGETS, registry=registry)[method, "3"]
    alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
    grads = []  # the gradient at the conv output "3", at each path point
    for a in alphas:
        out = net[:4](a * x).detach().requires_grad_(True)
        score = net[4:](out)[torch.arange(2), TARGETS].sum()
        grads.append(torch.autograd.grad(score, out)[0])
    w = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
    w[0] /= 2
    w[-1] /= 2
    mean_grad = torch.tensordot(w, torch.stack(grads), 1)
    want = (net[:4](x) * mean_grad).sum(1, keepdim=True).detach()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    path_act = (net[:4](x * 0.5) * mean_grad).sum(1, keepdim=True).detach()
    assert not torch.allclose(got, path_act)


@pytest.mark.parametrize("modifier", ["smooth", "smoothsq", "vargrad"])
def test_noisy_modifiers_with_sigma_zero(net, x, registry, modifier):
    plain = extagg.saliency(net, x, ["normgrad", "gradcam", "scaling+sum"], ["input", "3"], TARGETS,
                            registry=registry, mismatched="skip")
    noisy = [f"{modifier}(n=3,sigma=0.0):{m}" for m in ("normgrad", "gradcam", "scaling+sum")]
    got = extagg.saliency(net, x, noisy, ["input", "3"], TARGETS, registry=registry, mismatched="skip")
    for (m, layer), value in plain.items():
        want = {"smooth": value, "smoothsq": value * value, "vargrad": torch.zeros_like(value)}[modifier]
        torch.testing.assert_close(got[f"{modifier}(n=3,sigma=0.0):{m}", layer], want, rtol=1e-12, atol=1e-14)
    with_noise = extagg.saliency(net, x, "smooth(n=3):gradcam", "3", TARGETS, registry=registry)
    assert not torch.allclose(with_noise["smooth(n=3):gradcam", "3"], plain["gradcam", "3"])


def test_smooth_is_the_mean_over_the_seeded_noisy_copies(net, x, registry):
    n, sigma, seed = 4, 0.2, 7
    method = f"smooth(n={n},sigma={sigma},seed={seed}):normgrad"
    got = extagg.saliency(net, x, method, "3", TARGETS, registry=registry)[method, "3"]
    scale = sigma * (x.flatten(1).amax(1) - x.flatten(1).amin(1))[:, None, None, None]
    copies = [extagg.saliency(net, x + noise(tuple(x.shape), seed, j) * scale, "normgrad", "3", TARGETS,
                              registry=registry)["normgrad", "3"] for j in range(n)]
    torch.testing.assert_close(got, torch.stack(copies).mean(0), rtol=1e-10, atol=1e-12)
    other_seed = extagg.saliency(net, x, f"smooth(n={n},sigma={sigma},seed=8):normgrad", "3", TARGETS,
                                 registry=registry)
    assert not torch.allclose(got, other_seed[f"smooth(n={n},sigma={sigma},seed=8):normgrad", "3"])


def test_seeded_and_independent_of_chunking(net, x, registry):
    methods = ["vargrad(n=5,seed=3):gradcam", "vargrad(chunk=2,n=5,seed=3):gradcam",
               "ig(steps=5):normgrad", "ig(chunk=1,steps=5):normgrad"]
    a = extagg.saliency(net, x, methods, "3", TARGETS, registry=registry)
    b = extagg.saliency(net, x, methods, "3", TARGETS, registry=registry)
    for m in methods:
        assert torch.equal(a[m, "3"], b[m, "3"])
    torch.testing.assert_close(a[methods[0], "3"], a[methods[1], "3"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(a[methods[2], "3"], a[methods[3], "3"], rtol=1e-10, atol=1e-13)
    # counter-cases, chunked as above: another seed, or one step fewer, gives other maps
    others = ["vargrad(chunk=2,n=5,seed=4):gradcam", "ig(chunk=1,steps=4):normgrad"]
    c = extagg.saliency(net, x, others, "3", TARGETS, registry=registry)
    assert not torch.allclose(c[others[0], "3"], a[methods[0], "3"], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(c[others[1], "3"], a[methods[2], "3"], rtol=1e-6, atol=1e-9)


@settings(max_examples=10)
@given(n=st.integers(1, 6), chunk=st.integers(1, 7), seed=st.integers(0, 2 ** 31))
def test_chunking_never_changes_the_maps(n, chunk, seed):
    """Law: the samples' chunking (memory) does not change the result, for every reduction."""
    from tests.conftest import builtin_registry

    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed % 97))
    base = [f"{k}(n={n},seed={seed})" for k in ("smooth", "smoothsq", "vargrad")] + [f"ig(steps={n + 1})"]
    whole = [f"{b}:normgrad" for b in base]
    parts = [b.replace("(", f"(chunk={chunk},") + ":normgrad" for b in base]
    got = extagg.saliency(small, x, whole + parts, "1", [0, 2], registry=builtin_registry())
    for a, b in zip(whole, parts):
        torch.testing.assert_close(got[b, "1"], got[a, "1"], rtol=1e-9, atol=1e-12)


def test_vargrad_is_smoothsq_minus_smooth_squared(net, x, registry):
    ms = [f"{k}(n=6,seed=1):scaling+sum" for k in ("smooth", "smoothsq", "vargrad")]
    got = extagg.saliency(net, x, ms, "3", TARGETS, registry=registry)
    mean, sq, var = (got[m, "3"] for m in ms)
    torch.testing.assert_close(var, sq - mean * mean, rtol=1e-8, atol=1e-12)
    assert (var >= 0).all() and var.abs().max() > 0
    # counter-case: the same identity with vargrad of another seed is refused
    other = extagg.saliency(net, x, "vargrad(n=6,seed=2):scaling+sum", "3", TARGETS, registry=registry)
    assert not torch.allclose(other["vargrad(n=6,seed=2):scaling+sum", "3"], sq - mean * mean, rtol=1e-6, atol=1e-9)


def test_predicted_class_is_the_real_images(net, x, registry):
    result = extagg.saliency(net, x, "smooth(n=4,sigma=3.0):gradcam", "3", registry=registry)
    with torch.no_grad():
        assert torch.equal(result.targets[:, 0], net(x).argmax(1))


def test_objective_and_resize(net, x, registry):
    result = extagg.saliency(net, x, "smooth(n=2):gradcam", "3", objective=lambda out: out[:, 0] - out[:, 1],
                             resize=(16, 16), registry=registry)
    assert result["smooth(n=2):gradcam", "3"].shape == (2, 1, 16, 16)


def test_smooth_composes_with_meta_one_step_on_the_real_image(net, x, registry):
    one = x[:1]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = extagg.saliency(net, one, ["smooth(n=2,sigma=0.0):meta:normgrad", "meta:normgrad"], "3", 1,
                          registry=registry)
    torch.testing.assert_close(got["smooth(n=2,sigma=0.0):meta:normgrad", "3"], got["meta:normgrad", "3"],
                               rtol=1e-12, atol=1e-14)
    plain = extagg.saliency(net, one, "normgrad", "3", 1, registry=registry)["normgrad", "3"]
    assert not torch.allclose(got["meta:normgrad", "3"], plain)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_smooth_composes_with_a_propagation_rule(net, x, registry):
    ms = ["smooth(n=2,sigma=0.0):guided:bias+sum", "guided:bias+sum", "bias+sum"]
    got = extagg.saliency(net, x, ms, "input", TARGETS, registry=registry)
    torch.testing.assert_close(got[ms[0], "input"], got[ms[1], "input"], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(got[ms[1], "input"], got[ms[2], "input"])  # the rule is in effect


def test_smooth_meta_with_predicted_class_steps_once_on_the_real_class(net, x, registry):
    one = x[:1]
    got = extagg.saliency(net, one, ["smooth(n=3,sigma=2.0):meta:normgrad"], "3", registry=registry)
    with torch.no_grad():
        predicted = int(net(one).argmax(1))
    assert got.targets.tolist() == [[predicted]]
    explicit = extagg.saliency(net, one, ["smooth(n=3,sigma=2.0):meta:normgrad"], "3", predicted, registry=registry)
    torch.testing.assert_close(got["smooth(n=3,sigma=2.0):meta:normgrad", "3"],
                               explicit["smooth(n=3,sigma=2.0):meta:normgrad", "3"], rtol=0, atol=0)
    # counter-case: another class given explicitly gives another map
    wrong = extagg.saliency(net, one, ["smooth(n=3,sigma=2.0):meta:normgrad"], "3", (predicted + 1) % 3,
                            registry=registry)
    assert not torch.allclose(got["smooth(n=3,sigma=2.0):meta:normgrad", "3"],
                              wrong["smooth(n=3,sigma=2.0):meta:normgrad", "3"])


def test_errors(net, x, registry):
    with pytest.raises(InvalidMethodError, match="steps"):
        registry.parse("ig(steps=1):scaling+sum")
    with pytest.raises(InvalidMethodError, match="sigma"):
        registry.parse("smooth(sigma=-1.0):gradcam")
    with pytest.raises(InputError, match="at most one multi-pass"):
        extagg.saliency(net, x, "smooth:ig:scaling+sum", "input", TARGETS, registry=registry)


def test_a_third_party_multipass_modifier_is_checked(net, x, registry):
    class Bad:
        @staticmethod
        @hookimpl
        def register_modifiers(register):
            register(Modifier(name="badpass", samples=lambda images: Samples(count=2, make=lambda a, b: images)))
            register(Modifier(name="notsamples", samples=lambda images: 3))

    reg = extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=[Bad]))
    with pytest.raises(PluginContractError, match=r"badpass.*shape \(2, 2, 3, 8, 8\)"):
        extagg.saliency(net, x, "badpass:gradcam", "3", TARGETS, registry=reg)
    with pytest.raises(PluginContractError, match="notsamples.*Samples"):
        extagg.saliency(net, x, "notsamples:gradcam", "3", TARGETS, registry=reg)
    with pytest.raises(PluginLoadError, match="modifier 'empty'.*needs fn.*or samples"):
        extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=[type(
            "Empty", (), {"register_modifiers": staticmethod(hookimpl(lambda register: register(
                Modifier(name="empty"))))})]))


@pytest.mark.parametrize("modifier", ["smooth(n=2)", "smoothsq(n=2)", "vargrad(n=2)", "ig(steps=2)"])
def test_every_modifier_applies_to_every_builtin_method(tiny_net, registry, modifier):
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    methods = registry.methods() + sorted(registry.named_methods)
    got = extagg.saliency(tiny_net, x, [f"{modifier}:{m}" for m in methods], ["input", "0", "1", "3", "4"], 1,
                          registry=registry, mismatched="skip")
    plain = extagg.saliency(tiny_net, x, methods, ["input", "0", "1", "3", "4"], 1, registry=registry,
                            mismatched="skip")
    assert len(got.keys()) == len(plain.keys())
    assert set(got.keys()) == {(registry.canonical(f"{modifier}:{m}"), layer) for m, layer in plain.keys()}
    for key in got.keys():
        m = got[key]
        assert m.shape[:2] == (1, 1) and torch.isfinite(m).all(), key
        if modifier.startswith(("vargrad", "smoothsq")):
            assert (m >= 0).all(), key
