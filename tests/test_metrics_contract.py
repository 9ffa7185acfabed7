"""The metric contract: ``evaluate`` and ``sweep`` give the same numbers for every built-in metric (one driver),
directions decide every "best", floors are what they claim, the sensitivity pairings, one definition of the
randomisation steps, typed reduction (n, nan, sample std), and labelled data refused without a class map."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import spearmanr

import extagg
from extagg.errors import InputError
from extagg.evaluation import (Sample, class_sensitivity, evaluate, identity_check, pointing_game, reduce_values,
                               ssim)
from extagg.evaluation.results import ImageValue
from extagg.metric_spec import Direction
from extagg.sweep import SweepConfig, sweep
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines

QUIET = io.StringIO
DRIVER_METRICS = ("sensitivity", "sensitivity(pairing=random)", "sensitivity(pairing=second)",
                  "randomisation(hog_cell=8,mode=both)", "identity", "deletion(steps=3)", "insertion(steps=3)",
                  "sparseness", "complexity", "effective-complexity", "completeness", "input-invariance",
                  "non-sensitivity(features_in_step=16)")
MASK_METRICS = ("pointing-game", "attribution-localisation", "top-k-intersection(k=100)", "relevance-mass-accuracy",
                "relevance-rank-accuracy", "auc", "energy-pointing-game")
"""Metrics that need a region of the explained class (the sweep-equals-evaluate test with masks)."""


def _sweep(tmp_path, metrics, **kw):
    cfg = tiny_config(tmp_path, metrics=tuple(metrics), combine=(), **kw)
    return sweep(cfg, model=tiny_model(), samples=tiny_samples(), out=QUIET())


def _evaluate(metrics, **kw):
    return evaluate(tiny_model(), tiny_samples(), ["gradcam", "normgrad", "meta:normgrad"], ["input", "0", "3"],
                    list(metrics), batch_size=2, settings={"randomise": ["7", "3"], "curve_batch": 32}, **kw)


def _table(rows):
    return {(r.canonical, r.layer, r.metric, r.measure, r.subset): (r.value, r.n, r.nan, r.std) for r in rows}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a[k], b[k])), k


def test_every_metric_of_the_paper_is_covered(registry):
    """The paper's metrics (the ``builtin-metrics`` plugin) are all in the sweep-equals-evaluate test below; the
    Quantus families are covered for every metric by tests/test_metrics_registry.py."""
    paper = {name for name, m in registry.metrics.items() if m.origin.plugin == "builtin-metrics"}
    assert paper <= {m.split("(")[0] for m in DRIVER_METRICS} | {"pointing"}


def test_evaluate_equals_sweep_for_the_metrics_with_masks(tmp_path):
    """The localisation metrics read the explained class's mask (here each image's first annotated class): the
    sweep's rows equal ``evaluate``'s, and the values are defined on (nearly) every image."""
    samples = _pointing_samples()
    cfg = tiny_config(tmp_path, metrics=MASK_METRICS, methods=("gradcam", "linear-approx"), layers=("0", "3"),
                      combine=(), targets="label")
    rows = sweep(cfg, model=tiny_model(), samples=samples, out=QUIET()).rows
    got = evaluate(tiny_model(), samples, ["gradcam", "linear-approx"], ["0", "3"], list(MASK_METRICS),
                   batch_size=2, targets="label")
    assert {r.metric for r in rows} == set(MASK_METRICS) == {r.metric for r in got.rows}
    _same(_table(rows), _table(got.rows))
    assert all(r.n >= 3 for r in got.rows)  # NaN only where a map is all zero (Grad-CAM after its ReLU)


def test_evaluate_equals_sweep_for_every_builtin_metric(tmp_path):
    """One driver: the sweep's rows (through its store, JSON and reduction) equal ``evaluate``'s, value, n, nan and
    std, for every built-in metric but pointing (next test); a different seed breaks the equality."""
    result = _sweep(tmp_path / "a", DRIVER_METRICS)
    got = _evaluate(DRIVER_METRICS)
    assert {r.metric for r in result.rows} == set(DRIVER_METRICS) == {r.metric for r in got.rows}
    _same(_table(result.rows), _table(got.rows))
    other = _table(_evaluate(["sensitivity(pairing=random)"], seed=1).rows)
    mine = _table(result.rows)
    assert any(other[k][0] != mine[k][0] for k in other if k[4] == "top-vs-random")


def test_the_identity_metric_equals_identity_check(tmp_path):
    """The sweep's identity metric (each method against its conv twin, for the predicted class) equals the
    dedicated identity check of normgrad vs normgrad-conv; a different layer does not."""
    result = _sweep(tmp_path, ["identity"], methods=("normgrad",), layers=("0", "3"))
    records = identity_check(tiny_model(), tiny_samples(), ["0", "3"], methods=("normgrad", "normgrad-conv"),
                             targets="predicted", batch_size=2)
    want = {r.layer: r.value for r in records if r.metric == "spearman"}
    got = {r.layer: r.value for r in result.rows if r.measure == "spearman"}
    assert got == pytest.approx(want, abs=1e-12) and got["0"] != pytest.approx(want["3"], abs=1e-6)


def _pointing_samples():
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(4):
        masks = torch.zeros(2, 32, 32, dtype=torch.bool)
        masks[0, 2 + 5 * i:12 + 5 * i, 4:20] = True
        masks[1, 20:30, 18 - 3 * i:30 - 3 * i] = True
        out.append(Sample(torch.rand(3, 32, 32, generator=g), f"p{i}", (i % 3, 3 + i % 2), masks))
    return out


def test_the_pointing_metric_equals_the_pointing_game(tmp_path):
    """Per-class accuracy averaged over classes, the difficult subset and the centre baseline: the sweep's
    pointing rows equal ``pointing_game``'s; another tolerance changes them."""
    samples = _pointing_samples()
    cfg = tiny_config(tmp_path, metrics=("pointing",), methods=("gradcam", "linear-approx"), layers=("0", "3"),
                      combine=())
    rows = sweep(cfg, model=tiny_model(), samples=samples, out=QUIET()).rows
    records = pointing_game(tiny_model(), samples, ["gradcam", "linear-approx"], ["0", "3"], num_classes=5)
    want = {(r.method, r.layer, r.subset): (r.value, r.count) for r in records if r.metric == "pointing_accuracy"}
    got = {(r.canonical, r.layer, r.subset): (r.value, r.n) for r in rows if not r.floor}
    assert got and got == {k: v for k, v in want.items() if k[0] != "center-baseline"}
    centre = {r.subset: (r.value, r.n) for r in rows if r.subset == "floor:centre" and r.layer == "3"}
    assert centre["floor:centre"] == want["center-baseline", "", "all"]
    tight = sweep(tiny_config(tmp_path / "t", metrics=("pointing(tolerance=1)",), methods=("gradcam",),
                              layers=("3",), combine=()), model=tiny_model(), samples=samples, out=QUIET()).rows
    assert next(r.value for r in tight if r.subset == "all") < got["pooled-scaling+sum+relu", "3", "all"][0]


