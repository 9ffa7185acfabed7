"""Layer combination: formulas against a direct computation, layer order, weights computed from data, the sweep."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import extagg
from extagg_builtins.meta import meta_saliency
from extagg.combine import (
    LayerWeights,
    combination_sweep,
    combine,
    feature_spread_weights,
    layer_order,
    minmax_normalise,
    normalise_weights,
    probe_accuracy_weights,
    resolve_weights,
)
from extagg.errors import InputError


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_minmax(m: torch.Tensor) -> torch.Tensor:
    """Per (image, target) min-max, written with loops; constant maps give zeros."""
    out = torch.zeros_like(m)
    for n in range(m.shape[0]):
        for t in range(m.shape[1]):
            lo, hi = m[n, t].min(), m[n, t].max()
            if hi > lo:
                out[n, t] = (m[n, t] - lo) / (hi - lo)
    return out


def reference_combine(maps: dict, w: dict, mode: str, size) -> torch.Tensor:
    total = sum(w.values())
    acc = None
    for layer, m in maps.items():
        m = reference_minmax(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
        g = w[layer] / total
        term = g * m if mode == "sum" else m ** g
        acc = term if acc is None else (acc + term if mode == "sum" else acc * term)
    return acc


class Net(nn.Module):
    """Registers ``head`` before ``body`` but runs body first: registration order != execution order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, 3)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                                  nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net().double()


def test_minmax_matches_loops_and_constant_maps_give_zeros():
    m = rand(3, 2, 5, 6)
    m[1, 0] = 7.0  # a constant map
    out = minmax_normalise(m)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1, 0], torch.zeros(5, 6, dtype=torch.float64))
    assert torch.allclose(out, reference_minmax(m), rtol=0, atol=1e-15)
    # per image, not over the batch (TorchRay normalises the batch jointly)
    assert torch.allclose(minmax_normalise(m[2:3]), out[2:3], rtol=0, atol=1e-15)
    # counter-case: a joint min-max over the batch is refused by the same comparison
    joint = (m - m.min()) / (m.max() - m.min())
    assert not torch.allclose(out, joint, rtol=0, atol=1e-15)


@pytest.mark.parametrize("mode", ["sum", "product"])
def test_combination_formulas_against_direct_computation(mode):
    maps = {"a": rand(2, 2, 4, 4, seed=1), "b": rand(2, 2, 8, 8, seed=2).abs(), "c": rand(2, 2, 2, 3, seed=3)}
    w = {"a": 0.5, "b": 2.0, "c": 1.5}
    got = combine(maps, w, mode, size=(8, 8))
    assert torch.allclose(got, reference_combine(maps, w, mode, (8, 8)), rtol=1e-12, atol=1e-14)
    uniform = combine(maps, "uniform", mode, size=(8, 8))
    assert torch.allclose(uniform, reference_combine(maps, {k: 1.0 for k in maps}, mode, (8, 8)), rtol=1e-12, atol=1e-14)
    # counter-cases: the reference with the weights of "a" and "c" swapped, or in the other mode, is refused
    swapped = {"a": 1.5, "b": 2.0, "c": 0.5}
    other = "product" if mode == "sum" else "sum"
    for wrong in (reference_combine(maps, swapped, mode, (8, 8)), reference_combine(maps, w, other, (8, 8))):
        assert not torch.allclose(got, wrong, rtol=1e-12, atol=1e-14)


def test_product_is_zero_where_any_layer_is_at_its_minimum_and_zero_weights_drop_out():
    a, b = rand(1, 1, 4, 4, seed=4), rand(1, 1, 4, 4, seed=5)
    out = combine({"a": a, "b": b}, "uniform", "product")
    at_min = (a[0, 0] == a[0, 0].min()) | (b[0, 0] == b[0, 0].min())
    assert torch.equal(out[0, 0][at_min], torch.zeros(int(at_min.sum()), dtype=torch.float64))
    assert (out[0, 0][~at_min] > 0).all()
    only_a = combine({"a": a, "b": b}, {"a": 1.0, "b": 0.0}, "product")
    assert torch.allclose(only_a, reference_minmax(a), rtol=0, atol=1e-15)


def test_combine_reads_a_saliency_result():
    model, x = make_net(), rand(2, 3, 8, 8)
    res = extagg.saliency(model, x, ["normgrad", "gradcam"], ["body.1", "body.3"], targets=[0, 2], resize=True)
    got = combine(res, {"body.1": 1.0, "body.3": 3.0}, "sum", method="normgrad")
    direct = reference_combine({k: res["normgrad", k] for k in ["body.1", "body.3"]},
                               {"body.1": 1.0, "body.3": 3.0}, "sum", (8, 8))
    assert torch.allclose(got, direct, rtol=1e-12, atol=1e-14)
    # counter-case: the other method's maps of the same result are refused
    other = combine(res, {"body.1": 1.0, "body.3": 3.0}, "sum", method="gradcam")
    assert not torch.allclose(other, direct, rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match="several methods"):
        combine(res)


