"""Deletion / insertion (extagg.evaluation.faithfulness) against a naive per-step loop, and its laws."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from extagg.errors import InputError, UnknownNameError
from extagg.evaluation import deletion_insertion, deletion_insertion_curves, deletion_insertion_grid
from extagg.evaluation.pointing import gaussian_smooth

from model_state import assert_unchanged, snapshot
from strategies_evaluation import tiny_cnn


def naive_curve(model, image, saliency, target, mode, steps, baseline, ties="first"):
    """One image, one forward per point, pixel order by a Python sort of (-saliency, index)."""
    _, h, w = image.shape
    values = saliency.reshape(-1).tolist()
    index = list(range(h * w))
    if ties == "first":
        order = sorted(index, key=lambda i: (-values[i], i))
    else:  # the opposite tie rule, to show that the comparison can fail
        order = sorted(index, key=lambda i: (-values[i], -i))
    curve = []
    for k in range(steps + 1):
        n = k * h * w // steps
        x = image.clone() if mode == "deletion" else baseline.clone()
        src = baseline if mode == "deletion" else image
        for i in order[:n]:
            x[:, i // w, i % w] = src[:, i // w, i % w]
        with torch.no_grad():
            p = torch.softmax(model(x[None]), 1)[0, target]
        curve.append(float(p))
    area = sum((curve[k] + curve[k + 1]) / 2 for k in range(steps)) / steps
    return curve, area


def _data(seed=0, n=3, side=8, ties=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, side, side, generator=g, dtype=torch.float64)
    maps = torch.randint(0, 4, (n, 1, side, side), generator=g).double() if ties else \
        torch.rand(n, 1, side, side, generator=g, dtype=torch.float64)
    return images, maps


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_matches_naive_loop(mode, baseline):
    model = tiny_cnn()
    images, maps = _data()
    targets = [0, 3, 1]
    steps = 5
    bases = {"zero": torch.zeros_like(images), "mean": images.mean((2, 3), keepdim=True).expand_as(images),
             "blur": gaussian_smooth(images, 0.02)}[baseline]
    expected = [naive_curve(model, images[i], maps[i, 0], targets[i], mode, steps, bases[i]) for i in range(3)]
    for batch_size in (1, 7, 64):
        curves = deletion_insertion_curves(model, images, maps, targets, mode=mode, steps=steps, baseline=baseline,
                                           batch_size=batch_size)
        areas = deletion_insertion(model, images, maps, targets, mode=mode, steps=steps, baseline=baseline,
                                   batch_size=batch_size)
        assert curves.shape == (3, steps + 1) and areas.shape == (3,)
        torch.testing.assert_close(curves.double(), torch.tensor([c for c, _ in expected], dtype=torch.float64))
        torch.testing.assert_close(areas.double(), torch.tensor([a for _, a in expected], dtype=torch.float64))


def test_naive_comparison_detects_the_tie_rule():
    """The maps have ties; the opposite tie rule gives other curves, so the comparison above can fail."""
    model = tiny_cnn()
    images, maps = _data()
    base = torch.zeros_like(images[0])
    ours = deletion_insertion_curves(model, images[:1], maps[:1], [0], mode="deletion", steps=5, baseline="zero")
    other, _ = naive_curve(model, images[0], maps[0, 0], 0, "deletion", 5, base, ties="last")
    assert not torch.allclose(ours[0].double(), torch.tensor(other, dtype=torch.float64))


def test_maps_are_resized_bilinearly_and_accept_all_shapes():
    model = tiny_cnn()
    images, _ = _data(n=2)
    small = torch.rand(2, 1, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    want = deletion_insertion(model, images, full, [1, 2], mode="insertion", steps=4, baseline="zero")
    for m in (small, small[:, 0]):
        got = deletion_insertion(model, images, m, [1, 2], mode="insertion", steps=4, baseline="zero")
        torch.testing.assert_close(got, want)


class _Linear(nn.Module):
    """Logits (w . x, 0): the target-0 probability is sigmoid of a sum of per-pixel contributions."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 12), side=st.integers(2, 6))
