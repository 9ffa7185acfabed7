"""extagg with Quantus and Captum both ways (:mod:`extagg.interop`): extagg's explain_func gives Quantus the maps
extagg gives, the Captum-style class returns extagg's maps (and Captum's own LayerGradCam's), external explainers
(pytorch-grad-cam, Captum) are scored as methods by evaluate() and the sweep, called again for further passes,
and the model is left as it was."""
import csv
import io
import json

import numpy as np
import pytest
import torch

import extagg
from extagg.errors import InputError, UnknownNameError
from extagg.evaluation import Sample, evaluate, score
from extagg.interop import Attribution, from_captum, from_pytorch_grad_cam, quantus_explain_func
from extagg.sweep import SweepConfig, sweep

from model_state import assert_unchanged, snapshot
from sweep_fixtures import tiny_config, tiny_model, tiny_samples

QUIET = dict(disable_warnings=True, display_progressbar=False)


@pytest.fixture(scope="module")
def setup():
    net = tiny_model()
    x = torch.stack([s.image for s in tiny_samples(3)])
    return net, x, net(x).argmax(1)


def extagg_maps(net, x, t, method="gradcam", layer="3", resize=True):
    return extagg.saliency(net, x, method, layer, targets=t, resize=resize)[method, layer]


def samples(x):
    return [Sample(image=x[i], image_id=str(i)) for i in range(x.shape[0])]


# ----------------------------------------------------------------------------- extagg in Quantus
def _quantus_pair(quantus, metric, net, x, t, explain_func, a_batch):
    with_func = metric(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None, explain_func=explain_func,
                       device="cpu")
    with_maps = metric(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a_batch, device="cpu")
    return np.asarray(with_func, dtype=float), np.asarray(with_maps, dtype=float)


@pytest.mark.parametrize("which", ["Sparseness", "PixelFlipping"])
def test_quantus_with_extagg_explain_func_equals_quantus_on_extagg_maps(setup, which):
    """Guards that the explain_func hands Quantus exactly extagg.saliency's maps (resized to the input), from
    NumPy inputs and targets, for a complexity and a faithfulness metric; a map of another layer differs."""
    quantus = pytest.importorskip("quantus")
    net, x, t = setup
    metric = getattr(quantus, which)(**QUIET, **({"features_in_step": 64} if which == "PixelFlipping" else {}))
    maps = extagg_maps(net, x, t)[:, :1].numpy()
    got, want = _quantus_pair(quantus, metric, net, x, t, quantus_explain_func("gradcam", "3"), maps)
    assert got.shape[0] == 3 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
    other, _ = _quantus_pair(quantus, metric, net, x, t, quantus_explain_func("gradcam", "0"), maps)
    assert not np.allclose(other, want)  # counter-case: another layer's maps, other numbers


def test_quantus_sparseness_with_extagg_explain_func_equals_extagg_sparseness(setup):
    """Quantus's Sparseness with extagg's explain_func equals extagg's own ``sparseness`` metric through score()
    on the same maps (1e-6 relative); another method's maps give another number on both sides."""
    quantus = pytest.importorskip("quantus")
    net, x, t = setup
    sparseness = quantus.Sparseness(**QUIET)
    for method, layer in (("gradcam", "3"), ("gradient", "input")):
        want = np.asarray(sparseness(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None,
                                     explain_func=quantus_explain_func(method, layer), device="cpu"))
        got = score("sparseness", net, x, extagg_maps(net, x, t, method, layer), t).per_image(metric="sparseness")
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, score("sparseness", net, x, extagg_maps(net, x, t)).per_image(metric="sparseness"))


def test_quantus_randomisation_metric_calls_the_explain_func_on_its_own_model(setup):
    """Quantus's RandomLogit explains another class through the explain_func (targets it draws, as NumPy):
    finite values, and the maps asked for are extagg's for those classes."""
    quantus = pytest.importorskip("quantus")
    net, x, t = setup
    seen = []
    inner = quantus_explain_func("gradcam", "3")

    def recording(model, inputs, targets, **kw):
        seen.append(np.asarray(targets).copy())
        out = inner(model, inputs, targets, **kw)
        np.testing.assert_array_equal(out, extagg_maps(model, torch.as_tensor(inputs), torch.as_tensor(targets))
                                      .numpy())
        return out

    values = quantus.RandomLogit(num_classes=5, **QUIET)(model=net, x_batch=x.numpy(), y_batch=t.numpy(),
                                                         a_batch=None, explain_func=recording, device="cpu")
    assert np.isfinite(values).all() and len(values) == 3
    assert any((s != t.numpy()).any() for s in seen)  # the other classes went through the explain_func