def test_linear_weights_follow_the_model_order_not_the_list_order():
    model, x = make_net(), rand(1, 3, 8, 8)
    layers = ["head", "body.3", "input", "body.1"]
    assert layer_order(model, layers, x) == ["input", "body.1", "body.3", "head"]  # execution order
    assert layer_order(model, layers) == ["input", "head", "body.1", "body.3"]  # registration order (fallback)
    gamma = resolve_weights("linear", ["body.3", "body.1", "head"], layer_order(model, layers, x))
    assert gamma == pytest.approx({"body.1": 1 / 6, "body.3": 2 / 6, "head": 3 / 6}, abs=1e-15)
    assert resolve_weights("uniform", ["a", "b", "c", "d"]) == {k: 0.25 for k in "abcd"}


def test_layer_order_handles_modules_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.a(self.b(self.a(x)))

    assert layer_order(Twice(), ["a@1", "b", "a@0"], torch.randn(1, 3, 2, 2)) == ["a@0", "b", "a@1"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=6).filter(lambda w: sum(w) > 1e-300))
def test_normalised_weights_sum_to_one_and_keep_ratios(ws):
    layers = [f"l{i}" for i in range(len(ws))]
    gamma = normalise_weights(dict(zip(layers, ws)), layers)
    assert math.isclose(sum(gamma.values()), 1.0, rel_tol=1e-12)
    top = max(range(len(ws)), key=lambda i: ws[i])
    for i, layer in enumerate(layers):
        assert math.isclose(gamma[layer] * ws[top], ws[i] * gamma[layers[top]], rel_tol=1e-9, abs_tol=1e-300)
    assert LayerWeights(dict(zip(layers, ws))).normalised() == gamma


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3), mode=st.sampled_from(["sum", "product"]),
       seed=st.integers(0, 1000))
def test_combination_invariant_to_positive_affine_rescaling_of_each_map(scale, shift, mode, seed):
    maps = {"a": rand(2, 1, 5, 5, seed=seed), "b": rand(2, 1, 5, 5, seed=seed + 1)}
    w = {"a": 1.0, "b": 3.0}
    moved = {"a": maps["a"] * scale + shift, "b": maps["b"]}
    assert torch.allclose(combine(moved, w, mode), combine(maps, w, mode), rtol=1e-6, atol=1e-9)
    # counter-case: a negative scale is not a positive affine map; it mirrors "a"'s min-max map
    flipped = {"a": maps["a"] * -scale + shift, "b": maps["b"]}
    assert not torch.allclose(combine(flipped, w, mode), combine(maps, w, mode), rtol=1e-6, atol=1e-9)


def pooled(model, x, module):
    feats = []
    handle = module.register_forward_hook(lambda m, a, o: feats.append(o.detach().mean((2, 3))))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return feats[0]


def test_feature_spread_against_direct_computation():
    model, x = make_net(), rand(6, 3, 8, 8, seed=7)
    weights = feature_spread_weights(model, x, ["body.1", "body.3"], batch_size=4)
    for layer, module in [("body.1", model.body[1]), ("body.3", model.body[3])]:
        f = pooled(model, x, module)
        spread = sum((f[i] - f.mean(0)).abs().mean() for i in range(6)) / 6
        assert weights.values[layer] == pytest.approx(float(spread / f.abs().mean()), rel=1e-12)
    absolute = feature_spread_weights(model, x, ["body.1"], relative=False)
    f = pooled(model, x, model.body[1])
    assert absolute.values["body.1"] == pytest.approx(float((f - f.mean(0)).abs().mean()), rel=1e-12)
    # relative spread does not depend on the layer's scale: scale conv1 (before a ReLU) by 10
    with torch.no_grad():
        model.body[0].weight *= 10
        model.body[0].bias *= 10
    assert feature_spread_weights(model, x, ["body.1"]).values["body.1"] == pytest.approx(weights.values["body.1"], rel=1e-10)
    # counter-case: the absolute spread does depend on it
    scaled = feature_spread_weights(model, x, ["body.1"], relative=False).values["body.1"]
    assert scaled == pytest.approx(10 * absolute.values["body.1"], rel=1e-10)
    with pytest.raises(InputError, match="M >= 2"):
        feature_spread_weights(model, x[:1], ["body.1"])


