"""Similarity measures against scipy / scikit-image, records, and the sensitivity / randomisation / identity
evaluations on a tiny model against straightforward independent computations."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from scipy.stats import spearmanr
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity
from model_state import assert_unchanged, snapshot
from strategies_evaluation import map_pairs, tiny_cnn

import extagg
from extagg.errors import InputError
from extagg.evaluation import (Record, Sample, cascading_order, class_sensitivity, execution_positions, hog,
                               hog_similarity, identity_check, map_similarities, minmax, parameter_randomisation,
                               randomise_module, records_to_csv, records_to_json, spearman, ssim, summarise,
                               write_records)

PAIR = ("normgrad", "normgrad-conv")  # the identity check's (identity, real) methods


# ----------------------------------------------------------------------------- similarity
@settings(max_examples=60, deadline=None)
@given(map_pairs())
def test_spearman_matches_scipy_with_ties(pair):
    a, b = pair
    expected = spearmanr(a.ravel(), b.ravel())[0] if a.std() > 0 and b.std() > 0 else math.nan
    got = float(spearman(torch.tensor(a), torch.tensor(b)))
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_spearman_constant_nan_shift_and_batch():
    a = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    b = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    r = spearman(a, b)
    assert r.shape == (2, 3)
    assert float(r[1, 2]) == pytest.approx(spearmanr(a[1, 2].ravel(), b[1, 2].ravel())[0], abs=1e-12)
    torch.testing.assert_close(spearman(a + 1e-6, b), r)
    assert torch.isnan(spearman(torch.zeros(4, 4), torch.rand(4, 4)))
    nan_map = torch.rand(4, 4)
    nan_map[1, 1] = math.nan
    assert torch.isnan(spearman(nan_map, torch.rand(4, 4)))
    assert float(spearman(a[0, 0], -a[0, 0])) == pytest.approx(-1.0)
    with pytest.raises(InputError, match="same shape"):
        spearman(torch.rand(3, 3), torch.rand(3, 4))


def test_ssim_matches_skimage():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 30, 41, dtype=torch.float64, generator=g)
    y = (x + 0.4 * torch.rand(2, 30, 41, dtype=torch.float64, generator=g)).clamp(0, 1)
    got = ssim(x, y, data_range=1.0)
    for i in range(2):
        ref = structural_similarity(x[i].numpy(), y[i].numpy(), gaussian_weights=True, data_range=1.0)
        assert float(got[i]) == pytest.approx(ref, abs=1e-10)
    assert float(ssim(x[0], x[0])) == pytest.approx(1.0)
    with pytest.raises(InputError, match="11x11"):
        ssim(torch.rand(8, 20), torch.rand(8, 20))


def test_hog_and_hog_similarity_match_skimage():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 50, 70, dtype=torch.float64, generator=g)
    y = torch.rand(2, 50, 70, dtype=torch.float64, generator=g)
    h = hog(x, cell=16)
    for i in range(2):
        ref = sk_hog(x[i].numpy(), pixels_per_cell=(16, 16))
        np.testing.assert_allclose(h[i].numpy(), ref, atol=1e-6)
    ref8 = sk_hog(x[0].numpy(), pixels_per_cell=(8, 8), cells_per_block=(2, 2), orientations=6)
    np.testing.assert_allclose(hog(x[0], cell=8, block=2, orientations=6).numpy(), ref8, atol=1e-6)
    sim = hog_similarity(x, y)
    ref = spearmanr(sk_hog(x[1].numpy(), pixels_per_cell=(16, 16)), sk_hog(y[1].numpy(), pixels_per_cell=(16, 16)))[0]
    assert float(sim[1]) == pytest.approx(ref, abs=1e-6)
    with pytest.raises(InputError, match="48x48"):
        hog(torch.rand(40, 60))


def _one_hot_histograms(x, cell, orientations):
    """The cell histograms of hog() by an explicit one-hot sum (maps x pixels x bins), as an oracle."""
    g_row, g_col = torch.zeros_like(x), torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    mag = torch.hypot(g_col, g_row)
    ori = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    width = 180.0 / orientations
    edges = torch.tensor([width * (i + 1) for i in range(orientations)], dtype=x.dtype)
    lower = torch.cat([torch.zeros(1, dtype=x.dtype), edges[:-1]])
    onehot = (ori[..., None] >= lower) & (ori[..., None] < edges)
    ncr, ncc = x.shape[1] // cell, x.shape[2] // cell
    contrib = (mag[..., None] * onehot)[:, : ncr * cell, : ncc * cell]
    return contrib.reshape(-1, ncr, cell, ncc, cell, orientations).sum((2, 4)) / (cell * cell)


def test_hog_histograms_by_index_equal_the_one_hot_sum_with_ties_nan_and_inf():
    """hog() bins each pixel by index; with non-finite magnitudes, angles on bin edges (a staircase) and a
    constant map, its features equal those of the one-hot sum, NaN where the one-hot sum gives NaN."""
    from extagg.evaluation import similarity

    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 40, 56, dtype=torch.float64, generator=g)
    x[1] = (torch.arange(40.0)[:, None] + torch.arange(56.0)[None, :]).to(x)  # 45-degree gradients: a bin edge
    x[2] = 0.5
    x[3, 20, 30], x[3, 5, 5] = math.inf, math.nan
    for cell, orientations in ((8, 9), (8, 4), (16, 6)):
        want_hist = _one_hot_histograms(x, cell, orientations)
        calls = []

        def unfold_spy(t, *args, _real=torch.Tensor.unfold):
            calls.append(t)
            return _real(t, *args)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.Tensor, "unfold", unfold_spy)
            similarity.hog(x, cell=cell, block=2, orientations=orientations)
        got_hist = calls[0]
        torch.testing.assert_close(got_hist, want_hist, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isnan(hog(x, cell=8, block=2)[3]).any() and not torch.isnan(hog(x, cell=8, block=2)[:3]).any()


def test_hog_oracle_comparison_detects_a_shifted_bin():
    """The comparison above can fail: hog()'s own histograms of a mirrored image (each gradient in another bin),
    caught the same way, differ from the oracle's histograms of the image; so do the oracle's, shifted one bin."""
    from extagg.evaluation import similarity

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 40, 56, dtype=torch.float64, generator=g)
    want = _one_hot_histograms(x, 8, 9)
    calls = []

    def unfold_spy(t, *args, _real=torch.Tensor.unfold):
        calls.append(t)
        return _real(t, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "unfold", unfold_spy)
        similarity.hog(x.flip(-1), cell=8, block=2, orientations=9)
    assert calls[0].shape == want.shape
    with pytest.raises(AssertionError):
        torch.testing.assert_close(calls[0], want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert not torch.allclose(want.roll(1, -1), want)


@pytest.mark.parametrize("kwargs, shown", [(dict(cell=0), "0, 3, 9"), (dict(block=0), "16, 0, 9"),
                                           (dict(orientations=0), "16, 3, 0")])
def test_hog_refuses_a_zero_cell_block_or_orientation_count(kwargs, shown):
    """Each of hog()'s counts must be at least 1; the error names the three values given."""
    with pytest.raises(InputError, match=f"must be >= 1, got {shown}"):
        hog(torch.rand(64, 64, dtype=torch.float64), **kwargs)


