"""Quantus's robustness metrics as extagg metrics (registered through ``register_metrics`` like a third party):
max-sensitivity, avg-sensitivity, local-lipschitz-estimate and relative-input-stability.

Each one explains ``nr_samples`` perturbed copies of the batch: one saliency pass of every method at every layer
per perturbation (``ctx.run_maps(model, targets, x=...)``), so a step costs the same whatever the number of
maps. The noise is drawn per image from a generator seeded by (run seed, image id, metric): an image gets the
same perturbations in any batch, and :func:`noise_steps` reproduces them (the tests hand them to Quantus).
Defaults are Quantus 0.6's: uniform noise U(-0.2, 0.2) for the sensitivities, Gaussian N(0, 0.1) for the
Lipschitz estimate, U(0.02, 0.2) for relative input stability; 200 samples. The model sees the perturbed inputs
rounded to its dtype; input distances are computed in float64 on the drawn perturbation.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from extagg.plugin import (Cost, InputError, Measure, Metric, Param, Value, class_scores, floats, hookimpl,
                           seed_of)

NOISES = ("uniform", "gaussian")


def noise_steps(seed: int, image_ids: Sequence, salt: str, shape: Sequence[int], steps: int, kind: str,
                a: float, b: float) -> Iterator[torch.Tensor]:
    """``steps`` draws of (N, *shape) float64 noise on the CPU, one generator per image seeded by
    ``seed_of(seed, image id, salt)`` and drawn in order (so an image's noise never depends on its batch).
    ``kind`` uniform: U(a, b) (``b`` None: U(-a, a)); gaussian: N(a, b^2) (mean a, std b)."""
    gens = [torch.Generator().manual_seed(seed_of(seed, image, salt)) for image in image_ids]
    for _ in range(steps):
        if kind == "uniform":
            low, high = (-a, a) if b is None else (a, b)
            yield torch.stack([low + (high - low) * torch.rand(tuple(shape), dtype=torch.float64, generator=g)
                               for g in gens])
        else:
            yield torch.stack([a + b * torch.randn(tuple(shape), dtype=torch.float64, generator=g) for g in gens])


def _bounds(lower_bound: float, upper_bound: float):
    """Quantus's uniform noise: U(-lower, lower) without an upper bound (0 here), else U(lower, upper)."""
    if upper_bound == 0:
        return lower_bound, None
    if upper_bound <= lower_bound:
        raise InputError(f"upper_bound {upper_bound} must be larger than lower_bound {lower_bound} (or 0: noise "
                         f"U(-lower_bound, lower_bound))")
    return lower_bound, upper_bound


def _prepare(maps: torch.Tensor, abs: bool, normalise: bool) -> torch.Tensor:
    """(N, H, W) maps in float64: each divided by its own max |value| (``normalise``; an all-zero map is kept),
    then absolute (``abs``), Quantus's order."""
    m = maps.detach().to(torch.float64)
    if normalise:
        peak = m.flatten(1).abs().amax(1)
        m = m / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]
    return m.abs() if abs else m


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.full_like(t, math.nan))


def _perturbation_loop(ctx, name, nr_samples, kind, a, b, abs, normalise, objective, reduce, nan_on_change):
    """For every key and image: ``reduce`` over samples of ``objective(maps, perturbed maps, x, x perturbed)``
    ((N,) each); a sample whose perturbation changes the prediction is NaN where ``nan_on_change``."""
    keys, x = ctx.keys, ctx.x
    base = ctx.maps_for()
    given = {k: _prepare(base[k], abs, normalise) for k in keys}
    x64 = x.detach().to(torch.float64)
    predicted = ctx.scores.argmax(1).cpu()
    per_key = {k: [] for k in keys}
    for noise in noise_steps(ctx.seed, ctx.image_ids, name, x.shape[1:], nr_samples, kind, a, b):
        xp64 = x64 + noise.to(x.device)
        xp = xp64.to(x.dtype)
        maps = ctx.run_maps(ctx.model, ctx.explained, x=xp)
        changed = None
        if nan_on_change:
            changed = (class_scores(ctx.model, xp).argmax(1).cpu() != predicted)
        for k in keys:
            v = objective(given[k], _prepare(maps[k][:, 0], abs, normalise), x64, xp64).cpu()
            per_key[k].append(v if changed is None else v.masked_fill(changed, math.nan))
    out = []
    for k in keys:
        vals = floats(_finite(reduce(torch.stack(per_key[k], 1))))
        out += [Value(k, i, "all", name.replace("-", "_"), v) for i, v in enumerate(vals)]
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _sensitivity(a, b, x, xp):
    """Quantus's sensitivity: ||a - b|| / ||a|| (Frobenius norms of the flattened maps)."""
    return _flat(a - b).norm(dim=1) / _flat(a).norm(dim=1)