def test_linear_model_oracle_law(seed, steps, side):
    """Insertion from a zero baseline on a linear model: the oracle map (each pixel's contribution) gives
    area = trapezoid of sigmoid(cumsum of the sorted contributions) and is the best map; a random map lies
    between the oracle and the reversed oracle. Deletion: the opposite order."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 3, side, side, generator=g, dtype=torch.float64)
    x = torch.rand(1, 3, side, side, generator=g, dtype=torch.float64) + 0.1
    model = _Linear(w).eval()
    contrib = (w * x).sum(1)  # (1, side, side)
    sorted_c = contrib.flatten().sort(descending=True).values
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), sorted_c.cumsum(0)])
    counts = [k * side * side // steps for k in range(steps + 1)]
    curve = torch.sigmoid(cum[counts])
    expected = float((curve[1:] + curve[:-1]).sum() / 2 / steps)

    def auc(mode, m):
        return float(deletion_insertion(model, x, m, 0, mode=mode, steps=steps, baseline="zero")[0])

    random_map = torch.rand(1, side, side, generator=g, dtype=torch.float64)
    ins_best, ins_rand, ins_worst = auc("insertion", contrib), auc("insertion", random_map), auc("insertion", -contrib)
    assert ins_best == pytest.approx(expected, abs=1e-12)
    assert ins_worst - 1e-12 <= ins_rand <= ins_best + 1e-12
    del_best, del_rand, del_worst = auc("deletion", contrib), auc("deletion", random_map), auc("deletion", -contrib)
    assert del_best - 1e-12 <= del_rand <= del_worst + 1e-12
    deleted = torch.sigmoid(cum[-1] - cum[counts])
    assert del_best == pytest.approx(float((deleted[1:] + deleted[:-1]).sum() / 2 / steps), abs=1e-12)


def test_curve_endpoints_are_image_and_baseline():
    model = tiny_cnn()
    images, maps = _data(n=2)
    probs = lambda x: torch.softmax(model(x), 1)[:, 2]  # noqa: E731
    with torch.no_grad():
        for name, base in [("zero", torch.zeros_like(images)), ("mean", images.mean((2, 3), keepdim=True)),
                           ("blur", gaussian_smooth(images, 0.02)), (torch.full((3, 1, 1), 0.5, dtype=torch.float64), None)]:
            b = base if base is not None else name.expand_as(images)
            d = deletion_insertion_curves(model, images, maps, 2, mode="deletion", steps=3, baseline=name)
            i = deletion_insertion_curves(model, images, maps, 2, mode="insertion", steps=3, baseline=name)
            torch.testing.assert_close(d[:, 0].double(), probs(images))
            torch.testing.assert_close(d[:, -1].double(), probs(b.expand_as(images)))
            torch.testing.assert_close(i[:, 0].double(), probs(b.expand_as(images)))
            torch.testing.assert_close(i[:, -1].double(), probs(images))


def test_default_targets_are_the_predicted_class():
    model = tiny_cnn()
    images, maps = _data()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    torch.testing.assert_close(deletion_insertion(model, images, maps, None, mode="deletion", steps=4),
                               deletion_insertion(model, images, maps, predicted, mode="deletion", steps=4))


def test_half_inputs_and_half_model():
    model = tiny_cnn().float()
    images, maps = _data(ties=False)
    half = images.half()
    want = deletion_insertion(model, half.float(), maps.float(), 1, mode="insertion", steps=4, baseline="mean")
    got = deletion_insertion(model, half, maps.half(), 1, mode="insertion", steps=4, baseline="mean")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    bf = deletion_insertion(tiny_cnn().bfloat16(), half, maps, 1, mode="deletion", steps=4, baseline="blur")
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all()


def test_model_left_exactly_as_it_was_and_evaluated_in_eval_mode():
    model = tiny_cnn(bn=True).train()
    images, maps = _data()
    handle = model[0].register_forward_hook(lambda *a: None)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    got = deletion_insertion(model, images, maps, [0, 1, 2], mode="deletion", steps=3)
    assert_unchanged(before, model)
    assert model.training
    want = deletion_insertion(model.eval(), images, maps, [0, 1, 2], mode="deletion", steps=3)
    torch.testing.assert_close(got, want)
    handle.remove()
    before = snapshot(model)
    with pytest.raises(InputError):
        deletion_insertion(model, images, maps, [0, 1, 9], mode="deletion", steps=3)
    assert_unchanged(before, model)


def test_bad_input_errors():
    model = tiny_cnn()
    images, maps = _data()
    with pytest.raises(UnknownNameError, match="did you mean 'deletion'"):
        deletion_insertion(model, images, maps, 0, mode="deletoin")
    with pytest.raises(UnknownNameError, match="did you mean 'blur'"):
        deletion_insertion(model, images, maps, 0, mode="deletion", baseline="blurr")
    with pytest.raises(InputError, match="steps must be an integer >= 1, got 0"):
        deletion_insertion(model, images, maps, 0, mode="deletion", steps=0)
    with pytest.raises(InputError, match="batch_size"):
        deletion_insertion(model, images, maps, 0, mode="deletion", batch_size=0)
    with pytest.raises(InputError, match="2 maps for 3 images"):
        deletion_insertion(model, images, maps[:2], 0, mode="deletion")
    with pytest.raises(InputError, match="one map per image"):
        deletion_insertion(model, images, maps.expand(3, 2, 8, 8), 0, mode="deletion")
    with pytest.raises(InputError, match=r"target class 5 is out of range for a model with 5 classes \(0..4\)"):
        deletion_insertion(model, images, maps, [0, 5, 1], mode="deletion")
    with pytest.raises(InputError, match="one class per image"):
        deletion_insertion(model, images, maps, [0, 1], mode="deletion")
    with pytest.raises(InputError, match=">= 0"):
        deletion_insertion(model, images, maps, -1, mode="deletion")
    with pytest.raises(InputError, match="broadcast"):
        deletion_insertion(model, images, maps, 0, mode="deletion", baseline=torch.zeros(2, 3, 1, 1))
    with pytest.raises(InputError, match="floating"):
        deletion_insertion(model, images[0], maps, 0, mode="deletion")


def test_data_set_records_are_the_mean_of_per_image_areas():
    import extagg
    from extagg.evaluation import Sample, faithfulness

    model = tiny_cnn()
    images, _ = _data(n=3, side=10)
    samples = [Sample(img, str(i)) for i, img in enumerate(images)]
    records = faithfulness(model, samples, ["gradient"], ["input"], mode="insertion", steps=4, baseline="zero",
                           batch_size=2)
    result = extagg.saliency(model, images, "gradient", "input")
    want = deletion_insertion(model, images, result["gradient", "input"], result.targets[:, 0], mode="insertion",
                              steps=4, baseline="zero")
    got = {r.metric: r for r in records}
    assert got["insertion_auc"].count == 3 and got["insertion_auc"].subset == "all"
    assert got["insertion_auc"].value == pytest.approx(float(want.mean()))
    assert got["insertion_auc_std"].value == pytest.approx(float(want.std(unbiased=True)))  # sample std


def test_curve_points_are_batched_across_images():
    """3 images x (7 + 1) points = 24 points: 3 forward passes of 8, plus one to find the predicted classes."""
    model = tiny_cnn()
    images, maps = _data()
    sizes = []
    handle = model.register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    try:
        deletion_insertion(model, images, maps, [0, 1, 2], mode="deletion", steps=7, batch_size=8)
        assert sizes == [8, 8, 8]
        sizes.clear()
        deletion_insertion(model, images, maps, None, mode="insertion", steps=7, batch_size=10)
        assert sizes == [3, 10, 10, 4]
    finally:
        handle.remove()


def _grid_maps(seed=0, n=2, side=8):
    """Maps that share curve points: a constant map, two maps upsampled from one coarse grid (same ranking), a map
    equal to another, and random maps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 2, 2, generator=g, dtype=torch.float64)
    random = [torch.rand(n, side, side, generator=g, dtype=torch.float64) for _ in range(2)]
    return [torch.zeros(n, side, side, dtype=torch.float64), coarse, coarse * 3 + 1, random[0], random[1],
            random[0].clone(), torch.full((n, side, side), float("nan"), dtype=torch.float64)]