def test_minmax_constant_map_is_zero():
    m = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    torch.testing.assert_close(minmax(m), torch.tensor([[0.0, 0.5], [0.25, 1.0]], dtype=torch.float64))
    assert minmax(torch.full((3, 3), 7.0)).abs().max() == 0


# ----------------------------------------------------------------------------- records
def test_summarise_counts_nan_separately():
    recs = {r.metric: r for r in summarise(torch.tensor([0.5, math.nan, 0.1]), "m", "l", "s", "spearman")}
    assert recs["spearman"].value == pytest.approx(0.3) and recs["spearman"].count == 2
    assert recs["spearman_std"].value == pytest.approx(math.sqrt(0.08))  # the sample std of 0.5 and 0.1
    assert recs["spearman_nan"].value == 1 and recs["spearman_nan"].count == 3
    allnan = {r.metric: r for r in summarise(torch.tensor([math.nan]), "m", "l", "s", "x")}
    assert math.isnan(allnan["x"].value) and allnan["x"].count == 0


def test_record_writers(tmp_path):
    recs = [Record("scaling+sum", "layer4", "all", "pointing_accuracy", 0.75, 4), Record("c", "", "all", "x", math.nan, 0)]
    csv_text = records_to_csv(recs)
    assert csv_text.splitlines()[0] == "method,layer,subset,metric,value,count"
    assert csv_text.splitlines()[1] == "scaling+sum,layer4,all,pointing_accuracy,0.75,4"
    data = json.loads(records_to_json(recs))
    assert data[0] == {"method": "scaling+sum", "layer": "layer4", "subset": "all", "metric": "pointing_accuracy",
                       "value": 0.75, "count": 4}
    assert data[1]["value"] is None
    write_records(recs, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())[0]["count"] == 4
    with pytest.raises(InputError, match=".csv or .json"):
        write_records(recs, tmp_path / "r.txt")