# ----------------------------------------------------------------------------- directions
@given(st.lists(st.floats(-1, 1) | st.just(math.nan), min_size=1, max_size=8),
       st.sampled_from(list(Direction)))
def test_the_best_value_follows_the_direction(values, direction):
    finite = [v for v in values if math.isfinite(v)]
    best = direction.best(values)
    if not finite:
        assert best is None
    elif direction is Direction.HIGHER:
        assert best == max(finite)
    elif direction is Direction.LOWER:
        assert best == min(finite)
    else:
        assert abs(best) == min(abs(v) for v in finite)


def test_randomisation_stars_the_value_closest_to_zero(tmp_path):
    """A map anti-correlated with its trained self is no better than an independent one: the star of the summary
    goes to the smallest |rho|, not the most negative rho."""
    from extagg.sweep.results import headline_tables

    result = _sweep(tmp_path, ["randomisation(hog_cell=8)"], methods=("normgrad", "gradcam"))
    h = headline_tables(result.plan, list(result.rows))[0]
    assert h.direction is Direction.ZERO and h.subset == f"cascading:{result.plan.blocks[-1]}"
    summary = (tmp_path / "summary.txt").read_text()
    for method in result.plan.methods:
        cells = {layer: r.value for (m, layer), r in h.table.items() if m == method}
        best = min(cells, key=lambda layer: abs(cells[layer]))
        line = next(x for x in summary.splitlines() if x.startswith(result.plan.layout.asked[method] + " "))
        assert f"{cells[best]:.3f}*" in line
        assert line.count("*") == 1