def probe_data(m=40):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([i % 3 for i in range(m)])
    x = 0.1 * torch.randn(m, 3, 4, 4, generator=g, dtype=torch.float64)
    x[torch.arange(m), labels] += 1.0  # channel = class: linearly separable after mean pooling
    informative = nn.Conv2d(3, 3, 1).double()
    constant = nn.Conv2d(3, 3, 1).double()
    with torch.no_grad():
        informative.weight.copy_(torch.eye(3, dtype=torch.float64)[:, :, None, None])
        informative.bias.zero_()
        constant.weight.zero_()
        constant.bias.fill_(1.0)
    model = nn.Sequential(informative, constant, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return model, x, labels


def test_probe_accuracy_weights_from_data():
    model, x, labels = probe_data()
    w = probe_accuracy_weights(model, x, labels, ["0", "1"], seed=0)
    assert w.values["0"] == 1.0  # separable features
    val = torch.tensor(w.details["split"]["val"])
    assert sorted(w.details["split"]["val"] + w.details["split"]["train"]) == list(range(40))
    assert len(val) == 20
    counts = torch.bincount(labels[val], minlength=3)
    assert w.values["1"] <= counts.max().item() / len(val)  # constant features: at most the majority rate
    again = probe_accuracy_weights(model, x, labels, ["0", "1"], seed=0)
    assert again.values == w.values and again.details == w.details  # a fixed seed is deterministic
    assert w.normalised(["0", "1"])["0"] > 0.5


def test_probe_accuracy_rejects_bad_labels():
    model, x, labels = probe_data()
    with pytest.raises(InputError, match="40 integer class indices"):
        probe_accuracy_weights(model, x, labels[:5], ["0"])
    with pytest.raises(InputError, match="40 integer class indices"):
        probe_accuracy_weights(model, x, labels.double(), ["0"])
    with pytest.raises(InputError, match="val_fraction"):
        probe_accuracy_weights(model, x, labels, ["0"], val_fraction=1.0)


@pytest.mark.parametrize("call, fragment", [
    (lambda m: combine(m, mode="mean"), "mode must be one of"),
    (lambda m: combine(m, {"a": -1.0, "b": 1.0}), "weight of layer 'a' must be a finite number >= 0, got -1.0"),
    (lambda m: combine(m, {"a": 1.0}), r"no weight for layer\(s\) \['b'\]"),
    (lambda m: combine(m, {"a": 0.0, "b": 0.0}), "sum to 0"),
    (lambda m: combine(m, "linear"), "needs the model's layer order"),
    (lambda m: combine(m, "depth"), "weights must be 'uniform', 'linear'"),
    (lambda m: combine(m, layers=["a", "z"]), r"no map for layer\(s\) \['z'\]"),
    (lambda m: combine({"a": m["a"], "b": m["b"][..., :2, :]}), "different sizes"),
    (lambda m: combine({"a": m["a"] * float("nan"), "b": m["b"]}), "NaN or inf"),
])
def test_bad_input_is_named(call, fragment):
    maps = {"a": rand(1, 1, 4, 4), "b": rand(1, 1, 4, 4, seed=1)}
    with pytest.raises(InputError, match=fragment):
        call(maps)


def test_sweep_gives_every_single_layer_and_every_combination():
    model, x = make_net(), rand(3, 3, 8, 8, seed=9)
    layers = ["body.3", "body.1"]
    seen = []

    def scorer(m, targets):
        seen.append(targets)
        return float(m[:, :, :4, :4].mean())  # any callable; here: mass in the top-left quarter

    sweep = combination_sweep(model, x, ["normgrad", "meta:gradcam"], layers, targets=[0, 1, 2],
                              weightings=["uniform", "linear", ("mine", {"body.1": 1.0, "body.3": 4.0})],
                              modes=["sum", "product"], scorer=scorer)
    assert len(sweep.entries) == 2 * (2 + 3 * 2)
    assert all(torch.equal(t, torch.tensor([[0], [1], [2]])) for t in seen)
    plain = extagg.saliency(model, x, "normgrad", layers, [0, 1, 2], resize=True)
    meta = meta_saliency(model, x, "gradcam", layers, [0, 1, 2], resize=True)
    for e in sweep.entries:
        source = plain if e.method == "conv1x1+norm" else meta
        key = "normgrad" if e.method == "conv1x1+norm" else "meta:gradcam"
        if e.weighting is None:
            assert torch.allclose(e.map, source[key, e.layers[0]], rtol=1e-12, atol=1e-14)
        else:
            w = {"uniform": {"body.1": 1, "body.3": 1}, "linear": {"body.1": 1, "body.3": 2},
                 "mine": {"body.1": 1, "body.3": 4}}[e.weighting]
            ref = reference_combine({k: source[key, k] for k in layers}, w, e.mode, (8, 8))
            assert torch.allclose(e.map, ref, rtol=1e-12, atol=1e-14), e.label
        assert e.score == pytest.approx(float(e.map[:, :, :4, :4].mean()), rel=1e-12)
    # counter-case: an entry against the reference of another weighting, or another layer, is refused
    linear = next(e for e in sweep.entries if e.method == "conv1x1+norm" and e.weighting == "linear")
    mine = reference_combine({k: plain["normgrad", k] for k in layers}, {"body.1": 1, "body.3": 4}, linear.mode,
                             (8, 8))
    assert not torch.allclose(linear.map, mine, rtol=1e-12, atol=1e-14)
    single = next(e for e in sweep.entries if e.method == "conv1x1+norm" and e.weighting is None)
    assert not torch.allclose(single.map, plain["normgrad", next(k for k in layers if k != single.layers[0])])
    single, combo = sweep.best("conv1x1+norm")
    mine = [e for e in sweep.entries if e.method == "conv1x1+norm"]
    assert single.score == max(e.score for e in mine if e.weighting is None)
    assert combo.score == max(e.score for e in mine if e.weighting is not None)
    assert sweep.gammas["linear"] == pytest.approx({"body.1": 1 / 3, "body.3": 2 / 3})
    assert {row["label"] for row in sweep.table()} >= {"body.1", "sum[linear]", "product[mine]"}


def test_sweep_with_data_weightings_and_errors():
    model, x, labels = probe_data(12)
    layers = ["0", "1"]
    sweep = combination_sweep(model, x, "scaling+sum", layers, labels,
                              weightings=["feature-spread", "probe-accuracy"], modes=["sum"], labels=labels)
    spread = feature_spread_weights(model, x, layers).normalised()
    assert sweep.gammas["feature-spread"] == pytest.approx(spread, rel=1e-12)
    probe = probe_accuracy_weights(model, x, labels, layers)
    assert sweep.gammas["probe-accuracy"] == pytest.approx(probe.normalised(), rel=1e-12)
    assert sweep.gammas["feature-spread"]["1"] == 0.0  # a constant layer has no spread
    model, x = make_net(), rand(6, 3, 8, 8, seed=10)
    with pytest.raises(InputError, match="needs labels"):
        combination_sweep(model, x, "normgrad", ["body.1"], weightings=["probe-accuracy"])
    with pytest.raises(InputError, match="modes must be"):
        combination_sweep(model, x, "normgrad", ["body.1"], modes=["max"])
    with pytest.raises(InputError, match="no scores"):
        combination_sweep(model, x, "normgrad", ["body.1", "body.3"]).best("conv1x1+norm")


def test_layer_requests_are_the_ones_saliency_takes():
    """Patterns, groups and module objects name the same layers as their names, in every function that takes a
    model; combine() expands patterns over the layers its maps hold."""
    model, x = make_net(), rand(4, 3, 8, 8, seed=11)
    by_name = ["body.1", "body.3"]
    for request in ("body.[13]", [model.body[3], model.body[1]], ["body.1", model.body[3], "body.[13]"]):
        assert layer_order(model, request, x) == by_name
        got = feature_spread_weights(model, x, request)
        assert got.values == feature_spread_weights(model, x, by_name).values
    sweep = combination_sweep(model, x, "normgrad", [model.body[1], "body.3"], targets=[0, 1, 2, 0],
                              weightings=["linear"], modes=["sum"])
    reference = combination_sweep(model, x, "normgrad", by_name, targets=[0, 1, 2, 0], weightings=["linear"],
                                  modes=["sum"])
    assert [e.layers for e in sweep.entries] == [e.layers for e in reference.entries]
    assert all(torch.equal(a.map, b.map) for a, b in zip(sweep.entries, reference.entries))
    # counter-case: the same layers for other targets give other maps
    moved = combination_sweep(model, x, "normgrad", [model.body[1], "body.3"], targets=[1, 2, 0, 1],
                              weightings=["linear"], modes=["sum"])
    assert not any(torch.equal(a.map, b.map) for a, b in zip(moved.entries, reference.entries))
    maps = {"body.1": rand(1, 1, 4, 4), "body.3": rand(1, 1, 4, 4, seed=1), "head": rand(1, 1, 4, 4, seed=2)}
    assert torch.equal(combine(maps, layers="body.*"), combine(maps, layers=by_name))
    assert not torch.equal(combine(maps, layers="**"), combine(maps, layers=by_name))  # head joins: differs
    assert torch.equal(combine(maps, layers="*"), combine(maps, layers=["head"]))  # '*' stops at a dot
    with pytest.raises(extagg.errors.UnknownNameError, match="body"):
        combine(maps, layers="bdy.*")
    with pytest.raises(InputError, match="not a submodule"):
        layer_order(model, [nn.Conv2d(3, 3, 1)], x)
    with pytest.raises(InputError, match="no layers given"):
        combination_sweep(model, x, "normgrad", [])