def test_explain_func_accepts_tensors_and_refuses_bad_input(setup):
    net, x, t = setup
    f = quantus_explain_func("gradcam", "3", resize=False)
    np.testing.assert_array_equal(f(net, x, t), extagg_maps(net, x, t, resize=False).numpy())
    assert f(net, x, int(t[0])).shape == (3, 1, 16, 16)
    with pytest.raises(InputError, match="only device="):
        f(net, x, t, method="Saliency")
    with pytest.raises(InputError, match="one class per image"):
        f(net, x, t[:2])
    with pytest.raises(UnknownNameError, match="gradcma"):
        quantus_explain_func("gradcma", "3")
    with pytest.raises(InputError, match="resize"):
        quantus_explain_func("gradcam", "3", resize="yes")


# ----------------------------------------------------------------------------- extagg as a Captum attribution
def test_captum_style_attribute_equals_saliency_and_captum_layer_gradcam(setup):
    """attribute() is extagg.saliency's map at the layer's grid or upsampled; at the grid, extagg's gradcam is
    Captum's LayerGradCam with relu_attributions=True and pooled-scaling+sum is it without; another target gives
    another map."""
    captum_attr = pytest.importorskip("captum.attr")
    net, x, t = setup
    grid = Attribution(net, "gradcam", "3", upsample=False).attribute(x, target=t)
    assert grid.shape == (3, 1, 16, 16)
    torch.testing.assert_close(grid, extagg_maps(net, x, t, resize=False), rtol=0, atol=0)
    up = Attribution(net, "gradcam", net[3]).attribute(x, target=t.tolist())
    torch.testing.assert_close(up, extagg_maps(net, x, t), rtol=0, atol=0)
    gradcam = captum_attr.LayerGradCam(net, net[3])
    negative = False
    for shift in range(5):
        u = (t + shift) % 5
        relu = Attribution(net, "gradcam", "3", upsample=False).attribute(x, target=u)
        torch.testing.assert_close(relu, gradcam.attribute(x, target=u, relu_attributions=True))
        signed = Attribution(net, "pooled-scaling+sum", "3", upsample=False).attribute(x, target=u)
        torch.testing.assert_close(signed, gradcam.attribute(x, target=u))
        negative |= bool((signed < 0).any())
    assert negative  # some class has negative Grad-CAM values: the ReLU is seen, the test can tell them apart
    assert not torch.allclose(Attribution(net, "gradcam", "3").attribute(x, target=(t + 1) % 5), up)
    torch.testing.assert_close(Attribution(net, "gradcam", "3").attribute(x), up)  # None: the predicted class


def test_captum_style_refusals(setup):
    net, x, t = setup
    with pytest.raises(UnknownNameError):
        Attribution(net, "gradcma", "3")
    with pytest.raises(InputError, match="one class per image"):
        Attribution(net, "gradcam", "3").attribute(x, target=[1, 2])
    with pytest.raises(InputError, match="tuple targets"):
        Attribution(net, "gradcam", "3").attribute(x, target=(1, 2))
    with pytest.raises(InputError, match="upsample"):
        Attribution(net, "gradcam", "3", upsample="yes")


# ----------------------------------------------------------------------------- their explainers in extagg
def test_external_explainers_score_as_score_does_and_are_called_again_for_further_passes(setup):
    """evaluate(explainers=) gives, per external explainer, the numbers score() gives for its maps with the same
    callable as explain=; sensitivity calls it for a second class, randomisation on a randomised copy."""
    pytest.importorskip("captum")
    from captum.attr import Saliency

    net, x, t = setup
    calls = []
    inner = from_captum(Saliency(net), abs=False)

    def recording(model, xx, targets):
        calls.append((model is net, targets.tolist()))
        return inner(model, xx, targets)

    metrics = ["deletion(steps=3)", "sensitivity", "randomisation(checkpoints=2,hog_cell=8)"]
    ev = evaluate(net, samples(x), [], "input", metrics, explainers={"captum-saliency": recording})
    assert {(v.method, v.layer) for v in ev.values} == {("captum-saliency", "external")}
    maps = inner(net, x, t).sum(1)
    for metric in metrics:
        want = score(metric, net, x, maps, t, explain=inner).per_image(metric=metric)
        assert ev.per_image(metric=metric) == pytest.approx(want, rel=1e-6, abs=1e-9), metric
    assert any(not same for same, _ in calls)  # a randomised copy was explained
    assert len({tuple(c) for same, c in calls if same}) >= 2  # and another class on the user's model


