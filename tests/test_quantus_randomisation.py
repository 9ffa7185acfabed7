"""The randomisation metrics against Quantus 0.6 on the same model, inputs and maps: every per-image number (per
randomised layer for MPRT and sMPRT) agrees to 1e-6 relative. Quantus's random draws (random-logit's other class,
sMPRT's input noise) are replaced in the test by the draws extagg makes (seeded per image id). Counter-cases: another
layer order, seed, map or noise gives other numbers."""
import math

import numpy as np
import pytest
import torch

import extagg
from extagg.evaluation import Sample, evaluate, score

quantus = pytest.importorskip("quantus")
from extagg_builtins.metrics_randomisation import off_classes, quantus_layers, smooth_noise_steps  # noqa: E402

LAYER = "0"
METHOD = "linear-approx"  # no ReLU: a randomised model's map is never all zeros (Quantus refuses those)


def make_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that Quantus's reset of them matters
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def setup():
    net = make_net()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    y = net(x).argmax(1)
    return net, x, y, explain(net, x, y)


def explain(model, x, targets, layer=LAYER):
    return extagg.saliency(model, x, METHOD, layer, targets=targets, resize=x.shape[-2:])[METHOD, layer][:, 0]


def quantus_explain(model, inputs, targets, **kwargs):
    """The same map for Quantus: numpy in, float64 numpy (N, H, W) out (exact copies of the float32 maps)."""
    x = torch.as_tensor(np.asarray(inputs)).float()
    t = torch.as_tensor(np.asarray(targets)).long()
    return explain(model, x, t).detach().double().numpy()


def quantus_call(metric, net, x, y, maps, **kw):
    return metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None if maps is None else
                  maps.double().numpy(), device="cpu", explain_func=quantus_explain, **kw)


def close(a, b, rel=1e-6):
    return len(a) == len(b) and all((math.isnan(p) and math.isnan(q)) or abs(p - q) <= rel * max(abs(p), abs(q), 1e-12)
                                    for p, q in zip(a, b))


def by_layer(ev, prefix="cascading"):
    subsets = list(dict.fromkeys(v.subset for v in ev.values))
    return {s.split(":", 1)[1]: ev.per_image(subset=s) for s in subsets if s.startswith(prefix + ":")}


@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_mprt_every_layer_equals_quantus(setup, order):
    """One subset per layer in Quantus's order (modules with reset_parameters), each equal to Quantus's."""
    net, x, y, maps = setup
    got = by_layer(score(f"mprt(layer_order={order})", net, x, maps, y, explain=explain),
                   "independent" if order == "independent" else "cascading")
    want = quantus_call(quantus.MPRT(layer_order=order, disable_warnings=True, display_progressbar=False),
                        net, x, y, maps)
    want = {k: v for k, v in want.items() if k != "original"}
    assert list(got) == list(want) == quantus_layers(net, order)
    for layer in want:
        assert close(got[layer], [float(v) for v in want[layer]]), (layer, got[layer], want[layer])
    assert any(math.isfinite(v) for vals in got.values() for v in vals)


def test_mprt_headline_is_the_last_layer_and_counter_cases(setup):
    """The headline is Quantus's return_last_correlation; another seed or order gives other numbers."""
    net, x, y, maps = setup
    ev = score("mprt", net, x, maps, y, explain=explain)
    last = quantus_call(quantus.MPRT(return_last_correlation=True, disable_warnings=True,
                                     display_progressbar=False), net, x, y, maps)
    head = ev.rows[0].subset if len({r.subset for r in ev.rows}) == 1 else None
    table = ev.per_image(subset=f"cascading:{quantus_layers(net)[-1]}")
    assert close(table, [float(v) for v in last])
    from extagg_builtins.metrics_randomisation import MPRT
    assert MPRT.headline(list(dict.fromkeys(v.subset for v in ev.values))) == f"cascading:{quantus_layers(net)[-1]}"
    assert head is None or head.endswith(quantus_layers(net)[-1])
    other = score("mprt(seed=7)", net, x, maps, y, explain=explain)
    assert not close(other.per_image(subset="cascading:3"), ev.per_image(subset="cascading:3"), rel=1e-3)
    assert by_layer(score("mprt(skip_layers=true)", net, x, maps, y, explain=explain)) == {"0": table}


def test_efficient_mprt_equals_quantus(setup):
    net, x, y, maps = setup
    got = score("efficient-mprt", net, x, maps, y, explain=explain).per_image()
    want = quantus_call(quantus.EfficientMPRT(disable_warnings=True, display_progressbar=False), net, x, y, maps)
    assert close(got, [float(v) for v in want]), (got, want)
    assert all(math.isfinite(v) for v in got)
    # counter-case: another number of bins on both sides
    got20 = score("efficient-mprt(n_bins=20)", net, x, maps, y, explain=explain).per_image()
    want20 = quantus_call(quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": 20}, disable_warnings=True,
                                                display_progressbar=False), net, x, y, maps)
    assert close(got20, [float(v) for v in want20]) and not close(got20, got, rel=1e-3)