def _counting(model):
    seen = []
    handle = model.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_grid_equals_one_call_per_map_and_forwards_each_distinct_image_once(mode):
    model = tiny_cnn().double()
    images, _ = _data(n=2)
    maps = _grid_maps()
    want = torch.stack([deletion_insertion_curves(model, images, m, [1, 3], mode=mode, steps=4, baseline="zero")
                        for m in maps])
    seen, handle = _counting(model)
    try:
        got = deletion_insertion_grid(model, images, maps, [1, 3], mode=mode, steps=4, baseline="zero", batch_size=7)
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # per image: endpoints 2; interior points 3 each for the constant (= NaN ranking), the coarse pair (one
    # ranking), and the two random rankings (random[0] twice) -> 2 + 3 * 4 = 14 distinct images of 7 * 5 = 35
    assert sum(seen) == 2 * 14
    assert max(seen) <= 7


def test_grid_comparison_detects_a_swapped_map():
    """The equivalence above can fail: the grid's curves of two different maps are not interchangeable."""
    model = tiny_cnn().double()
    images, _ = _data(n=2)
    maps = _grid_maps()
    got = deletion_insertion_grid(model, images, maps, [1, 3], mode="deletion", steps=4, baseline="zero")
    other = deletion_insertion_curves(model, images, maps[4], [1, 3], mode="deletion", steps=4, baseline="zero")
    assert not torch.allclose(got[3], other)