def _lipschitz(a, b, x, xp):
    """||a - b||_2 / (||x - x'||_2 + 1e-10) (Quantus's lipschitz_constant with Euclidean distances)."""
    return _flat(a - b).norm(dim=1) / (_flat(x - xp).norm(dim=1) + 1e-10)


def _ris(a, b, x, xp, eps_min: float = 1e-6):
    """Relative input stability: ||(a - b) / a|| / max(||(x - x') / x||, eps_min), zeros in a and x replaced by
    eps_min as divisors (Quantus's and the paper's guard)."""
    num = _flat((a - b) / (a + (a == 0) * eps_min)).norm(dim=1)
    den = _flat((x - xp) / (x + (x == 0) * eps_min)).norm(dim=1)
    return num / (den + (den == 0) * eps_min)


def _nanmax(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(t), torch.full_like(t, -math.inf), t).amax(1).masked_fill(
        torch.isnan(t).all(1), math.nan)


def _nanmean(t: torch.Tensor) -> torch.Tensor:
    return t.nanmean(1)


def _max(t: torch.Tensor) -> torch.Tensor:
    """np.max: NaN if any sample is NaN."""
    return t.amax(1).masked_fill(torch.isnan(t).any(1), math.nan)


def _positive(v):
    return None if v > 0 else "must be > 0"


def _samples_param(default=200):
    return Param("nr_samples", int, default, "perturbed copies of the batch, one saliency pass each",
                 check=lambda v: None if 1 <= v <= 100_000 else "must be in 1..100000")


def _map_params(abs=False, normalise=False):
    return [Param("abs", bool, abs, "take absolute map values (after normalising)"),
            Param("normalise", bool, normalise, "divide each map by its max |value| (Quantus divides by the batch's "
                  "max; per map here so that an image's number never depends on its batch)")]


def _uniform_params(lower=0.2, upper=0.0):
    return [Param("lower_bound", float, lower, "noise U(-lower_bound, lower_bound), or U(lower_bound, upper_bound)",
                  check=_positive),
            Param("upper_bound", float, upper, "0: no upper bound (symmetric noise); else > lower_bound",
                  check=lambda v: None if v >= 0 else "must be >= 0")]


def _sensitivity_metric(name: str, reduce, word: str) -> Metric:
    def compute(ctx, nr_samples=200, lower_bound=0.2, upper_bound=0.0, abs=False, normalise=False,
                return_nan_when_prediction_changes=False):
        a, b = _bounds(lower_bound, upper_bound)
        nan = return_nan_when_prediction_changes
        return _perturbation_loop(ctx, name, nr_samples, "uniform", a, b, abs, normalise, _sensitivity,
                                  reduce if not nan else (_max if reduce is _nanmax else lambda t: t.mean(1)), nan)

    return Metric(
        name=name, compute=compute,
        measures=[Measure(name=name.replace("-", "_"), direction="lower", low=0.0,
                          doc=f"the {word} over perturbations of ||map - perturbed map|| / ||map||")],
        params=[_samples_param(), *_uniform_params(), *_map_params(),
                Param("return_nan_when_prediction_changes", bool, False,
                      "NaN for a perturbation that changes the predicted class")],
        needs={"extra_passes"},
        cost=lambda n, keys, blocks, nr_samples=200, return_nan_when_prediction_changes=False, **_: Cost(
            saliency_passes=nr_samples, forward_images=n * nr_samples if return_nan_when_prediction_changes else 0),
        doc=f"{word.capitalize()}-sensitivity: how much a map changes under small uniform input noise, the {word} "
            "of the relative Frobenius distance to the unperturbed map over nr_samples perturbations; lower is "
            "better. Quantus's definition and defaults; normalise (off by default) divides per map, not per batch.",
        reference="Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019",
    )


