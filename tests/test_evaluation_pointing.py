"""Pointing game: hand-built oracle cases (paper_spec 10.1 item 14-15) and an independent end-to-end computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d
from model_state import assert_unchanged, snapshot
from strategies_evaluation import tiny_cnn

import extagg
from extagg.errors import InputError
from extagg.evaluation import (CENTER, PointingScore, Sample, center_point, gaussian_smooth, pointing_game,
                               pointing_hit, saliency_point, spatial_softmax_objective)


def pixel_mask(r=20, c=20, h=60, w=60):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r, c] = True
    return m


@pytest.mark.parametrize("point, hit", [
    ((35, 20), False),    # 15 px to the right: distance exactly 15 is a miss (strict <)
    ((34, 20), True),     # 14 px
    ((20, 34), True),     # x=20, y=34: 14 px below
    ((20, 35), False),
    ((29, 32), False),    # 9^2 + 12^2 = 225
    ((29, 31), True),     # 81 + 121 = 202
    ((5, 20), False),     # 15 px to the left
    ((6, 20), True),
])
def test_single_pixel_mask_at_known_distances(point, hit):
    assert pointing_hit(pixel_mask(), point, 15) is hit


def test_hit_with_float_point_and_border_windows():
    assert pointing_hit(pixel_mask(0, 0), (10.5, 10.5), 15) is True      # 10.5*sqrt2 = 14.85
    assert pointing_hit(pixel_mask(0, 0), (10.7, 10.7), 15) is False     # 15.13
    assert pointing_hit(pixel_mask(59, 59), (80, 80), 15) is False       # point outside the image
    assert pointing_hit(torch.zeros(5, 5, dtype=torch.bool), (2, 2), 15) is False


def test_point_ties_go_to_first_row_major_index():
    m = torch.zeros(4, 5)
    m[2, 0] = 7.0
    m[1, 3] = 7.0
    assert saliency_point(m).tolist() == [3, 1]          # (x, y) of row 1 beats row 2
    m2 = torch.zeros(4, 5)
    m2[1, 4] = 7.0
    m2[1, 2] = 7.0
    assert saliency_point(m2).tolist() == [2, 1]


def test_point_of_constant_zero_and_nan_maps():
    assert saliency_point(torch.zeros(6, 7)).tolist() == [0, 0]
    assert saliency_point(torch.full((6, 7), 3.5)).tolist() == [0, 0]
    m = torch.zeros(6, 7)
    m[0, 0] = math.nan
    m[4, 5] = 1.0
    assert saliency_point(m).tolist() == [5, 4]           # NaN never wins
    assert saliency_point(torch.full((3, 3), math.nan)).tolist() == [0, 0]
    batch = torch.zeros(2, 3, 4, 4)
    batch[1, 2, 3, 1] = 1
    pts = saliency_point(batch)
    assert pts.shape == (2, 3, 2) and pts[1, 2].tolist() == [1, 3] and pts[0, 0].tolist() == [0, 0]


def test_center_point_is_unrounded():
    assert center_point(375, 500) == (250.0, 187.5)
    assert center_point(7, 9) == (4.5, 3.5)


def test_accuracy_is_mean_over_evaluated_classes_and_empty_classes_reported():
    s = PointingScore(2)
    s.add(0, True)
    s.add(0, True)
    s.add(0, False)
    assert s.accuracy == pytest.approx(2 / 3)
    assert s.torchray_accuracy == pytest.approx(1 / 3)    # TorchRay counts the empty class as 0
    assert s.empty_classes == [1]
    recs = {r.metric: r for r in s.records("m", "l", "all", ["cat", "dog"])}
    assert recs["pointing_accuracy"].count == 3
    assert recs["classes_empty"].value == 1 and recs["classes_evaluated"].value == 1
    assert math.isnan(recs["class_accuracy:dog"].value) and recs["class_accuracy:dog"].count == 0
    assert recs["class_accuracy:cat"].value == pytest.approx(2 / 3)
    assert math.isnan(PointingScore(3).accuracy)
    with pytest.raises(InputError, match="class id 5"):
        s.add(5, True)


def test_gaussian_smooth_matches_scipy_with_replicate_border():
    rng = np.random.default_rng(0)
    m = rng.random((13, 17))
    sigma = 0.1 * 17
    r = math.ceil(4 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    expected = correlate1d(correlate1d(m, k, axis=1, mode="nearest"), k, axis=0, mode="nearest")
    out = gaussian_smooth(torch.tensor(m)[None], 0.1)[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert torch.equal(gaussian_smooth(torch.tensor(m), 0.0), torch.tensor(m))


def test_spatial_softmax_objective_gradient_is_softmax_of_class_map():
    out = torch.randn(1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    obj = spatial_softmax_objective(torch.tensor([[2]]))
    obj(out).sum().backward()
    expected = torch.softmax(out.detach()[0, 2].flatten(), 0).reshape(3, 5)
    torch.testing.assert_close(out.grad[0, 2], expected)
    assert out.grad[0, [0, 1, 3]].abs().max() == 0
    flat = torch.randn(2, 6, requires_grad=True)
    obj = spatial_softmax_objective(torch.tensor([[1], [4]]))
    obj(flat).sum().backward()
    assert flat.grad.tolist() == F.one_hot(torch.tensor([1, 4]), 6).float().tolist()


# ----------------------------------------------------------------------------- end to end
def _samples(h=24, w=28):
    g = torch.Generator().manual_seed(3)
    out = []
    specs = [  # (classes, boxes (r0, r1, c0, c1) per class, skip)
        ((0, 2), [(2, 8, 3, 9), (10, 24, 0, 28)], (False, False)),
        ((1,), [(0, 24, 0, 28)], (False,)),
        ((0, 3), [(15, 20, 20, 27), (0, 3, 0, 3)], (False, True)),
        ((2, 3), [(5, 6, 5, 6), (12, 22, 2, 26)], (False, False)),
    ]
    for i, (classes, boxes, skip) in enumerate(specs):
        masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
        for t, (r0, r1, c0, c1) in enumerate(boxes):
            masks[t, r0:r1, c0:c1] = True
        out.append(Sample(torch.rand(3, h, w, generator=g), f"img{i}", classes, masks, skip))
    return out


def _expected(model, samples, method, layer, num_classes, tolerance=15):
    """Straightforward: one saliency call per (image, class), numpy argmax and an exhaustive distance test."""
    hits = {s: np.zeros(num_classes) for s in ("all", "difficult")}
    tries = {s: np.zeros(num_classes) for s in ("all", "difficult")}
    centre_hits = {s: np.zeros(num_classes) for s in ("all", "difficult")}
    for sample in samples:
        h, w = sample.image.shape[-2:]
        for t, c in enumerate(sample.classes):
            if sample.skip[t]:
                continue
            maps = extagg.saliency(model, sample.image[None].double(), method, layer, targets=c)
            m = F.interpolate(maps[method, layer], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
            idx = int(np.argmax(m))
            y, x = divmod(idx, w)
            rows, cols = np.nonzero(sample.masks[t].numpy())
            hit = bool((((rows - y) ** 2 + (cols - x) ** 2) < tolerance ** 2).any())
            chit = bool((((rows - h / 2) ** 2 + (cols - w / 2) ** 2) < tolerance ** 2).any())
            area = sample.masks[t].numpy().sum() / (h * w)
            subsets = ["all"] + (["difficult"] if area < 0.25 and len(sample.classes) > 1 else [])
            for s in subsets:
                hits[s][c] += hit
                centre_hits[s][c] += chit
                tries[s][c] += 1
    acc = {s: np.mean([hits[s][c] / tries[s][c] for c in range(num_classes) if tries[s][c]]) for s in hits}
    cacc = {s: np.mean([centre_hits[s][c] / tries[s][c] for c in range(num_classes) if tries[s][c]]) for s in hits}
    return acc, cacc, tries


@pytest.mark.parametrize("tolerance", [15, 3])
def test_pointing_game_matches_straightforward_computation(tolerance):
    model = tiny_cnn(num_classes=4)
    samples = _samples()
    methods, layers = ["linear-approx", "gradient", "normgrad"], ["input", "2"]
    before = snapshot(model)
    recs = pointing_game(model, samples, methods, layers, num_classes=4, tolerance=tolerance)
    assert_unchanged(before, model)
    got = {(r.method, r.layer, r.subset, r.metric): r for r in recs}
    for method in methods:
        canon = extagg.parse_method(method).__str__()
        for layer in layers:
            acc, cacc, tries = _expected(model, samples, method, layer, 4, tolerance)
            for subset in ("all", "difficult"):
                r = got[canon, layer, subset, "pointing_accuracy"]
                assert r.value == pytest.approx(acc[subset]), (method, layer, subset)
                assert r.count == int(tries[subset].sum())
                assert got[CENTER, "", subset, "pointing_accuracy"].value == pytest.approx(cacc[subset])
                empty = int((tries[subset] == 0).sum())
                assert got[canon, layer, subset, "classes_empty"].value == empty


def test_one_forward_per_image_for_all_its_classes():
    model = tiny_cnn(num_classes=4)
    calls = []
    handle = model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        pointing_game(model, _samples(), ["linear-approx", "normgrad"], ["input", "0", "2"], num_classes=4)
    finally:
        handle.remove()
    assert calls == [1] + [1, 1, 1, 1]   # once, to read the model's number of classes; then one per image


def test_difficult_flags_file_selects_pairs(tmp_path):
    model = tiny_cnn(num_classes=4)
    flags = tmp_path / "flags.txt"
    flags.write_text("img0\t0\t0\t1\t0\nimg3\t0\t0\t1\t1\n")       # img1, img2 missing: not difficult
    recs = pointing_game(model, _samples(), "gradient", "input", num_classes=4, difficult=str(flags))
    got = {(r.subset, r.metric): r for r in recs if r.method != CENTER}
    assert got["difficult", "pointing_accuracy"].count == 3          # (img0, 2), (img3, 2), (img3, 3)
    assert got["difficult", "class_accuracy:2"].count == 2
    recs = pointing_game(model, _samples(), "gradient", "input", num_classes=4, difficult=None)
    assert {r.subset for r in recs} == {"all"}


def test_patterns_skip_mismatched_pairs_and_bad_input_is_named():
    model = tiny_cnn(num_classes=4)
    recs = pointing_game(model, _samples()[:1], ["normgrad-conv"], ["*"], num_classes=4, per_class=False)
    assert {r.layer for r in recs if r.method != CENTER} == {"0", "2"}   # conv layers only
    with pytest.raises(InputError, match="no masks"):
        pointing_game(model, [Sample(torch.rand(3, 8, 8), "x", (1,))], "gradient", "input", num_classes=4)
    with pytest.raises(InputError, match="class ids"):
        pointing_game(model, [Sample(torch.rand(3, 8, 8), "x", (7,), torch.ones(1, 8, 8, dtype=torch.bool))],
                      "gradient", "input", num_classes=4)
    with pytest.raises(InputError, match="num_classes"):
        pointing_game(model, _samples(), "gradient", "input")
    with pytest.raises(InputError, match="difficult"):
        pointing_game(model, _samples(), "gradient", "input", num_classes=4, difficult=3)
    with pytest.raises(InputError, match="tolerance"):
        pointing_hit(pixel_mask(), (1, 1), -1)
    with pytest.raises(extagg.UnknownNameError):
        pointing_game(model, _samples(), "no-such-method", "input", num_classes=4)


def test_class_names_given_alone_set_the_classes_and_name_the_records():
    """``class_names`` without ``num_classes`` (data without a ``class_names`` attribute): the number of classes
    is their count and the per-class records carry the names. Guards ``class_names or data.class_names`` (with
    ``and``, names given alone were dropped and the call refused for want of num_classes)."""
    model = tiny_cnn(num_classes=4)
    names = ["cat", "dog", "cow", "owl"]
    recs = pointing_game(model, _samples(), ["linear-approx"], ["input"], class_names=names)
    per_class = {r.metric for r in recs if r.metric.startswith("class_accuracy:")}
    assert per_class == {f"class_accuracy:{n}" for n in names}
    by_number = pointing_game(model, _samples(), ["linear-approx"], ["input"], num_classes=4)
    assert {r.metric for r in by_number if r.metric.startswith("class_accuracy:")} == {f"class_accuracy:{i}"
                                                                                        for i in range(4)}