def test_grid_hash_collision_falls_back_to_every_point(monkeypatch):
    """With hash weights that make every mask collide, the pixel check finds it and nothing is shared."""
    import importlib

    module = importlib.import_module("extagg.evaluation.faithfulness")

    monkeypatch.setattr(module, "_hash_weights", lambda pixels: torch.zeros(2, pixels, dtype=torch.long))
    model = tiny_cnn().double()
    images, _ = _data(n=2)
    maps = _grid_maps()
    want = torch.stack([deletion_insertion_curves(model, images, m, [1, 3], mode="insertion", steps=4,
                                                  baseline="zero")
                        for m in maps])
    seen, handle = _counting(model)
    try:
        got = deletion_insertion_grid(model, images, maps, [1, 3], mode="insertion", steps=4, baseline="zero",
                                      batch_size=64)
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert sum(seen) == 7 * 2 * 5


def test_grid_bad_input_errors():
    model = tiny_cnn()
    images, maps = _data(n=2)
    with pytest.raises(InputError, match="maps is empty"):
        deletion_insertion_grid(model, images.float(), [], mode="deletion")
    with pytest.raises(InputError, match="2 images"):
        deletion_insertion_grid(model, images.float(), [maps[:1].float()], mode="deletion")


def test_targets_as_a_column_equal_targets_as_a_vector():
    """Targets given as an (N, 1) column (one target per image, as ``saliency`` results hold them) are the same
    classes as an (N,) vector; another column of classes gives other areas. Guards the column case of the
    targets check (reading a column that does not exist)."""
    model = tiny_cnn()
    images, maps = _data()
    vector = deletion_insertion(model, images, maps, torch.tensor([0, 1, 2]), mode="deletion", steps=4)
    column = deletion_insertion(model, images, maps, torch.tensor([[0], [1], [2]]), mode="deletion", steps=4)
    assert torch.equal(column, vector)
    other = deletion_insertion(model, images, maps, torch.tensor([[1], [2], [0]]), mode="deletion", steps=4)
    assert not torch.allclose(other, vector)


def test_a_named_pair_that_does_not_fit_is_an_error_and_a_pattern_skips_it():
    """Without patterns, a (method, layer) pair that does not apply (``conv+norm`` needs a Conv2d layer, the
    input is none) is refused with a LayerMismatchError; with a layer pattern the same pair is skipped."""
    from extagg.errors import LayerMismatchError
    from extagg.evaluation import Sample, faithfulness

    model = tiny_cnn()
    images, _ = _data(n=2, side=10)
    samples = [Sample(img, str(i)) for i, img in enumerate(images)]
    with pytest.raises(LayerMismatchError, match="needs a Conv2d layer"):
        faithfulness(model, samples, ["conv+norm"], ["input"], mode="insertion", steps=2, baseline="zero")
    records = faithfulness(model, samples, ["conv+norm"], ["inpu*"], mode="insertion", steps=2, baseline="zero")
    assert not [r for r in records if r.metric == "insertion_auc"]
