"""The robustness metrics against Quantus 0.6 on the same model, inputs, maps and perturbations: Quantus gets a
``perturb_func`` that returns exactly the noise extagg draws (seeded per image id), so every per-image number must
agree to 1e-6 relative. Counter-cases: other noise, another parameter or Quantus's batch-wide normalisation give
other numbers."""
import math

import numpy as np
import pytest
import torch

import extagg
from extagg.evaluation import Sample, evaluate, score

quantus = pytest.importorskip("quantus")
from extagg_builtins.metrics_robustness import noise_steps  # noqa: E402
from tiny_nets import torch_init_convnet

LAYER = "2"
N_SAMPLES = 4


@pytest.fixture(scope="module")
def setup():
    net = torch_init_convnet()
    x = torch.rand(3, 3, 32, 32)
    y = net(x).argmax(1)
    return net, x, y, explain(net, x, y)


def explain(model, x, targets, layer=LAYER):
    return extagg.saliency(model, x, "gradcam", layer, targets=targets, resize=x.shape[-2:])["gradcam", layer][:, 0]


def quantus_explain(model, inputs, targets, **kwargs):
    """The same gradcam for Quantus: numpy in, float64 numpy (N, H, W) out (exact copies of the float32 maps)."""
    x = torch.as_tensor(np.asarray(inputs)).float()
    t = torch.as_tensor(np.asarray(targets)).long()
    return explain(model, x, t).detach().double().numpy()


def perturb_like_extagg(ids, salt, shape, kind, a, b, seed=0):
    """A Quantus perturb_func returning extagg's draws (the next step's noise at each call)."""
    steps = noise_steps(seed, ids, salt, shape, 10_000, kind, a, b)

    def perturb(arr, indices, **kwargs):
        out = arr.copy()
        out[...] = arr + next(steps).reshape(arr.shape[0], -1).numpy()
        return out
    return perturb


QUANTUS = {  # extagg name: (Quantus class, kwargs, noise (kind, a, b))
    "max-sensitivity": ("MaxSensitivity", {}, ("uniform", 0.2, None)),
    "avg-sensitivity": ("AvgSensitivity", {}, ("uniform", 0.2, None)),
    "local-lipschitz-estimate": ("LocalLipschitzEstimate", {}, ("gaussian", 0.0, 0.1)),
    "relative-input-stability": ("RelativeInputStability", {}, ("uniform", 0.02, 0.2)),
}


def run_quantus(name, net, x, y, maps, ids, noise=None, **kw):
    cls, extra, default_noise = QUANTUS[name]
    kind, a, b = noise or default_noise
    metric = getattr(quantus, cls)(nr_samples=N_SAMPLES, disable_warnings=True, display_progressbar=False,
                                   perturb_func=perturb_like_extagg(ids, name, x.shape[1:], kind, a, b),
                                   **extra, **kw)
    return np.asarray(metric(model=net, x_batch=x.double().numpy(), y_batch=y.numpy(), a_batch=maps.double().numpy(),
                             device="cpu", explain_func=quantus_explain), dtype=float)


def close(a, b, rel=1e-6):
    return all((math.isnan(p) and math.isnan(q)) or abs(p - q) <= rel * max(abs(p), abs(q), 1e-12)
               for p, q in zip(a, b))


@pytest.mark.parametrize("name", list(QUANTUS))
def test_per_image_values_equal_quantus(setup, name):
    """Each image's number equals Quantus's on the same perturbations, Quantus given the whole batch (the maps of
    a perturbed batch are then computed on the same batch, bit for bit). The Lipschitz estimate normalises maps,
    which Quantus does by the batch's maximum: both sides run it one image at a time (see the next test). Also
    guards that score() explains the perturbed inputs (ctx.run_maps(x=...)) rather than handing back the given
    maps of the unperturbed batch: the sensitivities would then be 0."""
    net, x, y, maps = setup
    ids = [str(i) for i in range(x.shape[0])]
    lipschitz = name == "local-lipschitz-estimate"
    got = score(f"{name}(nr_samples={N_SAMPLES})", net, x, maps, y, explain=explain,
                batch_size=1 if lipschitz else None).per_image()
    if lipschitz:
        want = [float(run_quantus(name, net, x[i:i + 1], y[i:i + 1], maps[i:i + 1], [ids[i]])[0])
                for i in range(x.shape[0])]
    else:
        want = run_quantus(name, net, x, y, maps, ids).tolist()
    assert close(got, want, rel=1e-7), (got, want)
    assert all(math.isfinite(v) for v in got)
    # counter-case: other noise on Quantus's side gives other numbers
    other = run_quantus(name, net, x, y, maps, [f"other{i}" for i in ids], normalise=False).tolist()
    assert not close(got, other, rel=1e-3)