# ----------------------------------------------------------------------------- class sensitivity
def _images(n=5, h=20, w=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Sample(torch.rand(3, h, w, generator=g, dtype=torch.float64), f"i{i}", (i % 3,)) for i in range(n)]


def test_class_sensitivity_matches_straightforward_computation():
    model = tiny_cnn(num_classes=6)
    samples = _images()
    before = snapshot(model)
    recs = class_sensitivity(model, samples, ["linear-approx", "gradient"], ["input", "2"], batch_size=2)
    assert_unchanged(before, model)
    got = {(r.method, r.layer, r.metric): r for r in recs if r.subset == "top-vs-bottom"}
    for method in ("linear-approx", "gradient"):
        canon = str(extagg.parse_method(method))
        for layer in ("input", "2"):
            signed, absolute = [], []
            for s in samples:
                x = s.image[None]
                with torch.no_grad():
                    probs = torch.softmax(model(x), 1)[0]
                top, bottom = int(probs.argmax()), int(probs.argmin())
                mt = extagg.saliency(model, x, method, layer, targets=top, resize=True)[method, layer][0, 0].numpy()
                mb = extagg.saliency(model, x, method, layer, targets=bottom, resize=True)[method, layer][0, 0].numpy()
                signed.append(spearmanr(mt.ravel(), mb.ravel())[0])
                absolute.append(spearmanr(np.abs(mt).ravel(), np.abs(mb).ravel())[0])
            assert got[canon, layer, "spearman"].value == pytest.approx(np.mean(signed), abs=1e-9)
            assert got[canon, layer, "spearman_std"].value == pytest.approx(np.std(signed, ddof=1), abs=1e-9)
            assert got[canon, layer, "spearman_abs"].value == pytest.approx(np.mean(absolute), abs=1e-9)
            assert got[canon, layer, "spearman"].count == len(samples)


def test_class_sensitivity_counts_constant_maps_as_nan():
    # at the layer feeding GAP + Linear, d score / d activation is constant over space: 'bias+sum' maps are constant
    model = tiny_cnn(num_classes=4)
    recs = {r.metric: r for r in class_sensitivity(model, _images(3), "gradient-sum", "3")}
    assert recs["spearman_nan"].value == 3 and recs["spearman_nan"].count == 3
    assert recs["spearman"].count == 0 and math.isnan(recs["spearman"].value)


def test_class_sensitivity_needs_two_classes():
    model = tiny_cnn(num_classes=1)
    with pytest.raises(InputError, match="C >= 2"):
        class_sensitivity(model, _images(1), "gradient", "input")


# ----------------------------------------------------------------------------- randomisation
def test_randomise_module_is_deterministic_keeps_buffers_and_global_rng():
    model = tiny_cnn(bn=True)
    model[3].running_mean.fill_(0.5)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    state = torch.random.get_rng_state()
    randomise_module(a[2], 11)
    randomise_module(b[2], 11)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a[2].weight, b[2].weight) and not torch.equal(a[2].weight, model[2].weight)
    randomise_module(a[3], 5)
    assert torch.equal(a[3].running_mean, model[3].running_mean)          # running statistics kept
    randomise_module(b[2], 12)
    assert not torch.equal(a[2].weight, b[2].weight)
    with pytest.raises(InputError, match="init"):
        randomise_module(a[2], 1, init="uniform")


