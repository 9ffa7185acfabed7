"""The localisation family against Quantus 0.6.0, image by image, and the energy-based pointing game of Score-CAM
against a hand computation.

Same model, inputs, maps and masks on both sides: extagg through ``score(..., masks=...)``, Quantus through its
metric classes with its defaults. The signed gradient map has no ties (rank-based metrics break ties by pixel
order here, in an unspecified order in Quantus); Grad-CAM's map has a zero plateau, which the AUC must score as
sklearn's ROC curve does.
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
from extagg.evaluation.datasets import Sample
from extagg.maps import resize_maps
from tiny_nets import QUIET, seeded_convnet

quantus = pytest.importorskip("quantus")
SIZE = 32


def tiny_model() -> torch.nn.Module:
    return seeded_convnet()


def masks_for(n: int) -> torch.Tensor:
    """A rectangle, a disc, an L and a thin bar (all non-empty, of different sizes)."""
    m = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    m[0, 4:14, 10:28] = True
    m[1 % n] |= (yy - 20) ** 2 + (xx - 12) ** 2 < 36
    m[2 % n, 2:30, 2:6] = True
    m[2 % n, 26:30, 2:20] = True
    m[3 % n, 15:17, :] = True
    return m


@pytest.fixture(scope="module")
def case():
    model = tiny_model()
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps = {}
    for method, layer in (("gradcam", "3"), ("bias+sum", "input")):
        m = extagg.saliency(model, x, method, layers=layer, targets=y)[method, layer]
        maps[method] = resize_maps(m, x.shape[-2:])[:, 0].detach()
    return model, x, y, maps, masks_for(4)


def ours(metric, model, x, y, maps, masks, measure=None):
    out = score(metric, model, x, maps, y, masks=masks, registry=builtin_registry())
    return np.array(out.per_image(measure=measure), dtype=np.float64)


def theirs(cls, model, x, y, maps, masks, **kw):
    return np.asarray(cls(**QUIET, **kw)(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                                         a_batch=maps[:, None].double().numpy(),
                                         s_batch=masks[:, None].numpy().astype(np.float32), device="cpu"),
                      dtype=np.float64)


CASES = [
    ("pointing-game", quantus.PointingGame, {}, ("gradcam", "bias+sum")),
    ("attribution-localisation", quantus.AttributionLocalisation, {}, ("gradcam", "bias+sum")),
    ("attribution-localisation(abs=false,positive_attributions=true)", quantus.AttributionLocalisation,
     {"abs": False, "positive_attributions": True}, ("bias+sum",)),
    ("top-k-intersection", quantus.TopKIntersection, {}, ("bias+sum",)),
    ("top-k-intersection(k=50,concept_influence=true)", quantus.TopKIntersection,
     {"k": 50, "concept_influence": True}, ("bias+sum",)),
    ("relevance-mass-accuracy", quantus.RelevanceMassAccuracy, {}, ("gradcam", "bias+sum")),
    ("relevance-mass-accuracy(abs=true)", quantus.RelevanceMassAccuracy, {"abs": True}, ("bias+sum",)),
    ("relevance-rank-accuracy", quantus.RelevanceRankAccuracy, {}, ("bias+sum",)),
    ("auc", quantus.AUC, {}, ("gradcam", "bias+sum")),
]


@pytest.mark.parametrize("metric, cls, kw, methods", CASES, ids=[c[0] for c in CASES])
def test_equals_quantus_per_image(case, metric, cls, kw, methods):
    model, x, y, maps, masks = case
    for method in methods:
        got = ours(metric, model, x, y, maps[method], masks)
        expected = theirs(cls, model, x, y, maps[method], masks, **kw)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=method)


@pytest.mark.parametrize("metric, cls, kw, methods", CASES, ids=[c[0] for c in CASES])
def test_counter_case_moved_masks_change_both(case, metric, cls, kw, methods):
    """The masks (with a square around each map's maximum) moved by a quarter of the image change the scores on
    both sides alike: the equality above is between values that depend on the region."""
    model, x, y, maps, masks = case
    m = maps[methods[-1]]
    masks = masks.clone()
    for i, top in enumerate(m.flatten(1).argmax(1).tolist()):  # the maximum inside: a hit before the move
        r, c = divmod(top, SIZE)
        masks[i, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
    moved = masks.roll(SIZE // 4, dims=-1).roll(SIZE // 4, dims=-2)
    before, after = ours(metric, model, x, y, m, masks), ours(metric, model, x, y, m, moved)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, theirs(cls, model, x, y, m, moved, **kw), rtol=1e-6)


def test_auc_with_ties_is_sklearns(case):
    """A map quantised to 4 levels (ties everywhere) gets sklearn's trapezoid AUC (ties count one half)."""
    model, x, y, maps, masks = case
    m = (maps["bias+sum"] * 2 / maps["bias+sum"].abs().amax()).round()
    np.testing.assert_allclose(ours("auc", model, x, y, m, masks), theirs(quantus.AUC, model, x, y, m, masks),
                               rtol=1e-9)


def test_empty_region_is_nan_where_quantus_says_true(case):
    """Quantus's PointingGame writes NaN into a boolean array (True); extagg's pointing game is NaN for an image
    without a region, as Quantus's other localisation metrics are."""
    model, x, y, maps, masks = case
    empty = masks.clone()
    empty[1] = False
    got = ours("pointing-game", model, x, y, maps["gradcam"], empty)
    assert math.isnan(got[1]) and not np.isnan(got[[0, 2, 3]]).any()
    assert theirs(quantus.PointingGame, model, x, y, maps["gradcam"], empty)[1] == 1.0
    for metric in ("attribution-localisation", "relevance-rank-accuracy", "auc", "energy-pointing-game"):
        assert math.isnan(ours(metric, model, x, y, maps["gradcam"], empty)[1])


def test_weighted_variants_by_hand(case):
    """weighted: a hit times 1 - the region's share; the inside ratio times the region's share of H x W (Quantus
    0.6.0 divides by the size of x_batch[2:] instead, so its weighted values differ)."""
    model, x, y, maps, masks = case
    m = maps["gradcam"]
    share = masks.flatten(1).double().mean(1).numpy()
    hit = ours("pointing-game", model, x, y, m, masks)
    np.testing.assert_allclose(ours("pointing-game(weighted=true)", model, x, y, m, masks), hit * (1 - share))
    ratio = ours("attribution-localisation", model, x, y, m, masks)
    weighted = ours("attribution-localisation(weighted=true)", model, x, y, m, masks)
    np.testing.assert_allclose(weighted, ratio * share, rtol=1e-12)
    quantus_weighted = theirs(quantus.AttributionLocalisation, model, x, y, m, masks, weighted=True)
    assert not np.allclose(weighted, quantus_weighted)


def test_energy_pointing_game_by_hand(case):
    """Score-CAM's energy-based pointing game: positive mass in the bounding box (default) or the mask over all
    positive mass, computed here directly from the definition."""
    model, x, y, maps, masks = case
    m = maps["bias+sum"].double()
    pos = m.clamp(min=0)
    boxes = torch.zeros_like(masks)
    for i, mask in enumerate(masks):
        r, c = mask.nonzero(as_tuple=True)
        boxes[i, r.min():r.max() + 1, c.min():c.max() + 1] = True
    by_box = ((pos * boxes).flatten(1).sum(1) / pos.flatten(1).sum(1)).numpy()
    by_mask = ((pos * masks).flatten(1).sum(1) / pos.flatten(1).sum(1)).numpy()
    np.testing.assert_allclose(ours("energy-pointing-game", model, x, y, m, masks), by_box, rtol=1e-12)
    np.testing.assert_allclose(ours("energy-pointing-game(region=mask)", model, x, y, m, masks), by_mask, rtol=1e-12)
    assert not np.allclose(by_box, by_mask)  # the L and the disc differ from their boxes
    negative = -m.abs()  # no positive energy: undefined
    assert np.isnan(ours("energy-pointing-game", model, x, y, negative, masks)).all()


def test_box_region_is_the_masks_rectangle(case):
    """region=box scores the bounding rectangle: the same as scoring the rectangles given as masks."""
    model, x, y, maps, masks = case
    boxes = torch.zeros_like(masks)
    for i, mask in enumerate(masks):
        r, c = mask.nonzero(as_tuple=True)
        boxes[i, r.min():r.max() + 1, c.min():c.max() + 1] = True
    m = maps["bias+sum"]
    np.testing.assert_allclose(ours("relevance-mass-accuracy(region=box)", model, x, y, m, masks),
                               ours("relevance-mass-accuracy", model, x, y, m, boxes), rtol=1e-12)


def test_refusals(case):
    model, x, y, maps, masks = case
    with pytest.raises(InputError, match=r"k=2000 must be smaller than the map's 1024 pixels"):
        ours("top-k-intersection(k=2000)", model, x, y, maps["gradcam"], masks)
    with pytest.raises(InputError, match=r"has no masks"):
        ours("auc", model, x, y, maps["gradcam"], None)


def test_masks_are_resized_to_the_maps_and_classes_matched():
    """evaluate() on samples whose masks are at twice the input size (a preprocess that halves the image): the
    masks are resized to the maps; an image whose explained class has no mask is NaN."""
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 2 * SIZE, 2 * SIZE, generator=g) for _ in range(3)]
    half = lambda im: torch.nn.functional.avg_pool2d(im[None], 2)[0]  # noqa: E731
    preds = model(torch.stack([half(im) for im in images])).argmax(1).tolist()
    big = masks_for(3).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    samples = [Sample(images[0], "a", (preds[0],), big[0:1]),
               Sample(images[1], "b", (preds[1],), big[1:2]),
               Sample(images[2], "c", ((preds[2] + 1) % 5,), big[2:3])]  # annotated: another class
    out = evaluate(model, samples, ["bias+sum"], ["input"], ["relevance-mass-accuracy", "auc"], preprocess=half,
                   registry=builtin_registry(), batch_size=3)
    x = torch.stack([half(im) for im in images])
    maps = extagg.saliency(model, x, "bias+sum", layers="input", targets=torch.tensor(preds))["bias+sum", "input"]
    expected = theirs(quantus.AUC, model, x, torch.tensor(preds), maps[:, 0].detach(), masks_for(3))
    got = out.per_image("auc")
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-6)
    assert math.isnan(got[2])


def test_sweep_level_smoke(case):
    """evaluate() with two of the family's metrics: finite values in the declared range."""
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    m = masks_for(3)
    samples = [Sample(torch.rand(3, SIZE, SIZE, generator=g), f"im{i}", (c,), m[i:i + 1])
               for i, c in enumerate((0, 1, 2))]
    out = evaluate(model, samples, ["gradcam", "bias+sum"], ["3", "input"], ["pointing-game", "auc"],
                   registry=builtin_registry(), batch_size=2, targets="label")
    reg = builtin_registry()
    assert out.values
    for v in out.values:
        meas = reg.metrics[v.metric.split("(")[0]].measure(v.measure)
        assert math.isfinite(v.value) and meas.low <= v.value <= meas.high