def test_lipschitz_normalises_per_map_where_quantus_normalises_per_batch(setup):
    """The deliberate difference: Quantus divides every map of a batch by the batch's max |value|; extagg by each
    map's own, so an image's number does not depend on its batch. A batch of three differs in Quantus."""
    net, x, y, maps = setup
    name = "local-lipschitz-estimate"
    got = score(f"{name}(nr_samples={N_SAMPLES})", net, x, maps, y, explain=explain).per_image()
    whole = run_quantus(name, net, x, y, maps, [str(i) for i in range(3)]).tolist()
    assert not close(got, whole, rel=1e-3)
    plain = score(f"{name}(nr_samples={N_SAMPLES},normalise=false)", net, x, maps, y, explain=explain).per_image()
    want = run_quantus(name, net, x, y, maps, [str(i) for i in range(3)], normalise=False).tolist()
    assert close(plain, want), (plain, want)


def test_parameters_reach_both_sides(setup):
    """A changed noise level changes both numbers the same way (Quantus's lower_bound / perturb_std)."""
    net, x, y, maps = setup
    got = score(f"max-sensitivity(nr_samples={N_SAMPLES},lower_bound=0.05)", net, x, maps, y,
                explain=explain).per_image()
    want = run_quantus("max-sensitivity", net, x, y, maps, ["0", "1", "2"], ("uniform", 0.05, None),
                       lower_bound=0.05).tolist()
    assert close(got, want)
    default = score(f"max-sensitivity(nr_samples={N_SAMPLES})", net, x, maps, y, explain=explain).per_image()
    assert not close(got, default, rel=1e-3)
    got = score(f"local-lipschitz-estimate(nr_samples={N_SAMPLES},perturb_std=0.3,normalise=false)", net, x, maps,
                y, explain=explain).per_image()
    want = run_quantus("local-lipschitz-estimate", net, x, y, maps, ["0", "1", "2"], ("gaussian", 0.0, 0.3),
                       perturb_std=0.3, normalise=False).tolist()
    assert close(got, want)


def test_prediction_change_gives_nan_on_both_sides(setup):
    """Relative input stability is NaN for an image whose prediction a perturbation changes (Quantus: np.max of a
    NaN); large noise makes that happen."""
    net, x, y, maps = setup
    got = score(f"relative-input-stability(nr_samples={N_SAMPLES},lower_bound=2,upper_bound=40)", net, x, maps, y,
                explain=explain).per_image()
    want = run_quantus("relative-input-stability", net, x, y, maps, ["0", "1", "2"], ("uniform", 2.0, 40.0),
                       perturb_func_kwargs={"lower_bound": 2.0, "upper_bound": 40.0}).tolist()
    assert close(got, want), (got, want)
    assert any(math.isnan(v) for v in got)


def test_noise_is_seeded_per_image_not_per_batch(setup):
    """An image's number is the same alone or in a batch (its noise is drawn from its own id's generator); another
    id, other noise, another number."""
    net, x, y, maps = setup
    whole = score(f"avg-sensitivity(nr_samples={N_SAMPLES})", net, x, maps, y, explain=explain,
                  image_ids=["a", "b", "c"]).per_image()
    alone = score(f"avg-sensitivity(nr_samples={N_SAMPLES})", net, x[1:2], maps[1:2], y[1:2], explain=explain,
                  image_ids=["b"]).per_image()
    assert whole[1] == pytest.approx(alone[0], rel=1e-6)  # the model's float32 numerics differ by batch size
    assert score(f"avg-sensitivity(nr_samples={N_SAMPLES})", net, x[1:2], maps[1:2], y[1:2], explain=explain,
                 image_ids=["z"]).per_image()[0] != pytest.approx(alone[0], rel=1e-4)


def test_bad_bounds_are_refused(setup):
    net, x, y, maps = setup
    with pytest.raises(extagg.errors.ExtaggError, match="upper_bound"):
        score("max-sensitivity(nr_samples=1,lower_bound=0.3,upper_bound=0.1)", net, x, maps, y, explain=explain)


def test_sweep_level_two_metrics_run_in_range():
    """evaluate() with two robustness metrics on a tiny model: finite values, in the declared range."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    samples = [Sample(image=torch.rand(3, 16, 16), image_id=str(i)) for i in range(2)]
    ev = evaluate(net, samples, "gradcam", "0", ["max-sensitivity(nr_samples=2)",
                                                 "local-lipschitz-estimate(nr_samples=2)"])
    values = [v.value for v in ev.values]
    assert len(values) == 4 and all(math.isfinite(v) and v >= 0 for v in values)
