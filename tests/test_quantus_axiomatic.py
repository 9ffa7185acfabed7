"""The axiomatic family (completeness, non-sensitivity, input-invariance) against Quantus 0.6.0, image by image.

Same model, inputs and maps on both sides: extagg through ``score()``, Quantus through its metric classes with its
defaults. The model's first conv has no padding, so that Quantus's bias change (the smallest response over
positions) and extagg's (the response away from the border, the paper's W m) are the same number.
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
SIZE = 6


def tiny_model() -> torch.nn.Module:
    return seeded_convnet(first_padding=0)


def explainer(method: str, layer: str = "input"):
    def explain(model, x, targets):
        m = extagg.saliency(model, x, method, layers=layer, targets=targets)[method, layer]
        return resize_maps(m, x.shape[-2:]).detach()
    return explain


def quantus_explainer(method: str, layer: str = "input"):
    def explain(model, inputs, targets, **kw):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        return explainer(method, layer)(model, x, torch.as_tensor(np.asarray(targets))).numpy()
    return explain


@pytest.fixture(scope="module")
def case():
    model = tiny_model()
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    maps = {m: explainer(m, layer)(model, x, y)[:, 0] for m, layer in (("gradcam", "2"), ("bias+sum", "input"),
                                                                      ("scaling+sum", "input"))}
    # every map with largest absolute value 1: Quantus's one normalisation per call is then extagg's per map,
    # and a call on the whole batch (faster than one call per image) compares image by image
    maps = {k: m / m.abs().flatten(1).amax(1)[:, None, None] for k, m in maps.items()}
    return model, x, y, maps


def ours(metric, model, x, y, maps, measure=None, **kw):
    out = score(metric, model, x, maps, y, registry=builtin_registry(), **kw)
    return np.array(out.per_image(measure=measure), dtype=np.float64)


def theirs(cls, model, x, y, maps, per_image=True, call=None, channels=False, **kw):
    """Quantus's per-image scores; ``channels``: the map given as (N, C, H, W), in channel 0 (zeros elsewhere:
    the same sum and maximum), for Quantus's Completeness, whose baseline covers only as many input values as the
    attribution has."""
    a = None if maps is None else maps[:, None].double().numpy()
    if channels:
        a = np.concatenate([a, np.zeros_like(a).repeat(x.shape[1] - 1, 1)], 1)
    run = lambda s: np.asarray(cls(**QUIET, **kw)(  # noqa: E731
        model=model, x_batch=x[s].numpy(), y_batch=y[s].numpy(), a_batch=None if a is None else a[s],
        device="cpu", **(call or {})), dtype=np.float64)
    if per_image:
        return np.concatenate([run(slice(i, i + 1)) for i in range(x.shape[0])])
    return run(slice(None))


# --------------------------------------------------------------------------------------------- completeness
def test_completeness_equals_quantus_and_its_counter_case(case):
    """Quantus's exact-equality test fails on real maps (0 on both sides); a one-pixel map holding exactly
    f(x) - f(baseline) passes it on both sides (normalise=false), so the 0s above can be 1s. (Exact equality
    depends on how the forwards are batched: both sides forward the 3 images together here.)"""
    model, x, y, maps = case
    for method in ("gradcam", "bias+sum"):
        got = ours("completeness", model, x, y, maps[method], "holds")
        np.testing.assert_array_equal(got, theirs(quantus.Completeness, model, x, y, maps[method], channels=True))
        assert (got == 0).all()
    with torch.no_grad():
        base = x.flatten(1).amin(1)[:, None, None, None].expand_as(x)
        delta = model(x)[range(3), y] - model(base.contiguous())[range(3), y]
    exact = torch.zeros(3, SIZE, SIZE, dtype=torch.float64)
    exact[:, 3, 4] = delta.double()
    got = ours("completeness(normalise=false)", model, x, y, exact, "holds")
    np.testing.assert_array_equal(got, [1, 1, 1])
    quantus_holds = theirs(quantus.Completeness, model, x, y, exact, per_image=False, channels=True,
                           normalise=False)
    np.testing.assert_array_equal(quantus_holds, [1, 1, 1])  # one call: the forwards batched as above
    np.testing.assert_allclose(ours("completeness", model, x, y, exact, "gap"), 0, atol=1e-6)


def test_quantus_completeness_baseline_of_a_one_channel_map_is_partial(case):
    """With an (N, 1, H, W) attribution Quantus 0.6.0 replaces only the first H x W input values (channel 0) by
    the baseline; extagg replaces the whole image, as the paper's baseline is. Measured: the exact map above fails
    Quantus's test given as one channel, and Quantus's f(x) - f(baseline) is then the partial one."""
    model, x, y, _ = case
    with torch.no_grad():
        partial = x.clone()
        partial[:, 0] = x.flatten(1).amin(1)[:, None, None]
        delta = model(x)[range(3), y] - model(partial)[range(3), y]
    exact = torch.zeros(3, SIZE, SIZE, dtype=torch.float64)
    exact[:, 3, 4] = delta.double()
    np.testing.assert_array_equal(theirs(quantus.Completeness, model, x, y, exact, per_image=False,
                                         normalise=False), [1, 1, 1])
    assert (ours("completeness(normalise=false)", model, x, y, exact, "holds") == 0).all()


def test_completeness_gap_by_hand(case):
    """gap: the map's sum (as given, not normalised) minus f(x) - f(baseline), with each baseline of Quantus."""
    model, x, y, maps = case
    m = maps["bias+sum"]
    for baseline, fill in (("black", x.flatten(1).amin(1)), ("white", x.flatten(1).amax(1)),
                           ("mean", x.flatten(1).mean(1)), ("zero", torch.zeros(3))):
        with torch.no_grad():
            b = fill[:, None, None, None].expand_as(x).contiguous()
            delta = (model(x)[range(3), y] - model(b)[range(3), y]).double()
        expected = m.double().flatten(1).sum(1) - delta
        got = ours(f"completeness(perturb_baseline={baseline})", model, x, y, m, "gap")
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, err_msg=baseline)