def test_randomisation_records_match_independent_metrics_and_model_untouched():
    model = tiny_cnn(num_classes=4)
    model.train()                                    # must stay in train mode
    model[0].weight.grad = torch.ones_like(model[0].weight)
    samples = _images(4, h=24, w=24)
    before = snapshot(model)
    recs = parameter_randomisation(model, samples, ["linear-approx", "normgrad"], ["input", "3"],
                                   randomise=["6", "2"], mode="both", hog_cell=8, batch_size=3)
    assert_unchanged(before, model)
    got = {(r.method, r.layer, r.subset, r.metric): r.value for r in recs}
    # independent: randomise copies ourselves with the public re-initialiser, metrics with scipy / skimage
    trained = copy.deepcopy(model).eval()
    casc = copy.deepcopy(trained)
    randomise_module(casc.get_submodule("6"), 0 + 7919 * 1)
    randomise_module(casc.get_submodule("2"), 0 + 7919 * 2)
    indep = copy.deepcopy(trained)
    randomise_module(indep.get_submodule("2"), 0 + 7919 * 2)
    for method in ("linear-approx", "normgrad"):
        canon = str(extagg.parse_method(method))
        for layer in ("input", "3"):
            for subset, other in (("cascading:2", casc), ("independent:2", indep)):
                sp, ss = [], []
                for s in samples:
                    x = s.image[None]
                    base = extagg.saliency(trained, x, method, layer, resize=True)
                    m0 = base[method, layer][0, 0].numpy()
                    m1 = extagg.saliency(other, x, method, layer, targets=base.targets, resize=True)[method, layer][0, 0].numpy()
                    sp.append(spearmanr(m0.ravel(), m1.ravel())[0])
                    n0 = (m0 - m0.min()) / (m0.max() - m0.min())
                    n1 = (m1 - m1.min()) / (m1.max() - m1.min())
                    ss.append(structural_similarity(n0, n1, gaussian_weights=True, data_range=1.0))
                assert got[canon, layer, subset, "spearman"] == pytest.approx(np.mean(sp), abs=1e-9)
                assert got[canon, layer, subset, "ssim"] == pytest.approx(np.mean(ss), abs=1e-9)
    # the first cascading step and the independent step of the same block are the same model
    for key in [k for k in got if k[2] == "cascading:6"]:
        assert got[key] == got[(key[0], key[1], "independent:6", key[3])]
    # NormGrad at the layer feeding GAP: ||g_u|| is constant over space, so re-drawing the head only rescales the map
    for metric in ("spearman", "spearman_abs", "ssim", "hog"):
        assert got["conv1x1+norm", "3", "independent:6", metric] == pytest.approx(1.0, abs=1e-9)
    assert got["scaling+sum", "3", "independent:6", "spearman"] < 0.9
    assert abs(got["scaling+sum", "input", "floor:smooth-noise", "spearman"]) < 0.2


def test_randomisation_default_blocks_in_output_first_order_and_model_untouched_on_error():
    model = tiny_cnn(num_classes=4)
    recs = parameter_randomisation(model, _images(2, h=24, w=24), "linear-approx", "input", mode="cascading",
                                   hog_cell=8, baseline=False)
    subsets = list(dict.fromkeys(r.subset for r in recs))
    assert subsets == ["cascading:6", "cascading:2", "cascading:0"]

    def broken():
        yield from _images(2, h=24, w=24)
        raise RuntimeError("disk went away")

    before = snapshot(model)
    with pytest.raises(RuntimeError, match="disk went away"):
        parameter_randomisation(model, broken(), "linear-approx", "input", hog_cell=8, batch_size=1)
    assert_unchanged(before, model)
    with pytest.raises(InputError, match="mode"):
        parameter_randomisation(model, _images(1), "gradient", "input", mode="sideways")
    with pytest.raises(InputError, match="no parameters"):
        parameter_randomisation(model, _images(1, h=24, w=24), "gradient", "input", randomise=["1"], hog_cell=8)
    with pytest.raises(extagg.UnknownNameError):
        parameter_randomisation(model, _images(1, h=24, w=24), "gradient", "input", randomise=["nope"], hog_cell=8)


