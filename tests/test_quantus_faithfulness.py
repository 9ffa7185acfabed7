"""The faithfulness family against Quantus 0.6.0, image by image (and curve point by curve point), Grad-CAM++'s
average drop and increase in confidence against a hand computation of the paper's formulas, and the sharing of
forward passes.

Same model, inputs and maps on both sides: extagg through ``score(...)`` and the family's curve functions,
Quantus through its metric classes at their defaults unless a coarser step keeps the file fast. Maps are
extagg's signed gradient (``bias+sum`` at the input) and ``scaling+sum`` at a stride-2 layer upsampled (no ties).
Quantus ranks the C*H*W features of a one-channel map repeated over the channels and leaves the order of ties
unspecified; extagg breaks them by index: with ``features_in_step`` a multiple of C (or one channel) both agree.
Random draws: Quantus's NumPy draws are replaced (monkeypatch) by the draws extagg makes from its seeded
generators, so both sides see the same subsets, baselines and noise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import extagg
from conftest import builtin_registry
from extagg.errors import InputError
from extagg.evaluation import evaluate, score
from extagg.evaluation.context import seed_of
from extagg.evaluation.datasets import Sample
from extagg.evaluation.perturbation import Forwards, linear_imputation
from extagg.maps import resize_maps
from extagg_builtins import metrics_faithfulness as mf

quantus = pytest.importorskip("quantus")
QUIET = dict(disable_warnings=True, display_progressbar=False)


def tiny_model(channels: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


def make_case(channels: int, size: int, n: int = 2):
    model = tiny_model(channels)
    x = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps = {}
    for method, layer in (("bias+sum", "input"), ("scaling+sum", "2")):
        m = extagg.saliency(model, x, method, layers=layer, targets=y, registry=builtin_registry())[method, layer]
        maps[layer] = resize_maps(m, x.shape[-2:])[:, 0].detach()
    return model, x, y, maps


@pytest.fixture(scope="module")
def gray():
    return make_case(1, 32)


@pytest.fixture(scope="module")
def rgb():
    return make_case(3, 24)


def ours(metric, model, x, y, maps, measure=None):
    out = score(metric, model, x, maps, y, registry=builtin_registry())
    return np.array(out.per_image(measure=measure), dtype=np.float64)


def theirs(cls, model, x, y, maps, call=None, **kw):
    return np.asarray(cls(**QUIET, **kw)(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                                         a_batch=maps[:, None].numpy(), device="cpu", **(call or {})),
                      dtype=np.float64)


def fw_for(model, x, y):
    return Forwards(model, x, y)


# --------------------------------------------------------------------------------------------- curves
@pytest.mark.parametrize("case_name,fis,layer", [("gray", 64, "input"), ("gray", 64, "2"), ("rgb", 48, "input")])
def test_pixel_flipping(case_name, fis, layer, request):
    """Every curve point equals Quantus's, and the per-image AUC its trapezoid area (get_auc_score). RGB: 48
    features per step (16 whole pixels; Quantus wants a divisor of H*W)."""
    model, x, y, maps = request.getfixturevalue(case_name)
    q = theirs(quantus.PixelFlipping, model, x, y, maps[layer], features_in_step=fis)
    curves = mf.flip_curves(fw_for(model, x, y), maps[layer][None].double(), fis)[0].numpy()
    np.testing.assert_allclose(curves, q, rtol=1e-6)
    np.testing.assert_allclose(ours(f"pixel-flipping(features_in_step={fis})", model, x, y, maps[layer]),
                               np.trapezoid(q, axis=1), rtol=1e-6)


@pytest.mark.parametrize("case_name,patch_size,order", [("rgb", 8, "morf"), ("gray", 6, "morf"), ("rgb", 8, "lerf")])
def test_region_perturbation(case_name, patch_size, order, request):
    """Curves (probability drops) equal Quantus's, also on a padded grid (32 px in 6-px patches); the measures
    are the curve's trapezoid area and the paper's AOPC."""
    model, x, y, maps = request.getfixturevalue(case_name)
    m = maps["2"]
    q = theirs(quantus.RegionPerturbation, model, x, y, m, patch_size=patch_size, order=order)
    fw = fw_for(model, x, y)
    yp = fw.values(fw.source(range(len(x))), "prob")
    curves = (yp[:, None] - mf.patch_curves(fw, m[None].double(), patch_size, order, 100)[0]).numpy()
    np.testing.assert_allclose(curves, q, rtol=1e-5, atol=1e-7)
    text = f"region-perturbation(patch_size={patch_size},order={order})"
    out = score(text, model, x, m, y, registry=builtin_registry())
    np.testing.assert_allclose(out.per_image(measure="auc"), np.trapezoid(q, axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.per_image(measure="aopc"), q.sum(1) / (q.shape[1] + 1), rtol=1e-5)


def test_region_perturbation_random_order(rgb, monkeypatch):
    """order=random: the curve equals Quantus's with its per-image permutations replaced by extagg's seeded ones
    (and the map does not matter)."""
    model, x, y, maps = rgb
    perms = iter([mf.random_order(seed_of(0, str(i), "region-perturbation"), 9).numpy() for i in range(len(x))])
    monkeypatch.setattr(np.random, "permutation", lambda k: next(perms))
    q = theirs(quantus.RegionPerturbation, model, x, y, maps["input"], order="random")
    monkeypatch.undo()
    got = ours("region-perturbation(order=random)", model, x, y, -maps["input"], "auc")
    np.testing.assert_allclose(got, np.trapezoid(q, axis=1), rtol=1e-5)


def test_abs_parameter(gray):
    """abs=true ranks |map| (Quantus's abs=True): equal to Quantus, and different from the signed ranking."""
    model, x, y, maps = gray
    q = theirs(quantus.PixelFlipping, model, x, y, maps["input"], features_in_step=128, abs=True)
    got = ours("pixel-flipping(features_in_step=128,abs=true)", model, x, y, maps["input"])
    np.testing.assert_allclose(got, np.trapezoid(q, axis=1), rtol=1e-6)
    assert not np.allclose(ours("pixel-flipping(features_in_step=128)", model, x, y, maps["input"]), got)


@pytest.mark.parametrize("patch_size", [5])
def test_selectivity(rgb, patch_size):
    """Curves equal Quantus's; 24 px with 5-px patches pads the grid (one row / column of padding)."""
    model, x, y, maps = rgb
    q = theirs(quantus.Selectivity, model, x, y, maps["input"], patch_size=patch_size)
    curves = mf.patch_curves(fw_for(model, x, y), maps["input"][None].double(), patch_size)[0].numpy()
    np.testing.assert_allclose(curves, q, rtol=1e-6)
    np.testing.assert_allclose(ours(f"selectivity(patch_size={patch_size})", model, x, y, maps["input"]),
                               np.trapezoid(q, axis=1), rtol=1e-6)


def test_linear_imputation_equals_quantus():
    """ROAD's imputation (conjugate gradients on the 8-neighbour system) equals Quantus's sparse direct solve."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64)
    ranks = torch.randperm(144, generator=g)
    for k in (1, 40, 143):
        unknown = (ranks < k).view(12, 12)
        got = linear_imputation(x, unknown.expand(2, 12, 12))
        idx = ranks.argsort()[:k].numpy()
        for i in range(2):
            want = noisy_linear_imputation(x[i].numpy(), idx, noise=0.0)
            np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-9, atol=1e-9)


def test_road(gray, monkeypatch):
    """Per image and percentage, the prediction after noisy imputation equals Quantus's (its noise draws replaced
    by extagg's; Quantus run on one image at a time, since it keeps only the mean over images); the measure is
    the mean over percentages. One channel: Quantus 0.6.0 fails on three."""
    model, x, y, maps = gray
    pcts = list(range(5, 100, 10))
    NOISE = 0.5  # noise the tiny model notices (both outcomes occur)
    n, c = x.shape[:2]
    seeds = [seed_of(0, str(i), "road") for i in range(n)]
    want = np.zeros((n, len(pcts)))
    for i in range(n):
        draws = iter([mf.road_noise(seeds[i], p, c, int(32 * 32 * p / 100)).numpy() for p in pcts])
        monkeypatch.setattr(np.random, "randn", lambda *shape: next(draws))
        metric = quantus.ROAD(percentages=pcts, noise=NOISE, **QUIET)
        metric(model=model, x_batch=x[i:i + 1].numpy(), y_batch=y[i:i + 1].numpy(),
               a_batch=maps["input"][i:i + 1, None].numpy(), device="cpu")
        monkeypatch.undo()
        want[i] = [metric.evaluation_scores[p] for p in pcts]
    hits = mf.road_hits(fw_for(model, x, y), maps["input"][None].double(), seeds, pcts, NOISE)[0].numpy()
    np.testing.assert_array_equal(hits, want)
    assert 0 < want.mean() < 1  # both outcomes occur: the comparison can fail
    got = ours(f"road(percentage_start=5,percentage_step=10,noise={NOISE})", model, x, y, maps["input"])
    np.testing.assert_allclose(got, hits.mean(1), rtol=1e-12)


@pytest.fixture
def trapz(monkeypatch):
    """Quantus's IROF calls np.trapz, which NumPy 2 removed: give it NumPy's trapezoid (the same rule)."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def test_irof(trapz):
    """Per image, the area over the curve equals Quantus's when Quantus is given extagg's baseline (each image's
    mean) as an array, one image per call (a batch pads shorter curves with zeros, which adds half the last
    point to the area). One channel at 16 px: Quantus 0.6.0 fails on three (its mask has one channel).

    Quantus's default baseline is the mean of the whole batch in its current perturbed state: its score of an
    image changes with the other images of its batch; extagg's (each image's own mean, the paper's) does not.
    The difference is measured (documented in docs/metrics/faithfulness.md)."""
    model, x, y, maps = make_case(1, 16)
    m = maps["input"]
    want, alone = [], []
    for i in range(len(x)):
        base = np.full(x[i:i + 1].shape, float(x[i].mean()), dtype=np.float32)
        want.append(theirs(quantus.IROF, model, x[i:i + 1], y[i:i + 1], m[i:i + 1], return_aggregate=False,
                           perturb_baseline=base)[0])
        alone.append(theirs(quantus.IROF, model, x[i:i + 1], y[i:i + 1], m[i:i + 1], return_aggregate=False)[0])
    got = ours("irof", model, x, y, m)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    batch = theirs(quantus.IROF, model, x, y, m, return_aggregate=False)
    assert np.abs(batch - np.array(alone)).max() > 1e-6  # Quantus: the batch changes an image's score
    rel = np.abs(got - batch) / np.abs(batch)
    print("irof: relative difference to Quantus's batch-mean baseline:", rel.max())
    assert rel.max() > 1e-6


def test_faithfulness_correlation(rgb, monkeypatch):
    """Per image, the Pearson correlation equals Quantus's with its random subsets replaced by extagg's seeded
    subsets (np.random.choice is called per run, per image)."""
    model, x, y, maps = rgb
    n, runs, size = len(x), 20, 64
    f = x[0].numel()
    seeds = [seed_of(0, str(i), "faithfulness-correlation") for i in range(n)]
    subsets = [mf.random_subsets(s, f, runs, size).numpy() for s in seeds]
    calls = {"t": 0}

    def choice(a, k, replace=True):
        t = calls["t"]
        calls["t"] += 1
        assert (a, k, replace) == (f, size, False)
        return subsets[t % n][t // n]

    for layer in ("input", "2"):
        calls["t"] = 0
        monkeypatch.setattr(np.random, "choice", choice)
        q = theirs(quantus.FaithfulnessCorrelation, model, x, y, maps[layer], nr_runs=runs, subset_size=size,
                   return_aggregate=False)
        monkeypatch.undo()
        assert calls["t"] == n * runs
        got = ours(f"faithfulness-correlation(nr_runs={runs},subset_size={size})", model, x, y, maps[layer])
        np.testing.assert_allclose(got, q, rtol=1e-6)


def test_monotonicity_correlation(gray, monkeypatch):
    """Per image, the Spearman correlation equals Quantus's with its uniform baseline draws (one value per image
    per perturbation call, steps then samples) replaced by extagg's seeded draws."""
    model, x, y, maps = gray
    n, samples, fis = len(x), 3, 128
    steps = x[0].numel() // fis
    draws = np.stack([mf.uniform_draws(seed_of(0, str(i), "monotonicity-correlation"), steps, samples).numpy()
                      for i in range(n)])  # (N, K, S)
    calls = {"t": 0}

    def uniform(low=0.0, high=1.0, size=None):
        t = calls["t"]
        calls["t"] += 1
        return draws[:, t // samples, t % samples]

    for layer in ("input", "2"):
        calls["t"] = 0
        monkeypatch.setattr(np.random, "uniform", uniform)
        q = theirs(quantus.MonotonicityCorrelation, model, x, y, maps[layer], nr_samples=samples,
                   features_in_step=fis)
        monkeypatch.undo()
        assert calls["t"] == steps * samples
        got = ours(f"monotonicity-correlation(nr_samples={samples},features_in_step={fis})", model, x, y,
                   maps[layer])
        np.testing.assert_allclose(got, q, rtol=1e-6)


# --------------------------------------------------------------------------------------------- Grad-CAM++
def hand_confidence(model, x, y, maps, normalise="minmax"):
    """The paper's formulas, image by image: Y = p(class | image), O = p(class | image * map scaled to [0, 1])."""
    drops, increases = [], []
    for i in range(len(x)):
        m = maps[i].double()
        m = (m - m.min()) / (m.max() - m.min()) if normalise == "minmax" else m / m.max()
        with torch.no_grad():
            big_y = float(torch.softmax(model(x[i:i + 1]), 1)[0, y[i]])
            big_o = float(torch.softmax(model(x[i:i + 1] * m.float()), 1)[0, y[i]])
        drops.append(100 * max(0.0, big_y - big_o) / big_y)
        increases.append(100.0 if big_o > big_y else 0.0)
    return np.array(drops), np.array(increases)


def test_average_drop_and_increase_in_confidence(rgb):
    """Per image, 100 * max(0, Y - O) / Y and 100 * [O > Y] equal a hand computation, for maps that raise the
    confidence (drop 0, increase 100) and their negatives (which lower it); a map normalised by its maximum
    only (not min-max) gives other drops, which the comparison detects."""
    model, x, y, maps = rgb
    for m in (maps["input"], maps["2"], -maps["input"], -maps["2"]):
        drop, inc = hand_confidence(model, x, y, m)
        np.testing.assert_allclose(ours("average-drop", model, x, y, m), drop, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(ours("increase-in-confidence", model, x, y, m), inc)
    drop, _ = hand_confidence(model, x, y, -maps["2"])
    other, _ = hand_confidence(model, x, y, -maps["2"], normalise="max")
    assert drop.min() > 1 and not np.allclose(drop, other, rtol=1e-2)


def test_increase_in_confidence_can_be_won():
    """A map that keeps the evidence for the class and darkens the rest raises the confidence: 100 for that
    image (the measure can take both values)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        model[1].bias.zero_()
    x = torch.tensor([[[[2.0, 0], [0, 1.0]]]])
    keep = torch.tensor([[[1.0, 0], [0, 0]]])
    assert ours("increase-in-confidence", model, x, torch.tensor([0]), keep)[0] == 100
    assert ours("average-drop", model, x, torch.tensor([0]), keep)[0] == 0


# --------------------------------------------------------------------------------------------- counter-cases
COUNTER = [  # (extagg call scored on a changed map or parameter, the Quantus class and arguments it must differ from)
    ("pixel-flipping(features_in_step=64,perturb_baseline=white)", quantus.PixelFlipping, {"features_in_step": 64}),
    ("region-perturbation(order=lerf)", quantus.RegionPerturbation, {}),
    ("selectivity(patch_size=16)", quantus.Selectivity, {}),
]


@pytest.mark.parametrize("text,cls,kw", COUNTER)
def test_counter_cases(gray, text, cls, kw):
    """A changed parameter on the extagg side gives a different number than Quantus's call without it (so the
    equality tests can fail); the same for the flipped map with the same parameters."""
    model, x, y, maps = gray
    q = theirs(cls, model, x, y, maps["input"], **kw)
    q = np.trapezoid(q, axis=1)
    assert not np.allclose(ours(text, model, x, y, maps["input"], "auc"), q, rtol=1e-3)
    same = text.split("(")[0] + ("(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")" if kw else "")
    assert not np.allclose(ours(same, model, x, y, maps["input"].flip(-1), "auc"), q, rtol=1e-3)


def test_road_and_correlations_detect_other_draws(gray):
    """The random metrics depend on their draws: another seed changes ROAD's curve or the correlations (so the
    monkeypatched equality tests can fail)."""
    model, x, y, maps = gray
    m = maps["input"]
    for text in ("faithfulness-correlation(nr_runs=6,subset_size=64)",
                 "monotonicity-correlation(nr_samples=2,features_in_step=256)"):
        a = score(text, model, x, m, y, registry=builtin_registry(), seed=0).per_image()
        b = score(text, model, x, m, y, registry=builtin_registry(), seed=1).per_image()
        assert not np.allclose(a, b)


# --------------------------------------------------------------------------------------------- sharing
class Counting(torch.nn.Module):
    """Counts the images forwarded through the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.model(x)


def test_identical_maps_cost_one_set_of_forwards(gray):
    """Two identical maps (and a map with the same ranking) cost the forwards of one; the images that do not depend
    on the map (faithfulness correlation's subsets) are forwarded once for all maps; metrics of a batch share
    theirs (selectivity's images are region perturbation's)."""
    model, x, y, maps = gray
    m = maps["input"][None].double()
    counted = Counting(model)
    mf.flip_curves(Forwards(counted, x, y), m, 64)
    one = counted.images
    assert one == len(x) * 16
    counted.images = 0
    twice = mf.flip_curves(Forwards(counted, x, y), torch.cat([m, m, 2 * m + 1]), 64)
    assert counted.images == one
    assert torch.equal(twice[0], twice[1]) and torch.equal(twice[0], twice[2])
    counted.images = 0
    fw = Forwards(counted, x, y)
    mf.faithfulness_correlation(fw, torch.cat([m, maps["2"][None].double(), -m]), [1, 2], 10, 64)
    assert counted.images == len(x) * (10 + 1)  # three maps, one set of subsets per image
    counted.images = 0
    score(["region-perturbation", "selectivity"], counted, x, maps["input"], y, registry=builtin_registry())
    both = counted.images
    counted.images = 0
    score("region-perturbation", counted, x, maps["input"], y, registry=builtin_registry())
    assert both == counted.images == len(x) * (16 + 1) + len(x)  # + the driver's class pass
    reg = builtin_registry()
    assert reg.metrics["faithfulness-correlation"].cost(len(x), [("a", "b")] * 3, 0, nr_runs=10).forward_images \
        == len(x) * 11


def test_model_left_unchanged(gray):
    """The model's mode and parameters are as they were after the family ran (train mode kept)."""
    model, x, y, maps = gray
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        score(["pixel-flipping(features_in_step=128)", "average-drop"], model, x, maps["input"], y,
              registry=builtin_registry())
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_sweep_level_smoke():
    """evaluate() with two of the family's metrics over two methods and layers: finite values in range."""
    model = tiny_model(3)
    g = torch.Generator().manual_seed(4)
    samples = [Sample(torch.rand(3, 16, 16, generator=g), f"im{i}", (0,), None) for i in range(3)]
    out = evaluate(model, samples, ["gradcam", "bias+sum"], ["2", "input"],
                   ["selectivity(patch_size=4)", "faithfulness-correlation(nr_runs=8,subset_size=32)"],
                   registry=builtin_registry(), batch_size=2, mismatched="skip")
    reg = builtin_registry()
    assert out.values
    for v in out.values:
        meas = reg.metrics[v.metric.split("(")[0]].measure(v.measure)
        assert math.isfinite(v.value) and meas.low <= v.value <= meas.high, v


def test_refusals(gray):
    """Bad parameters are refused with the value and what is accepted."""
    model, x, y, maps = gray
    with pytest.raises(Exception, match="perturb_baseline"):
        ours("pixel-flipping(perturb_baseline=grey)", model, x, y, maps["input"])
    with pytest.raises(InputError, match="subset_size 5000 exceeds the 1024 features"):
        ours("faithfulness-correlation(subset_size=5000)", model, x, y, maps["input"])
    with pytest.raises(Exception, match="percentage_start"):
        ours("road(percentage_start=0)", model, x, y, maps["input"])