# ----------------------------------------------------------------------------- floors
def test_the_cross_image_floor_is_the_similarity_of_different_images_maps():
    """Image i's map against image i+1's map of the same batch (the last against the first), by scipy; NaN for
    a batch of one image."""
    model, samples = tiny_model(), tiny_samples(3)
    out = evaluate(model, samples, "linear-approx", "3", "sensitivity", batch_size=3)
    got = [v.value for v in out.values if v.subset == "floor:cross-image" and v.measure == "spearman"]
    maps = []
    for s in samples:
        x = s.image[None]
        c = int(model(x).argmax())
        maps.append(extagg.saliency(model, x, "linear-approx", "3", targets=c, resize=True)
                    ["linear-approx", "3"][0, 0].detach().numpy().ravel())
    want = [spearmanr(maps[i], maps[(i + 1) % 3])[0] for i in range(3)]
    assert got == pytest.approx(want, abs=1e-9)
    single = evaluate(model, samples, "linear-approx", "3", "sensitivity", batch_size=1)
    assert all(math.isnan(v.value) for v in single.values if v.subset == "floor:cross-image")


def _lag1(m: torch.Tensor) -> float:
    """Correlation of horizontally adjacent pixels (a map's smoothness)."""
    a, b = m[..., :, :-1].reshape(-1).double(), m[..., :, 1:].reshape(-1).double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_the_smooth_noise_floor_is_as_smooth_as_the_map():
    """At a coarse layer (8x8 upsampled to 64x64) the floor's random map has the map's values and smoothness, and
    SSIM against it is far above SSIM against pixel noise (about 0, the old floor), which hides what any two
    smooth maps share by chance."""
    from extagg.evaluation.context import surrogates

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(8),
                                torch.nn.Conv2d(4, 6, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()
    g = torch.Generator().manual_seed(1)
    samples = [Sample(torch.rand(3, 64, 64, generator=g), f"i{i}") for i in range(3)]
    out = evaluate(model, samples, "linear-approx", "3", "randomisation(hog_cell=8)", batch_size=3,
                   settings={"randomise": ["7"]})
    smooth = out.value("linear-approx", "3", "randomisation", "ssim", "floor:smooth-noise")
    maps = extagg.saliency(model, torch.stack([s.image for s in samples]), "linear-approx", "3", resize=True)
    m = maps["linear-approx", "3"][:, 0].detach()
    pixel = torch.rand(m.shape, generator=torch.Generator().manual_seed(0))
    assert abs(float(ssim(m, pixel).mean())) < 0.05 and smooth > float(ssim(m, pixel).mean()) + 0.1
    sur = surrogates(m, [1, 2, 3])
    assert torch.equal(sur.flatten(1).sort(1).values, m.flatten(1).sort(1).values)  # the map's own values
    assert abs(_lag1(sur) - _lag1(m)) < 0.05 and _lag1(pixel) < 0.05 < _lag1(m) - 0.5  # its smoothness
    assert not torch.equal(sur, m) and abs(spearmanr(sur.flatten(), m.flatten())[0]) < 0.3


# ----------------------------------------------------------------------------- sensitivity pairings
def test_sensitivity_pairings_pick_the_classes_they_name():
    """second: the runner-up; random: another class than the top, the same for an image whatever its batch."""
    model, samples = tiny_model(), tiny_samples(4)
    records = class_sensitivity(model, samples, "linear-approx", "3", pairing="second", batch_size=1)
    want = []
    for s in samples:
        x = s.image[None]
        order = model(x)[0].argsort(descending=True)
        a, b = (extagg.saliency(model, x, "linear-approx", "3", targets=int(c), resize=True)
                ["linear-approx", "3"][0, 0].detach().numpy().ravel() for c in order[:2])
        want.append(spearmanr(a, b)[0])
    got = next(r for r in records if r.subset == "top-vs-second" and r.metric == "spearman")
    assert got.value == pytest.approx(np.mean(want), abs=1e-9)
    by_batch = [_values(evaluate(model, samples, "linear-approx", "3", "sensitivity(pairing=random)",
                                 batch_size=b)) for b in (1, 4)]
    assert by_batch[0] == pytest.approx(by_batch[1], abs=1e-5)  # the same classes (batches differ in float32)
    bottom = _values(evaluate(model, samples, "linear-approx", "3", "sensitivity", batch_size=4), "top-vs-bottom")
    assert bottom != pytest.approx(by_batch[0], abs=1e-3)


def _values(evaluation, subset="top-vs-random"):
    return [v.value for v in evaluation.values if v.subset == subset and v.measure == "spearman"]


# ----------------------------------------------------------------------------- randomisation steps
def test_the_sweep_randomises_one_block_per_step_as_evaluate_does(tmp_path):
    """A ModuleList of blocks is randomised block by block (output first) by both drivers; the old sweep lumped it."""
    from test_evaluation_metrics import _AttributeOrderNotExecutionOrder

    torch.manual_seed(0)
    model = _AttributeOrderNotExecutionOrder().eval()
    samples = tiny_samples(2, 24)
    cfg = SweepConfig(data="custom", methods=("linear-approx",), layers=("input",), metrics=("randomisation",),
                      hog_cell=8, combine=(), run_dir=str(tmp_path), progress=False, figures=False)
    result = sweep(cfg, model=model, samples=samples, out=QUIET())
    steps = ["head", "blocks.1", "blocks.0", "bn", "stem"]
    assert list(result.plan.blocks) == steps
    assert [s for s in dict.fromkeys(r.subset for r in result.rows) if not s.startswith("floor:")] == \
        [f"cascading:{b}" for b in steps]


# ----------------------------------------------------------------------------- reduction
def test_reduction_counts_only_defined_values_and_uses_the_sample_std():
    """Catches counting NaN images in a mean's denominator (-0.0850 would become -0.0680 on the fixture) and a
    population std: mean of the finite values, n and nan apart, std with n - 1."""
    vals = [0.5, math.nan, -0.1, 0.2]
    rows = reduce_values([ImageValue("m", "m", "l", "x", "s", "all", f"i{i}", v) for i, v in enumerate(vals)])
    assert len(rows) == 1
    r = rows[0]
    assert (r.n, r.nan) == (3, 1) and r.value == pytest.approx(0.2)
    assert r.std == pytest.approx(float(np.std([0.5, -0.1, 0.2], ddof=1)))
    one = reduce_values([ImageValue("m", "m", "l", "x", "s", "all", "i", 0.3)])[0]
    assert math.isnan(one.std) and one.n == 1


def test_per_class_values_are_averaged_per_class_first():
    hits = [(1, 1.0), (1, 0.0), (2, 1.0)]  # class 1: 1/2, class 2: 1/1 -> 0.75, not 2/3
    rows = reduce_values([ImageValue("m", "m", "l", "p", "hit", "all", f"i{i}", v, c) for i, (c, v) in enumerate(hits)])
    assert rows[0].value == 0.75 and rows[0].n == 3


# ----------------------------------------------------------------------------- names and labels
def test_results_keep_the_names_the_user_asked_for(tmp_path):
    result = _sweep(tmp_path, ["deletion(steps=3)"], methods=("gradcam", "scaling+*"))
    asked = {r.canonical: r.method for r in result.rows}
    assert asked["pooled-scaling+sum+relu"] == "gradcam" and asked["scaling+sum"] == "scaling+sum"
    assert result.value("gradcam", "3", "deletion") == result.value("pooled-scaling+sum+relu", "3", "deletion")
    with pytest.raises(KeyError):
        result.value("normgrad", "3", "deletion")
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "method,canonical,layer,metric,measure,subset,value,n,nan,std,direction"
    assert "|" not in "".join(unit_lines(tmp_path))


class _Named(list):
    class_names = tuple(f"class{i}" for i in range(20))


def test_labelled_data_with_other_classes_is_refused_without_a_class_map(tmp_path):
    """20 data-set classes read as a 5-way model's classes: refused, naming --class-map; with a map, it runs."""
    samples = _Named(Sample(s.image, s.image_id, (i % 3,)) for i, s in enumerate(tiny_samples(3)))
    cfg = dict(metrics=("deletion(steps=3)",), targets="label", methods=("gradcam",), layers=("3",))
    with pytest.raises(InputError, match="class.map"):
        sweep(tiny_config(tmp_path / "a", combine=(), **cfg), model=tiny_model(), samples=samples, out=QUIET())
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"class0": 4, "class1": 3, "class2": 2}))
    result = sweep(tiny_config(tmp_path / "b", combine=(), class_map=str(path), **cfg), model=tiny_model(),
                   samples=samples, out=QUIET())
    assert result.rows and all(r.n == 3 for r in result.rows)