def _lle(ctx, nr_samples=200, perturb_mean=0.0, perturb_std=0.1, abs=False, normalise=True,
         return_nan_when_prediction_changes=False):
    nan = return_nan_when_prediction_changes
    return _perturbation_loop(ctx, "local-lipschitz-estimate", nr_samples, "gaussian", perturb_mean, perturb_std,
                              abs, normalise, _lipschitz, _max if nan else _nanmax, nan)


LOCAL_LIPSCHITZ = Metric(
    name="local-lipschitz-estimate", compute=_lle,
    measures=[Measure(name="local_lipschitz_estimate", direction="lower", low=0.0,
                      doc="the largest ||map - perturbed map||_2 / ||x - perturbed x||_2 over perturbations")],
    params=[_samples_param(),
            Param("perturb_mean", float, 0.0, "mean of the Gaussian input noise"),
            Param("perturb_std", float, 0.1, "standard deviation of the Gaussian input noise", check=_positive),
            *_map_params(normalise=True),
            Param("return_nan_when_prediction_changes", bool, False,
                  "NaN for a perturbation that changes the predicted class")],
    needs={"extra_passes"},
    cost=lambda n, keys, blocks, nr_samples=200, return_nan_when_prediction_changes=False, **_: Cost(
        saliency_passes=nr_samples, forward_images=n * nr_samples if return_nan_when_prediction_changes else 0),
    doc="Local Lipschitz estimate: the largest ratio of the map's change to the input's change (Euclidean) over "
        "Gaussian perturbations; lower is better. Quantus's definition and defaults (maps normalised by their max "
        "|value|), except that each map is normalised by its own maximum where Quantus divides by the batch's, "
        "so the number of an image does not depend on the other images of its batch.",
    reference="Alvarez-Melis & Jaakkola, On the Robustness of Interpretability Methods, ICML WHI workshop 2018",
)


def _ris_compute(ctx, nr_samples=200, lower_bound=0.02, upper_bound=0.2, abs=False, normalise=False,
                 eps_min=1e-6, return_nan_when_prediction_changes=True):
    a, b = _bounds(lower_bound, upper_bound)
    nan = return_nan_when_prediction_changes
    return _perturbation_loop(ctx, "relative-input-stability", nr_samples, "uniform", a, b, abs, normalise,
                              lambda m, p, x, xp: _ris(m, p, x, xp, eps_min), _max if nan else _nanmax, nan)


RELATIVE_INPUT_STABILITY = Metric(
    name="relative-input-stability", compute=_ris_compute,
    measures=[Measure(name="relative_input_stability", direction="lower", low=0.0,
                      doc="the largest relative map change over the relative input change; NaN when a "
                          "perturbation changes the prediction")],
    params=[_samples_param(), *_uniform_params(0.02, 0.2), *_map_params(),
            Param("eps_min", float, 1e-6, "guard for zero divisors", check=_positive),
            Param("return_nan_when_prediction_changes", bool, True,
                  "NaN for an image whose prediction any perturbation changes (the paper: x' in the same class)")],
    needs={"extra_passes"},
    cost=lambda n, keys, blocks, nr_samples=200, return_nan_when_prediction_changes=True, **_: Cost(
        saliency_passes=nr_samples, forward_images=n * nr_samples if return_nan_when_prediction_changes else 0),
    doc="Relative input stability: the largest ratio ||(e - e')/e|| / max(||(x - x')/x||, eps) over "
        "perturbations x' that keep the predicted class (Quantus: NaN for the image otherwise); lower is better. "
        "Quantus's definition and defaults: uniform noise U(0.02, 0.2), 200 samples.",
    reference="Agarwal et al., Rethinking Stability for Attribution-based Explanations, ICLR PAIR2Struct workshop "
              "2022",
)

MAX_SENSITIVITY = _sensitivity_metric("max-sensitivity", _nanmax, "maximum")
AVG_SENSITIVITY = _sensitivity_metric("avg-sensitivity", _nanmean, "average")
METRICS: tuple = (MAX_SENSITIVITY, AVG_SENSITIVITY, LOCAL_LIPSCHITZ, RELATIVE_INPUT_STABILITY)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