# --------------------------------------------------------------------------------------------- non-sensitivity
@pytest.mark.parametrize("params, kw, methods", [
    ("", {}, ("gradcam", "bias+sum")), ("(eps=0.001)", {"eps": 1e-3}, ("bias+sum",)),
    ("(perturb_baseline=white,softmax=false)", {"perturb_baseline": "white"}, ("gradcam",))])
def test_non_sensitivity_equals_quantus(case, params, kw, methods):
    model, x, y, maps = case
    call = {"softmax": False} if "softmax=false" in params else None
    for method in methods:
        got = ours("non-sensitivity" + params, model, x, y, maps[method])
        np.testing.assert_array_equal(got, theirs(quantus.NonSensitivity, model, x, y, maps[method],
                                                  per_image=False, call=call, **kw), err_msg=method)


def test_non_sensitivity_counter_case(case):
    """A larger eps counts other features on both sides (the equality above is not of constants)."""
    model, x, y, maps = case
    m = maps["gradcam"]
    a, b = ours("non-sensitivity", model, x, y, m), ours("non-sensitivity(eps=0.01)", model, x, y, m)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(b, theirs(quantus.NonSensitivity, model, x, y, m, per_image=False, eps=0.01))


def test_non_sensitivity_feature_groups(case):
    """features_in_step > 1: each feature takes its group's sensitivity (Quantus 0.6.0 cannot run it: its
    step count and feature count no longer match); a step that does not divide C H W is refused."""
    model, x, y, maps = case
    got = ours("non-sensitivity(features_in_step=4)", model, x, y, maps["gradcam"])
    assert ((got >= 0) & (got <= 3 * SIZE * SIZE)).all()
    with pytest.raises(Exception):
        theirs(quantus.NonSensitivity, model, x, y, maps["gradcam"], features_in_step=4)
    with pytest.raises(InputError, match="features_in_step=5 must divide"):
        ours("non-sensitivity(features_in_step=5)", model, x, y, maps["gradcam"])


# --------------------------------------------------------------------------------------------- input invariance
def shift_all(arr, indices, indexed_axes, input_shift, **kwargs):
    """Every input value plus the shift (the paper's shifted input), as a Quantus perturb_func."""
    return np.asarray(arr) + input_shift


@pytest.mark.parametrize("method, invariant", [("bias+sum", 1.0), ("scaling+sum", 0.0)])
def test_input_invariance_equals_quantus(case, method, invariant):
    """The gradient is invariant to a shift the first layer absorbs; gradient x input is not (Kindermans et al.):
    the same verdict per image on both sides, Quantus given a perturb_func that shifts every input value."""
    model, x, y, _ = case
    maps = {method: explainer(method)(model, x, y)[:, 0]}  # as the method gives it (compared with the new map)
    got = ours("input-invariance", model, x, y, maps[method], "invariant", explain=explainer(method))
    expected = theirs(quantus.InputInvariance, model, x, y, maps[method], perturb_func=shift_all,
                      call={"explain_func": quantus_explainer(method)})
    np.testing.assert_array_equal(got, expected)
    assert (got == invariant).all()
    diff = ours("input-invariance", model, x, y, maps[method], "max_difference", explain=explainer(method))
    assert (diff < 1e-5).all() if invariant else (diff > 1e-3).all()