def test_folder_labels_are_matched_to_the_model_categories_by_name():
    from extagg.models import imagenet_categories
    from extagg.sweep.labels import by_name

    categories = imagenet_categories()
    assert by_name(["tench", "Great_White-shark"], categories) == {"tench": 0, "Great_White-shark": 2}
    with pytest.raises(InputError, match="'cats', 'dogs'.*--class-map"):
        by_name(["tench", "cats", "dogs"], categories)


def test_a_folder_run_maps_labels_by_name_or_refuses():
    """Folder indices 0..K-1 are never read as the model's classes: names that match the model's categories are
    mapped, others refused; a model without known categories needs --class-map."""
    from extagg.sweep.labels import sweep_class_map

    cfg = SweepConfig(data="folder", root="photos", targets="label", metrics=("deletion",))
    cmap = sweep_class_map(cfg, ["goldfish", "tench"], 1000)
    assert cmap.groups == ((1,), (0,))
    with pytest.raises(InputError, match="'cat'"):
        sweep_class_map(cfg, ["cat", "tench"], 1000)
    with pytest.raises(InputError, match="class-map"):
        sweep_class_map(cfg, ["a", "b", "c", "d", "e"], 5)
    assert sweep_class_map(SweepConfig(data="folder", root="photos", metrics=("deletion",)), ["cat"], 1000) is None