def test_external_explainers_leave_the_model_as_it_was(setup):
    """pytorch-grad-cam hooks the model and puts it in eval mode, Captum accumulates .grad: after an evaluation
    with both (randomisation included) the model, in train mode with a .grad, is as it was."""
    pytest.importorskip("pytorch_grad_cam")
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM

    net, x, _ = setup
    model = tiny_model().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    explainers = {"pgc-gradcam": from_pytorch_grad_cam(GradCAM, ["3"]),
                  "captum-ig": from_captum(IntegratedGradients(model), n_steps=4)}
    ev = evaluate(model, samples(x), ["gradcam"], ["3"], ["randomisation(checkpoints=2,hog_cell=8)"],
                  explainers=explainers)
    assert {v.method for v in ev.values} == {"gradcam", "pgc-gradcam", "captum-ig"}
    assert_unchanged(before, model)
    Attribution(model, "gradcam", "3").attribute(x)
    quantus_explain_func("gradcam", "3")(model, x.numpy(), np.zeros(3, dtype=int), device="cpu")
    assert_unchanged(before, model)


def test_pytorch_grad_cam_adapter_gives_its_maps(setup):
    """The adapter returns what pytorch-grad-cam itself returns for the same classes (class or instance form)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, x, t = setup
    with GradCAM(model=net, target_layers=[net[3]]) as cam:
        want = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
        from_instance = from_pytorch_grad_cam(cam)(tiny_model(), x, t)
    np.testing.assert_allclose(from_pytorch_grad_cam(GradCAM, "3")(net, x, t).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(from_instance.numpy(), want, atol=1e-6)  # rebuilt on an equal model
    assert not np.allclose(from_pytorch_grad_cam(GradCAM, "0")(net, x, t).numpy(), want)


def test_external_explainer_refusals(setup):
    from captum.attr import Saliency
    from pytorch_grad_cam import GradCAM

    net, x, _ = setup
    data = samples(x)
    for bad, match in ((({"gradcam": lambda m, x, t: x}), "is an extagg method"),
                       (({"my cam": lambda m, x, t: x}), "plain word"),
                       (({"cam": 3}), "must be a callable"),
                       (([lambda m, x, t: x]), "must be a dict")):
        with pytest.raises(InputError, match=match):
            evaluate(net, data, [], "input", "deletion(steps=3)", explainers=bad)
    with pytest.raises(InputError, match=r"explainer 'flat'.*N = 3"):
        evaluate(net, data, [], "input", "deletion(steps=3)", explainers={"flat": lambda m, x, t: x[:1]})
    wrapped = from_captum(Saliency(lambda inp: net(inp)))
    with pytest.raises(InputError, match="built on a function"):
        evaluate(net, data, [], "input", "randomisation(checkpoints=2,hog_cell=8)", explainers={"s": wrapped})
    with pytest.raises(InputError, match="layers="):
        from_pytorch_grad_cam(GradCAM)
    with pytest.raises(InputError, match="Captum attribution object"):
        from_captum(net)


def test_a_sweep_scores_external_explainers_beside_extagg_methods(tmp_path):
    """One sweep over pytorch-grad-cam's GradCAM, Captum's Saliency and two extagg methods writes one results
    table and summary with all four; the config records the explainer names, and a resume with another set of
    explainers (or none) is refused."""
    pytest.importorskip("pytorch_grad_cam")
    from captum.attr import Saliency
    from pytorch_grad_cam import GradCAM

    net = tiny_model()
    explainers = {"pgc-gradcam": from_pytorch_grad_cam(GradCAM, ["3"]), "captum-saliency": from_captum(Saliency(net))}
    config = tiny_config(tmp_path / "run", methods=("gradcam", "normgrad"), layers=("3",),
                         metrics=("deletion(steps=3)", "sensitivity"))
    printed = io.StringIO()
    out = sweep(config, model=net, samples=tiny_samples(4), out=printed, explainers=explainers)
    assert "external explainers (layer 'external'" in printed.getvalue()
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        table = {(r["method"], r["layer"]) for r in csv.DictReader(f)}
    summary = (tmp_path / "run" / "summary.txt").read_text()
    for method, layer in (("gradcam", "3"), ("normgrad", "3"), ("pgc-gradcam", "external"),
                          ("captum-saliency", "external")):
        assert (method, layer) in table
        assert method in summary
        assert np.isfinite(out.value(method, layer, "deletion(steps=3)"))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert recorded["explainers"] == ["pgc-gradcam", "captum-saliency"]
    for other in ({"pgc-gradcam": explainers["pgc-gradcam"]}, None):
        with pytest.raises(InputError, match="explainers"):
            sweep(config, model=net, samples=tiny_samples(4), out=open("/dev/null", "w"), explainers=other)
    assert SweepConfig(methods=(), explainers=("a",)).methods == ()  # explainers alone are a sweep
    with pytest.raises(InputError, match="at least one method"):
        SweepConfig(methods=())
    ev = evaluate(net, tiny_samples(4), [], "input", "deletion(steps=3)",
                  explainers={"pgc-gradcam": explainers["pgc-gradcam"]}, batch_size=2)
    assert out.value("pgc-gradcam", "external", "deletion(steps=3)") == pytest.approx(
        ev.value("pgc-gradcam", "external", "deletion(steps=3)"), rel=1e-6)
