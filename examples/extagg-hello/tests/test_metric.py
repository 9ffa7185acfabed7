"""Tests of extagg-hello's ``hello-gini`` metric, and of how extagg reports a metric plugin that misbehaves.

The registry is built from extagg's built-ins plus the plugin modules under test (``autoload=False``), so the
tests do not depend on what else is installed; one test checks the installed entry point and skips without it.
Expected values come from an independent Gini formula (the mean absolute difference, no sorting) in numpy.
"""
from __future__ import annotations

import csv
import importlib.metadata as md
import io
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import extagg
import extagg_hello
from extagg import cli
from extagg.errors import PluginError, PluginLoadError
from extagg.evaluation import Sample, evaluate
from extagg.maps import resize_maps
from extagg.plugin import Measure, Metric, Value, hookimpl
from extagg.sweep import SweepConfig, sweep
from extagg_hello import metrics as hello_metrics

METHODS = ("scaling+sum", "gradcam")
LAYERS = ("input", "3")  # "3": the stride-2 conv's output, (N, 8, 8, 8) for 16 x 16 images


@pytest.fixture(scope="module")
def registry():
    pm = extagg.make_plugin_manager(autoload=False, extra=[extagg_hello, hello_metrics])
    return extagg.Registry.from_plugin_manager(pm)