def test_checkpoints_measure_some_steps_of_the_same_cascade():
    """``checkpoints=2`` randomises the same blocks in the same order and measures after steps 3 and 5 of 5: those
    numbers equal the full cascade's at the same steps (and differ from the steps in between)."""
    from extagg_builtins.metrics import measured
    from test_evaluation_metrics import _AttributeOrderNotExecutionOrder

    assert measured(21, 6) == [3, 6, 10, 13, 17, 20] and measured(5, 0) == measured(5, 9) == [0, 1, 2, 3, 4]
    torch.manual_seed(0)
    model = _AttributeOrderNotExecutionOrder().eval()
    samples = tiny_samples(2, 24)
    full = evaluate(model, samples, "linear-approx", "input", "randomisation(hog_cell=8)", batch_size=2)
    some = evaluate(model, samples, "linear-approx", "input", "randomisation(checkpoints=2,hog_cell=8)", batch_size=2)
    steps = [s for s in dict.fromkeys(r.subset for r in some.rows) if not s.startswith("floor:")]
    assert steps == ["cascading:blocks.0", "cascading:stem"]
    value = {(r.subset, r.measure): r.value for r in full.rows}
    for r in some.rows:
        assert r.value == value[r.subset, r.measure]
    assert value["cascading:blocks.1", "spearman"] != value["cascading:blocks.0", "spearman"]


def test_a_misspelt_metric_fails_before_any_work(tmp_path, monkeypatch):
    """The metric calls are resolved before the model or the data are touched, with a did-you-mean."""
    import extagg.sweep.runner as runner

    monkeypatch.setattr(runner, "_load", lambda *a, **k: pytest.fail("loaded the model before checking metrics"))
    with pytest.raises(extagg.UnknownNameError, match="did you mean 'steps'"):
        sweep(tiny_config(tmp_path, metrics=("deletion(step=3)",)), model=tiny_model(), samples=tiny_samples(),
              out=QUIET())
    assert not (tmp_path / "config.json").exists()