def test_smooth_mprt_every_layer_equals_quantus(setup, monkeypatch):
    """Quantus's noise (np.random.randn, one draw per noisy sample, the same sequence for every smoothing) is
    replaced by extagg's per-image draws; Quantus's sMPRT explains through quantus.explain, patched to the same
    gradcam; a_batch=None, so that Quantus denoises the trained model's maps too (the paper)."""
    net, x, y, maps = setup
    k = 4
    noise = smooth_noise_steps(0, [str(i) for i in range(3)], x.shape[1:], k - 1)
    calls = {"n": 0}

    def randn(*shape):
        assert tuple(shape) == tuple(x.shape)
        draw = noise[calls["n"] % (k - 1)].numpy()
        calls["n"] += 1
        return draw

    monkeypatch.setattr(np.random, "randn", randn)
    monkeypatch.setattr(quantus, "explain", quantus_explain)
    got = by_layer(score(f"smooth-mprt(nr_samples={k})", net, x, maps, y, explain=explain))
    want = quantus_call(quantus.SmoothMPRT(nr_samples=k, disable_warnings=True, display_progressbar=False),
                        net, x, y, None)
    want = {name: v for name, v in want.items() if name != "original"}
    assert list(got) == list(want) == quantus_layers(net, "bottom_up")
    for layer in want:
        assert close(got[layer], [float(v) for v in want[layer]]), (layer, got[layer], want[layer])
    # counter-case: without the noise (one sample: the clean input only) it is plain MPRT bottom-up, not sMPRT
    plain = by_layer(score("smooth-mprt(nr_samples=1)", net, x, maps, y, explain=explain))
    mprt = by_layer(score("mprt(layer_order=bottom_up)", net, x, maps, y, explain=explain))
    assert all(close(plain[layer], mprt[layer]) for layer in mprt)
    assert not all(close(got[layer], mprt[layer], rel=1e-3) for layer in mprt)


def test_random_logit_equals_quantus(setup, monkeypatch):
    """Quantus draws the other class with numpy for the whole batch (seed 42); the test hands it extagg's per-image
    draw. Quantus normalises by the batch's max: both sides run one image at a time. Quantus 0.6 flattens the maps
    before SSIM (a 1-D SSIM): extagg's flatten=true equals it; the default (2-D SSIM, the paper) equals Quantus's own
    ssim function on the 2-D maps, and differs from Quantus's RandomLogit (measured here)."""
    from quantus.functions.similarity_func import ssim

    net, x, y, maps = setup
    got = score("random-logit(flatten=true)", net, x, maps, y, explain=explain, batch_size=1).per_image()
    off = off_classes(0, [str(i) for i in range(3)], y, 5)
    assert all(int(off[i]) != int(y[i]) for i in range(3))
    want = []
    for i in range(3):
        idx = int(off[i]) - int(off[i] > y[i])
        monkeypatch.setattr(np.random, "randint", lambda low, high, size, idx=idx: np.full(size, idx))
        metric = quantus.RandomLogit(num_classes=5, disable_warnings=True, display_progressbar=False)
        want += [float(v) for v in quantus_call(metric, net, x[i:i + 1], y[i:i + 1], maps[i:i + 1])]
    assert close(got, want, rel=1e-12), (got, want)
    # the paper's 2-D SSIM, against Quantus's ssim on the 2-D maps (normalised per map as Quantus's batch of one)
    paper = score("random-logit", net, x, maps, y, explain=explain).per_image()
    a = maps.double().numpy()
    b = quantus_explain(net, x.numpy(), off.numpy())
    norm = lambda m: m / np.abs(m).max()  # noqa: E731
    assert close(paper, [float(ssim(norm(a[i]), norm(b[i]))) for i in range(3)])
    assert not close(paper, got, rel=1e-2)  # the 1-D and 2-D SSIM differ
    # counter-case: Quantus's batch-wide normalisation gives other numbers than per-map normalisation
    offs = [int(off[i]) - int(off[i] > y[i]) for i in range(3)]
    monkeypatch.setattr(np.random, "randint", lambda low, high, size: np.array(offs))
    whole = quantus_call(quantus.RandomLogit(num_classes=5, disable_warnings=True, display_progressbar=False),
                         net, x, y, maps)
    assert not close(got, [float(v) for v in whole], rel=1e-4)
    unnormalised = quantus_call(quantus.RandomLogit(num_classes=5, normalise=False, disable_warnings=True,
                                                    display_progressbar=False), net, x, y, maps)
    assert close(score("random-logit(normalise=false,flatten=true)", net, x, maps, y, explain=explain).per_image(),
                 [float(v) for v in unnormalised])


def test_the_users_model_is_untouched_and_the_global_rng_kept(setup):
    """The user's model and torch's global RNG are as before (Quantus reseeds the global RNG; extagg forks it)."""
    net, x, y, maps = setup
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.random.get_rng_state()
    both = score(["mprt(skip_layers=true)", "efficient-mprt"], net, x, maps, y, explain=explain)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # the copy is restored between metrics: efficient-mprt after mprt gives its number alone
    alone = score("efficient-mprt", net, x, maps, y, explain=explain).per_image()
    assert both.per_image(metric="efficient-mprt") == alone
    assert torch.equal(state, torch.random.get_rng_state())


def test_sweep_level_two_metrics_run_in_range():
    """evaluate() with two randomisation metrics on a tiny model: finite values in the declared range, the
    random-logit maps from the shared pass."""
    net = make_net()
    samples = [Sample(image=torch.rand(3, 16, 16), image_id=str(i)) for i in range(2)]
    ev = evaluate(net, samples, METHOD, LAYER, ["random-logit", "mprt(skip_layers=true)"])
    values = [v.value for v in ev.values]
    assert len(values) == 4 and all(math.isfinite(v) and -1 <= v <= 1 for v in values)