def test_quantus_default_shift_misses_the_first_input_value(case):
    """Quantus 0.6.0's default perturb_func leaves the first value of each image (channel 0, pixel (0, 0))
    unshifted, so its shifted model sees a changed image; extagg shifts every value, as the paper does. Measured
    here: the inputs Quantus explains differ from x + shift at exactly that value."""
    model, x, y, maps = case
    seen = {}

    def spy(model, inputs, targets, **kw):
        seen["x"] = np.asarray(inputs)
        return quantus_explainer("bias+sum")(model, inputs, targets)

    theirs(quantus.InputInvariance, model, x, y, maps["bias+sum"], per_image=False, call={"explain_func": spy})
    wrong = np.argwhere(np.abs(seen["x"] - (x - 1).numpy()) > 1e-6)
    assert wrong.tolist() == [[i, 0, 0, 0] for i in range(x.shape[0])]


def test_input_invariance_counter_case_and_model_untouched(case):
    """Without the first layer's correction (input_shift=0 on the model, the input still shifted by hand) the
    gradient changes: the verdict depends on the absorbed shift. The user's model keeps its weights and has no
    hook left."""
    model, x, y, maps = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shifted = x - 1.0
    m0 = explainer("bias+sum")(model, x, y)[:, 0]
    m1 = explainer("bias+sum")(model, shifted, y)[:, 0]
    assert (m0 - m1).abs().amax() > 1e-3  # what the metric would see without the absorbed shift
    ours("input-invariance", model, x, y, maps["bias+sum"], explain=explainer("bias+sum"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(mod._forward_hooks for mod in model.modules())


def test_input_invariance_needs_explain(case):
    model, x, y, maps = case
    with pytest.raises(InputError, match="explain="):
        ours("input-invariance", model, x, y, maps["bias+sum"])


def test_sweep_level_smoke():
    """evaluate() with two of the family's metrics: finite values in the declared range, the model unchanged."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    samples = [Sample(torch.rand(3, SIZE, SIZE, generator=g), image_id=f"im{i}") for i in range(3)]
    out = evaluate(model, samples, ["gradcam", "bias+sum"], ["2", "input"], ["completeness", "input-invariance"],
                   registry=builtin_registry(), batch_size=2)
    reg = builtin_registry()
    assert out.values
    for v in out.values:
        meas = reg.metrics[v.metric.split("(")[0]].measure(v.measure)
        assert math.isfinite(v.value) and meas.low <= v.value <= meas.high
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_maps_on_other_inputs_asks_explain_in_score():
    """ctx.run_maps(model, targets, x=...) explains the inputs given: through score(), a pass of the user's own
    model on other inputs calls explain instead of handing back the given maps (which are of the batch's inputs),
    and inputs of another shape are refused."""
    import types

    from extagg.plugin import Measure, Metric, Value, hookimpl

    seen = {}

    def compute(ctx):
        other = ctx.run_maps(ctx.model, ctx.explained, x=ctx.x + 1.0)
        same = ctx.run_maps(ctx.model, ctx.explained)
        with pytest.raises(InputError, match="x must have the batch's shape"):
            ctx.run_maps(ctx.model, ctx.explained, x=ctx.x[:1])
        seen["other"], seen["same"] = other, same
        return [Value(k, i, "all", "v", 0.0) for k in ctx.keys for i in range(ctx.n)]

    module = types.ModuleType("run_maps_probe")
    module.register_metrics = hookimpl(lambda register: register(
        Metric(name="probe", compute=compute, measures=[Measure(name="v", direction="higher")])))
    registry = extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False, extra=[module]))
    model = tiny_model()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    given = torch.zeros(2, SIZE, SIZE)
    explain = lambda model, inputs, targets: inputs.sum(1)  # noqa: E731 - a map that shows which inputs it saw
    score("probe", model, x, given, torch.tensor([0, 1]), explain=explain, registry=registry)
    (other,), (same,) = seen["other"].values(), seen["same"].values()
    torch.testing.assert_close(other[:, 0], (x + 1.0).sum(1))
    torch.testing.assert_close(same[:, 0], given)
