"""The complexity family (sparseness, complexity, effective-complexity) against Quantus 0.6.0, image by image.

Same model, same inputs, same maps on both sides: extagg through ``score()``, Quantus through its metric classes
with its defaults. extagg normalises each map by its own maximum where Quantus normalises a whole call by one
maximum, so Quantus is called one image at a time for equality, and one test measures the difference a batched
Quantus call makes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import extagg
from conftest import builtin_registry
from extagg.evaluation import evaluate, score
from extagg.evaluation.datasets import Sample
from extagg.maps import resize_maps
from tiny_nets import QUIET, seeded_convnet

quantus = pytest.importorskip("quantus")


def tiny_model() -> torch.nn.Module:
    return seeded_convnet()


@pytest.fixture(scope="module")
def case():
    model = tiny_model()
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps = {}
    for method, layer in (("gradcam", "3"), ("scaling+sum", "input")):
        m = extagg.saliency(model, x, method, layers=layer, targets=y)[method, layer]
        maps[method] = resize_maps(m, x.shape[-2:])[:, 0].detach()
    return model, x, y, maps


def ours(metric, model, x, y, maps, measure):
    return np.array(score(metric, model, x, maps, y, registry=builtin_registry()).per_image(measure=measure))


def theirs(cls, model, x, y, maps, per_image=True, **kw):
    a = maps[:, None].double().numpy()
    run = lambda s: np.asarray(cls(**QUIET, **kw)(model=model, x_batch=x[s].numpy(), y_batch=y[s].numpy(),  # noqa
                                                   a_batch=a[s], device="cpu"), dtype=np.float64)
    if per_image:
        return np.concatenate([run(slice(i, i + 1)) for i in range(x.shape[0])])
    return run(slice(None))


CASES = [
    ("sparseness", "gini", quantus.Sparseness, {}),
    ("complexity", "entropy", quantus.Complexity, {}),
    ("effective-complexity", "count", quantus.EffectiveComplexity, {}),
    ("effective-complexity(eps=0.3)", "count", quantus.EffectiveComplexity, {"eps": 0.3}),
    ("sparseness(normalise=false)", "gini", quantus.Sparseness, {"normalise": False}),
]


@pytest.mark.parametrize("metric, measure, cls, kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["gradcam", "scaling+sum"])
def test_equals_quantus_per_image(case, metric, measure, cls, kw, method):
    model, x, y, maps = case
    got = ours(metric, model, x, y, maps[method], measure)
    expected = theirs(cls, model, x, y, maps[method], **kw)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("metric, measure, cls, kw", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_counter_case_a_changed_map_changes_both(case, metric, measure, cls, kw):
    """Squaring the map (more concentrated) moves both sides by the same amount: the equality above is not
    between two constants."""
    model, x, y, maps = case
    m = maps["scaling+sum"]
    before, after = ours(metric, model, x, y, m, measure), ours(metric, model, x, y, m.square() * m.sign(), measure)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, theirs(cls, model, x, y, m.square() * m.sign(), **kw), rtol=1e-6)


def test_effective_complexity_per_map_normalisation_differs_from_a_batched_quantus_call(case):
    """extagg normalises each map by its own maximum (a score never depends on the other images); Quantus divides
    the whole call by one maximum. With maps of very different maxima the batched Quantus counts differ."""
    model, x, y, maps = case
    m = maps["scaling+sum"] * torch.tensor([1.0, 1e-3, 1.0, 1e-3])[:, None, None]
    got = ours("effective-complexity(eps=0.01)", model, x, y, m, "count")
    per_image = theirs(quantus.EffectiveComplexity, model, x, y, m, eps=0.01)
    batched = theirs(quantus.EffectiveComplexity, model, x, y, m, per_image=False, eps=0.01)
    np.testing.assert_array_equal(got, per_image)
    assert (got[[1, 3]] > batched[[1, 3]]).all()  # the small maps fall under eps after the batch maximum


def test_hand_values():
    """Known values: a one-pixel map has Gini 1 - 1/P (up to the 1e-7 offset), entropy 0 and count 1; a flat map
    has Gini 0, entropy log P, count P."""
    model, x = tiny_model(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    maps = torch.zeros(2, 8, 8)
    maps[0, 3, 4] = 2.0
    maps[1] = 0.5
    out = score(["sparseness", "complexity", "effective-complexity"], model, x, maps, torch.tensor([0, 1]),
                registry=builtin_registry())
    np.testing.assert_allclose(out.per_image("sparseness"), [1 - 1 / 64, 0.0], atol=1e-5)
    np.testing.assert_allclose(out.per_image("complexity"), [0.0, math.log(64)], atol=1e-9)
    assert out.per_image("effective-complexity") == [1.0, 64.0]


def test_sweep_level_smoke():
    """evaluate() with two of the family's metrics on a tiny model: finite values in the declared range."""
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    samples = [Sample(torch.rand(3, 16, 16, generator=g), image_id=f"im{i}") for i in range(3)]
    out = evaluate(model, samples, ["gradcam", "scaling+sum"], ["3"], ["sparseness", "complexity"],
                   registry=builtin_registry(), batch_size=2)
    reg = builtin_registry()
    assert out.values
    for v in out.values:
        m = reg.metrics[v.metric.split("(")[0]].measure(v.measure)
        assert math.isfinite(v.value) and m.low <= v.value <= m.high