class _AttributeOrderNotExecutionOrder(torch.nn.Module):
    """Attributes head, blocks (a ModuleList, never called itself), stem, bn; runs stem, bn, blocks, head."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x.mean((2, 3)))


def test_cascading_order_is_execution_order_from_the_output():
    """The old order (forward calls of top-level children, uncalled containers last) was
    head, bn, stem, blocks: the blocks were randomised after the stem."""
    torch.manual_seed(0)
    model = _AttributeOrderNotExecutionOrder().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert cascading_order(model, None, x) == ["head", "blocks.1", "blocks.0", "bn", "stem"]
    assert cascading_order(model, "blocks.*", x) == ["blocks.1", "blocks.0"]
    assert cascading_order(model, ["stem", "head"], x) == ["stem", "head"]          # explicit: as given
    positions, called = execution_positions(model, x)
    assert "blocks" not in called and {"stem", "bn", "blocks.0", "head"} <= called
    assert positions["blocks"] == positions["blocks.1"] and positions["stem"] < positions["bn"] < positions["blocks.0"]
    recs = parameter_randomisation(model, _images(1, h=24, w=24), "linear-approx", "input", mode="cascading",
                                   hog_cell=8, baseline=False)
    assert list(dict.fromkeys(r.subset for r in recs)) == [f"cascading:{n}" for n in
                                                           ["head", "blocks.1", "blocks.0", "bn", "stem"]]


def test_cascading_order_of_efficientnet_lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    from extagg.models import load_model

    model, _ = load_model()
    order = cascading_order(model, None, torch.rand(1, 3, 64, 64))
    assert order == ["_fc", "_bn1", "_conv_head", *[f"_blocks.{i}" for i in range(15, -1, -1)], "_bn0", "_conv_stem"]


def test_randomised_batchnorm_gets_random_gamma_and_beta():
    bn = torch.nn.BatchNorm2d(2000)
    bn.running_mean.uniform_(-1, 1)
    means = bn.running_mean.clone()
    other = copy.deepcopy(bn)
    randomise_module(bn, 3)
    randomise_module(other, 3)
    assert torch.equal(bn.weight, other.weight) and torch.equal(bn.bias, other.bias)   # deterministic
    assert torch.equal(bn.running_mean, means)                                          # statistics kept
    for p in (bn.weight.detach(), bn.bias.detach()):
        assert p.abs().max() <= 2 and abs(float(p.mean())) < 0.1 and 0.8 < float(p.std()) < 0.95
    assert not torch.allclose(bn.weight, bn.bias)
    layer_norm = torch.nn.LayerNorm(50)
    randomise_module(layer_norm, 1, init="normal")
    assert float(layer_norm.weight.detach().std()) > 0.5


# ----------------------------------------------------------------------------- identity check
def _conv_maps(model, x, target, layer_index):
    """Straightforward NormGrad maps at a conv: identity (||g|| ||x_out||) and real conv (||g|| ||patch(x_in)||)."""
    conv = model[layer_index]
    store = {}
    h1 = conv.register_forward_hook(lambda m, a, o: store.update(inp=a[0].detach(), out=o))
    try:
        x = x.clone()
        out = model(x)
        g = torch.autograd.grad(out[0, target], store["out"])[0]
    finally:
        h1.remove()
    patches = F.unfold(store["inp"], conv.kernel_size, padding=conv.padding, stride=conv.stride)
    gn = g.norm(dim=1)[0]
    ident = gn * store["out"].detach().norm(dim=1)[0]
    real = gn * patches.norm(dim=1).reshape(gn.shape)
    size = x.shape[-2:]
    up = lambda m: F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return up(ident), up(real)


def test_identity_check_matches_straightforward_computation():
    model = tiny_cnn(num_classes=4)
    samples = _images(4)
    before = snapshot(model)
    recs = identity_check(model, samples, ["0", "2"], methods=PAIR, batch_size=3)
    assert_unchanged(before, model)
    got = {(r.layer, r.metric): r for r in recs}
    for layer in (0, 2):
        rs = []
        for s in samples:
            a, b = _conv_maps(model, s.image[None], s.classes[0], layer)
            rs.append(spearmanr(a.ravel(), b.ravel())[0])
        assert got[str(layer), "spearman"].value == pytest.approx(np.mean(rs), abs=1e-9)
        assert got[str(layer), "spearman_std"].value == pytest.approx(np.std(rs, ddof=1), abs=1e-9)
    assert {r.method for r in recs} == {"normgrad vs normgrad-conv"}


def test_identity_check_pointing_difference_and_errors():
    model = tiny_cnn(num_classes=4)
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, :3, :3] = True
    masks[1, 10:, 10:] = True
    samples = [Sample(torch.rand(3, 20, 20, generator=g), f"p{i}", (0, 2), masks) for i in range(3)]
    recs = identity_check(model, samples, "2", methods=PAIR, num_classes=4)
    acc = {(r.method, r.subset): r.value for r in recs if r.metric == "pointing_accuracy" and r.layer == "2"}
    diff = {r.subset: r.value for r in recs if r.metric == "pointing_difference"}
    assert diff["all"] == pytest.approx(acc["conv1x1+norm", "all"] - acc["conv+norm", "all"])
    assert [r.count for r in recs if r.metric == "spearman"] == [6]        # (image, class) pairs
    with pytest.raises(InputError, match="Conv2d"):
        identity_check(model, _images(1), "1", methods=PAIR)
    with pytest.raises(InputError, match="targets"):
        identity_check(model, _images(1), "0", methods=PAIR, targets="ground-truth")
    with pytest.raises(InputError, match="label"):
        identity_check(model, [Sample(torch.rand(3, 8, 8), "x")], "0", methods=PAIR)


def test_class_sensitivity_meta_variant_matches_per_pair_computation():
    model = tiny_cnn(num_classes=5)
    samples = _images(3, h=12, w=12)
    before = snapshot(model)
    recs = class_sensitivity(model, samples, ["meta(lr=0.01):normgrad", "normgrad"], "2", batch_size=3)
    assert_unchanged(before, model)
    got = {(r.method, r.metric): r.value for r in recs if r.subset == "top-vs-bottom"}
    for method in ("meta(lr=0.01):normgrad", "normgrad"):
        canon = str(extagg.parse_method(method))
        rs = []
        for s in samples:
            x = s.image[None]
            with torch.no_grad():
                out = model(x)[0]
            mt = extagg.saliency(model, x, method, "2", targets=int(out.argmax()), resize=True)[method, "2"][0, 0]
            mb = extagg.saliency(model, x, method, "2", targets=int(out.argmin()), resize=True)[method, "2"][0, 0]
            rs.append(spearmanr(mt.numpy().ravel(), mb.numpy().ravel())[0])
        assert got[canon, "spearman"] == pytest.approx(np.mean(rs), abs=1e-9)
    assert got["meta(lr=0.01):conv1x1+norm", "spearman"] != got["conv1x1+norm", "spearman"]


def _similarity_maps(dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.rand(6, 48, 48, generator=g, dtype=torch.float64)
    a[1] = 0.25  # constant
    a[2] = a[2].round(decimals=1)  # ties
    a[3, 0, 0] = math.nan
    b = torch.rand(6, 48, 48, generator=g, dtype=torch.float64)
    b[4] = 1.0
    return a.to(dtype), b.to(dtype)


def _independent_similarities(a, b, cell):
    """map_similarities' four numbers per map, from scipy and scikit-image only: NaN where either map holds a
    NaN or is constant (Spearman), maps scaled to [0, 1] by their own range (all 0 where constant or holding a
    NaN) for SSIM and HOG."""
    out = {k: [] for k in ("spearman", "spearman_abs", "ssim", "hog")}
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        def rho(u, v):
            bad = any(np.isnan(t).any() or np.nanmax(t) == np.nanmin(t) for t in (u, v))
            return math.nan if bad else spearmanr(u.ravel(), v.ravel())[0]

        def scaled(t):
            span = t.max() - t.min()  # NaN with a NaN pixel: then all zeros, like a constant map
            return (t - t.min()) / span if span > 0 else np.zeros_like(t)

        out["spearman"].append(rho(x, y))
        out["spearman_abs"].append(rho(np.abs(x), np.abs(y)))
        out["ssim"].append(structural_similarity(scaled(x), scaled(y), gaussian_weights=True, data_range=1.0))
        out["hog"].append(rho(sk_hog(scaled(x), pixels_per_cell=(cell, cell)),
                              sk_hog(scaled(y), pixels_per_cell=(cell, cell))))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_similarity_reference_gives_map_similarities_bit_for_bit(dtype):
    """One prepared reference compared with several maps = each quantity computed from scratch, exactly; and
    map_similarities equals an independent computation with scipy and scikit-image."""
    from extagg.evaluation.similarity import similarities_to, similarity_reference

    a, b = _similarity_maps(dtype)
    reference = similarity_reference(a, hog_cell=8)
    for other in (b, -b, a.flip(-1)):
        got = similarities_to(reference, other)
        want = {"spearman": spearman(a, other), "spearman_abs": spearman(a.abs(), other.abs()),
                "ssim": ssim(minmax(a), minmax(other), data_range=1.0),
                "hog": hog_similarity(minmax(a), minmax(other), cell=8)}
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)
        whole = map_similarities(a, other, hog_cell=8)
        independent = _independent_similarities(a, other, 8)
        for k in want:
            atol = 1e-5 if k == "hog" else 1e-9  # scikit-image's HOG differs by ~1e-6 (see above)
            torch.testing.assert_close(whole[k], independent[k], rtol=0, atol=atol, equal_nan=True)


def test_similarity_reference_is_specific_to_its_maps():
    """The comparison above can fail: a reference prepared from other maps gives other numbers."""
    from extagg.evaluation.similarity import similarities_to, similarity_reference

    a, b = _similarity_maps(torch.float64)
    wrong = similarities_to(similarity_reference(a.flip(-2), hog_cell=8), b)
    right = map_similarities(a, b, hog_cell=8)
    for k in ("spearman", "ssim", "hog"):
        assert not torch.allclose(wrong[k], right[k], equal_nan=True)


def test_map_similarities_of_one_map_equal_its_row_of_a_batch():
    """A single (H, W) map is accepted as well as a batch (..., H, W), and its numbers are that map's row of the
    batched call; another map's row differs. Guards the number of dimensions similarity_reference requires."""
    a, b = _similarity_maps(torch.float64)
    batch = map_similarities(a, b, hog_cell=8)
    one = map_similarities(a[0], b[0], hog_cell=8)
    for k in batch:
        assert one[k].shape == ()
        torch.testing.assert_close(one[k], batch[k][0], rtol=0, atol=0)
        assert not torch.allclose(one[k], batch[k][2])