def tiny_model() -> torch.nn.Module:
    """conv -> relu -> conv(stride 2) -> relu -> GAP -> linear, 5 classes, float64, seeded."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.double().eval()


def tiny_samples(n: int = 3, size: int = 16) -> list[Sample]:
    g = torch.Generator().manual_seed(1)
    return [Sample(torch.rand(3, size, size, generator=g, dtype=torch.float64), image_id=f"im{i}") for i in range(n)]


def gini_reference(m: np.ndarray) -> float:
    """Gini index as the mean absolute difference over twice the mean (no sorting): sum_ij |x_i - x_j| / (2 n^2 mean)."""
    x = np.asarray(m, dtype=np.float64).ravel()
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size * x.sum()))


def reference_maps(model, samples, method, layer):
    """(N, H, W) maps of ``method`` at ``layer`` for the predicted class, resized to the input as the driver does."""
    x = torch.stack([s.image for s in samples])
    targets = model(x).argmax(1)
    maps = extagg.saliency(model, x, method, layers=layer, targets=targets)[method, layer]
    return resize_maps(maps, x.shape[-2:])[:, 0]


# ----------------------------------------------------------------------------------- the Gini index itself
def test_reference_formula_on_known_values():
    """The reference formula is right where the answer is known, so the equality tests below can fail."""
    assert gini_reference(np.ones(16)) == 0.0
    assert gini_reference(np.eye(1, 16).ravel()) == pytest.approx(1 - 1 / 16)
    assert gini_reference([1.0, 3.0]) == pytest.approx(0.25)  # |1 - 3| * 2 / (2 * 4 * 4)


def test_gini_constant_one_hot_zero_and_sign():
    n = 16
    one_hot = torch.zeros(1, 4, 4, dtype=torch.float64)
    one_hot[0, 2, 1] = 3.0
    assert hello_metrics.gini(torch.full((1, 4, 4), 0.7)).item() == 0.0  # constant: no concentration
    assert hello_metrics.gini(one_hot).item() == pytest.approx(1 - 1 / n)  # one pixel: the maximum
    assert math.isnan(hello_metrics.gini(torch.zeros(1, 4, 4)).item())  # nothing to distribute: undefined
    assert hello_metrics.gini(-one_hot).item() == pytest.approx(1 - 1 / n)  # |map|
    assert math.isnan(hello_metrics.gini(-one_hot, absolute=False).item())  # positive part is all zero
    signed = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    assert hello_metrics.gini(signed).item() == 0.0
    assert hello_metrics.gini(signed, absolute=False).item() == pytest.approx(0.5)


def test_gini_matches_reference_on_random_maps():
    maps = torch.randn(4, 7, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = hello_metrics.gini(maps)
    expected = [gini_reference(m.abs().numpy()) for m in maps]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    got = hello_metrics.gini(maps, absolute=False)
    np.testing.assert_allclose(got.numpy(), [gini_reference(m.clamp(min=0).numpy()) for m in maps], rtol=1e-12)


# ----------------------------------------------------------------------------------- the plugin contract
def test_name_does_not_clash_with_the_builtin_sparseness(registry):
    """The example's Gini metric has a name of its own: extagg's built-in ``sparseness`` (Quantus's Gini index)
    would refuse a plugin metric of the same name, leaving the example's metric out with a warning."""
    assert registry.metrics["hello-gini"].origin.plugin != registry.metrics["sparseness"].origin.plugin
    assert registry.metrics["sparseness"].origin.distribution == "extagg"


def test_registered_with_its_contract(registry):
    m = registry.metrics["hello-gini"]
    assert [(x.name, x.direction.value, x.low, x.high) for x in m.measures] == [("gini", "higher", 0, 1)]
    assert [(p.name, p.type, p.default) for p in m.params] == [("absolute", bool, True)]
    assert "Chalasani" in m.reference and "2020" in m.reference
    assert m.needs == frozenset()


def test_cli_metrics_and_describe(registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda: registry)
    assert cli.main(["metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (line,) = [x for x in lines if x.startswith("hello-gini(")]
    assert "gini (higher is better)" in line and "absolute=true" in line
    assert any(x.startswith("sensitivity(") for x in lines)  # the built-ins are listed next to it
    assert cli.main(["describe", "hello-gini(absolute=false)"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("metric: hello-gini(absolute=false)\n")
    assert "measure gini: higher is better, range [0, 1]" in out
    assert "parameter absolute=false: bool" in out
    assert "Chalasani" in out


# ----------------------------------------------------------------------------------- through the driver
def test_evaluate_equals_the_reference(registry):
    """Per image and reduced, for both parameter values, at the input and at a stride-2 layer (resized)."""
    model, samples = tiny_model(), tiny_samples()
    out = evaluate(model, samples, list(METHODS), list(LAYERS), ["hello-gini", "hello-gini(absolute=false)"],
                   registry=registry, batch_size=2)  # batches of 2 and 1 images
    for metric, absolute in (("hello-gini", True), ("hello-gini(absolute=false)", False)):
        for method in METHODS:
            for layer in LAYERS:
                maps = reference_maps(model, samples, method, layer)
                maps = maps.abs() if absolute else maps.clamp(min=0)
                expected = [gini_reference(m.numpy()) for m in maps]
                got = [v.value for v in out.values if (v.method, v.layer, v.metric, v.subset) ==
                       (method, layer, metric, "all")]
                np.testing.assert_allclose(got, expected, rtol=1e-9)
                row = next(r for r in out.rows if (r.method, r.layer, r.metric, r.subset) ==
                           (method, layer, metric, "all"))
                assert (row.measure, row.n, row.nan, row.direction) == ("gini", 3, 0, "higher")
                assert row.value == pytest.approx(np.mean(expected), rel=1e-9)
                assert row.std == pytest.approx(np.std(expected, ddof=1), rel=1e-6)  # sample std
    # a signed map scores differently on its positive part: the parameter reaches compute
    assert out.value("scaling+sum", "input", "hello-gini", "gini") != \
        out.value("scaling+sum", "input", "hello-gini(absolute=false)", "gini")


def test_sweep_writes_its_rows(registry, tmp_path):
    model, samples = tiny_model(), tiny_samples()
    config = SweepConfig(model="tiny", data="custom", methods=METHODS, layers=LAYERS, metrics=("hello-gini",),
                         combine=(), run_dir=str(tmp_path), batch_size=2, progress=False, figures=False)
    result = sweep(config, model=model, samples=samples, registry=registry, out=io.StringIO())
    with open(tmp_path / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "hello-gini"]
    assert {(r["method"], r["layer"], r["subset"]) for r in rows} == {
        (m, layer, "all") for m in METHODS for layer in LAYERS}
    assert {(r["measure"], r["direction"], r["n"], r["nan"]) for r in rows} == {("gini", "higher", "3", "0")}
    reference = evaluate(model, samples, list(METHODS), list(LAYERS), "hello-gini", registry=registry, batch_size=2)
    for r in rows:
        assert float(r["value"]) == reference.value(r["method"], r["layer"], "hello-gini", "gini", r["subset"])
    assert len(result.rows) == len(rows)
    summary = (tmp_path / "summary.txt").read_text()
    assert "hello-gini: gini [all] (higher is better" in summary and "floor:" not in summary


# ----------------------------------------------------------------------------------- a metric plugin that misbehaves
PLUGIN = "extagg_bad_metric"


def bad_plugin(compute, **kw) -> types.ModuleType:
    module = types.ModuleType(PLUGIN)

    def register_metrics(register):
        register(Metric(name="bad", compute=compute, measures=[Measure(name="score", direction="higher", low=0,
                                                                       high=1)], **kw))
    module.register_metrics = hookimpl(register_metrics)
    return module


def per_image(ctx, value=0.5, measure="score", image=None, key=None):
    return [Value(key or k, i if image is None else image, "all", measure, value) for k in ctx.keys
            for i in range(ctx.n)]


def boom(ctx):
    raise RuntimeError("boom")


BAD = {
    "not a Value": (lambda ctx: [0.5] * ctx.n, r"returned 0\.5, not an extagg\.plugin\.Value"),
    "not iterable": (lambda ctx: 0.5, r"raised TypeError: 'float' object is not iterable"),
    "undeclared measure": (lambda ctx: per_image(ctx, measure="accuracy"),
                           r"returned the undeclared measure 'accuracy'; it declares \['score'\]"),
    "out of range": (lambda ctx: per_image(ctx, value=1.5),
                     r"returned 1\.5 for 'score', outside its declared range \[0, 1\]"),
    "infinite": (lambda ctx: per_image(ctx, value=math.inf), r"returned (inf|an infinite value)"),
    "unknown key": (lambda ctx: per_image(ctx, key=("gradcam", "nowhere")), r"not one of the keys it was given"),
    "image out of range": (lambda ctx: per_image(ctx, image=7), r"value for image 7; the batch has 2 image\(s\)"),
    "nothing": (lambda ctx: [], r"returned no value"),
    "raises": (boom, r"raised RuntimeError: boom"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_misbehaving_metric_is_a_plugin_error_naming_it(case):
    compute, message = BAD[case]
    registry = extagg.Registry.from_plugin_manager(
        extagg.make_plugin_manager(autoload=False, extra=[bad_plugin(compute)]))
    with pytest.raises(PluginError, match=message) as info:
        evaluate(tiny_model(), tiny_samples(2), ["scaling+sum"], ["input"], "bad", registry=registry)
    assert f"metric 'bad' from plugin '{PLUGIN}" in str(info.value)


def test_well_behaved_twin_passes():
    """The same plugin with a correct compute runs: the errors above come from what compute returned."""
    registry = extagg.Registry.from_plugin_manager(
        extagg.make_plugin_manager(autoload=False, extra=[bad_plugin(per_image)]))
    out = evaluate(tiny_model(), tiny_samples(2), ["scaling+sum"], ["input"], "bad", registry=registry)
    assert out.value("scaling+sum", "input", "bad", "score") == 0.5


def test_bad_record_is_refused_when_it_registers():
    with pytest.raises(PluginLoadError, match=rf"{PLUGIN}.*needs \['gpu'\] unknown"):
        extagg.Registry.from_plugin_manager(
            extagg.make_plugin_manager(autoload=False, extra=[bad_plugin(per_image, needs={"gpu"})]))


# ----------------------------------------------------------------------------------- installed and documented
def _installed() -> bool:
    try:
        return any(ep.name == "extagg-hello-metrics" for ep in md.entry_points(group="extagg"))
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _installed(), reason="run `pip install -e examples/extagg-hello`")
def test_installed_entry_point():
    registry = extagg.Registry.from_plugin_manager(extagg.make_plugin_manager())
    origin = registry.metrics["hello-gini"].origin
    assert (origin.plugin, origin.distribution) == ("extagg-hello-metrics", "extagg-hello")


TUTORIAL = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "tutorial.md"


@pytest.mark.skipif(not TUTORIAL.exists(), reason="outside the extagg repository")
def test_tutorial_quotes_this_module_verbatim():
    blocks = re.findall(r"^```python\n# src/extagg_hello/metrics\.py\n(.*?)^```", TUTORIAL.read_text(),
                        flags=re.S | re.M)
    assert blocks, "the tutorial's metric section quotes src/extagg_hello/metrics.py"
    source = Path(hello_metrics.__file__).read_text()
    for block in blocks:
        assert block in source, f"not found verbatim in metrics.py:\n{block}"