def test_pointing_beside_batched_metrics_keeps_their_batches_and_skips_empty_images(tmp_path):
    """An image with only skipped (difficult) objects has nothing to point at: no value, no error. Pointing takes
    the batch's images one at a time while sensitivity keeps the batch, so its cross-image floor stays defined;
    the pointing numbers equal a pointing-only run's."""
    samples = _pointing_samples()
    samples[1] = Sample(samples[1].image, samples[1].image_id, samples[1].classes, samples[1].masks, (True, True))
    both = evaluate(tiny_model(), samples, "gradcam", "3", ["pointing", "sensitivity"], batch_size=4)
    alone = evaluate(tiny_model(), samples, "gradcam", "3", "pointing", batch_size=1)
    _same(_table([r for r in both.rows if r.metric == "pointing"]), _table(alone.rows))
    assert not [v for v in both.values if v.metric == "pointing" and v.image == "p1"]
    floor = next(r for r in both.rows if r.subset == "floor:cross-image" and r.measure == "spearman")
    assert floor.n == 4 and floor.nan == 0
    result = sweep(tiny_config(tmp_path, metrics=("pointing", "sensitivity"), methods=("gradcam",), layers=("3",),
                               combine=(), batch_size=4), model=tiny_model(), samples=samples, out=QUIET())
    assert result.plan.batches == ((0, 1, 2, 3),)
    _same(_table(result.rows), _table(both.rows))


def test_unnamed_images_get_their_own_seeds():
    """Images without an id are seeded by their position: their random pairings and surrogates differ."""
    model = tiny_model()
    samples = [Sample(s.image) for s in tiny_samples(3)]
    out = evaluate(model, samples, "linear-approx", "3", "sensitivity", batch_size=3)
    assert {v.image for v in out.values} == {"0", "1", "2"}
    from extagg.evaluation.context import seed_of

    assert len({seed_of(0, i, "scaling+sum", "3", "") for i in ("0", "1", "2")}) == 3


def test_value_defaults_to_the_headline_subset_and_refuses_an_ambiguous_name():
    out = _evaluate(["sensitivity", "deletion(steps=3)", "deletion(steps=2)"])
    row = next(r for r in out.rows if (r.canonical, r.layer, r.metric, r.measure, r.subset) ==
               ("conv1x1+norm", "3", "sensitivity", "spearman", "top-vs-bottom"))
    assert out.value("normgrad", "3", "sensitivity") == row.value
    with pytest.raises(KeyError, match="names 2 metric calls"):
        out.value("normgrad", "3", "deletion")
    assert out.value("normgrad", "3", "deletion(steps=3)") != out.value("normgrad", "3", "deletion(steps=2)")


def test_a_nan_map_makes_only_its_own_image_combination_nan():
    """One image's non-finite map leaves the other images' layer combination as it is (no batch dependence)."""
    from extagg.evaluation.driver import Driver, make_layout

    model, samples = tiny_model(), tiny_samples(2)
    reg = extagg.default_registry()
    layout = make_layout(reg, model, ["scaling+sum"], ["0", "3"], [], combinations=("combine:sum:uniform",),
                         layer_order=("0", "3"))
    driver = Driver(model, None, reg, layout, [])
    x = torch.stack([s.image for s in samples])
    clean = driver.maps(model, x, ["scaling+sum"], torch.zeros(2, 1, dtype=torch.long), (32, 32))
    import extagg.evaluation.driver as driver_module

    real = driver_module.run_saliency

    def poisoned(*args, **kwargs):  # image 1's map at layer 3 is NaN, as a randomised copy's can be
        maps, targets = real(*args, **kwargs)
        maps["scaling+sum", "3"][1] = math.nan
        return maps, targets

    driver_module.run_saliency = poisoned
    try:
        maps = driver.maps(model, x, ["scaling+sum"], torch.zeros(2, 1, dtype=torch.long), (32, 32))
    finally:
        driver_module.run_saliency = real
    combined = maps["scaling+sum", "combine:sum:uniform"]
    assert torch.isnan(combined[1]).all() and torch.isfinite(combined[0]).all()
    assert torch.equal(combined[0], clean["scaling+sum", "combine:sum:uniform"][0])