def test_similarity_reference_bad_input_errors():
    from extagg.evaluation.similarity import similarities_to, similarity_reference

    a, b = _similarity_maps(torch.float64)
    with pytest.raises(InputError, match=r"same shape.*\(6, 48, 48\).*\(5, 48, 48\)"):
        similarities_to(similarity_reference(a), b[:5])
    with pytest.raises(InputError, match="at least 11x11"):
        similarity_reference(a[:, :8, :8], hog_cell=2)


def test_similarity_reference_keeps_no_float64_per_pixel_statistics():
    """The randomisation test holds one reference per map for all its steps: the reference keeps the ranks in
    float32 (exact: multiples of 1/2 below 2**22) and the maps, 12 bytes per float32 pixel, not the ~40 of float64
    ranks and SSIM statistics. Guards the memory of the randomisation metric, whose results stay bit for bit
    (test above)."""
    from extagg.evaluation.similarity import similarity_reference

    a, _ = _similarity_maps(torch.float32)
    ref = similarity_reference(a, hog_cell=8)
    per_pixel = sum(t.numel() * t.element_size() for t in (ref.signed[0], ref.absolute[0], ref.maps)) / a.numel()
    assert per_pixel == 12
    assert ref.signed[0].dtype == torch.float32
    from extagg.evaluation.similarity import average_ranks

    assert torch.equal(ref.signed[0].double(), average_ranks(a.double().flatten(-2)))
