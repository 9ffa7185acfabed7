"""Quantus's localisation metrics, and Score-CAM's energy-based pointing game, as extagg metrics (registered
through ``register_metrics`` like a third party).

Every metric scores the map of each image's explained class against that class's region: the sample's mask (or
its bounding box with ``region=box``), resized to the map's size. An image whose explained class has no
annotated region scores NaN, as Quantus scores an empty mask. Maps are pre-processed as Quantus 0.6.0 does by
default for each metric (normalised by the largest absolute value, per map rather than per call, then the
absolute value where Quantus takes it); all of these metrics are unchanged by a positive rescaling of a map, so
the normalisation only matters for an all-zero map. Ties between equal map values are broken by pixel order
(row-major), where Quantus's unstable ``argsort`` leaves the order unspecified.
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import Cost, InputError, Measure, Metric, Param, average_ranks, hookimpl

from .quantus_prep import abs_normalise_params, emit, flag, maps_of, nan_where, prepare, region_param, regions

NEEDS = {"masks"}
FREE = lambda n, keys, blocks, **params: Cost()  # noqa: E731 - the maps of the shared pass only


def _inputs(ctx, normalise: bool, abs_: bool, region: str):
    """(keys, (K, N, P) pre-processed maps, (N, P) regions, (K, N) undefined: NaN map or empty region)."""
    keys, maps = maps_of(ctx)
    a = prepare(maps, normalise, abs_).flatten(2)
    s = regions(ctx, region).to(a.device).flatten(1)
    bad = ~torch.isfinite(a).all(-1) | (s.sum(-1) == 0)[None]
    return keys, torch.nan_to_num(a), s, bad


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    out = num / den
    return out.masked_fill(~torch.isfinite(out), math.nan)


# --------------------------------------------------------------------------------------------- pointing game
def _pointing_game(ctx, weighted: bool = False, normalise: bool = True, abs: bool = False, region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    top = a == a.amax(-1, keepdim=True)
    hit = (top & s[None]).any(-1).to(torch.float64)
    if weighted:
        hit = hit * (1 - s.sum(-1) / s.shape[-1])[None]
    return emit(keys, {"hit": nan_where(hit, bad)})


POINTING_GAME = Metric(
    name="pointing-game",
    compute=_pointing_game,
    measures=[Measure(name="hit", direction="higher", low=0, high=1,
                      doc="1 if a pixel of the map's maximum lies in the region, else 0 (weighted: times 1 - the "
                          "region's share of the image)")],
    params=[flag("weighted", False, "weight a hit by 1 - the region's share of the image")]
    + abs_normalise_params(False, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="Pointing game (Quantus's PointingGame): does the map's maximum fall inside the explained class's region? "
        "No tolerance radius (the built-in `pointing` is TorchRay's, with one). Differs from Quantus 0.6.0, which "
        "returns a boolean array: an image with an empty region is NaN here (True there), and weighted gives "
        "1 - the region's share for a hit (Quantus's weighted variant raises a TypeError).",
    reference="Zhang et al., Top-down Neural Attention by Excitation Backprop, IJCV 2018",
)


# --------------------------------------------------------------------------------------------- attribution loc.
def _attribution_localisation(ctx, weighted: bool = False, positive_attributions: bool = False,
                              normalise: bool = True, abs: bool = True, region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    if positive_attributions:
        a = a.clamp(min=0)
    share = s.sum(-1).to(a.dtype) / s.shape[-1]
    ratio = (a * s[None]).sum(-1) / (a.sum(-1) + 1e-9)
    bad = bad | (ratio > 1)
    if weighted:
        ratio = ratio * share[None]
    return emit(keys, {"ratio": nan_where(ratio, bad)})


ATTRIBUTION_LOCALISATION = Metric(
    name="attribution-localisation",
    compute=_attribution_localisation,
    measures=[Measure(name="ratio", direction="higher", low=-math.inf, high=1,
                      doc="the map's mass inside the region over its total mass (+1e-9); NaN above 1 (negative "
                          "mass outside the region, possible without abs)")],
    params=[flag("weighted", False, "multiply by the region's share of the image"),
            flag("positive_attributions", False, "clip the map at 0 first")]
    + abs_normalise_params(True, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="Attribution localisation (inside-total relevance ratio): the share of the map's mass inside the explained "
        "class's region. Differs from Quantus 0.6.0 only with weighted: the region's share is of the image's H x W "
        "here; Quantus divides by the size of x_batch[2:] (the images from the third on), a bug.",
    reference="Kohlbrenner et al., Towards Best Practice in Explaining Neural Network Decisions with LRP, IJCNN 2020",
)


# --------------------------------------------------------------------------------------------- top-k
def _order(a: torch.Tensor) -> torch.Tensor:
    """Pixel indices by decreasing value, ties in pixel order."""
    return torch.sort(a, dim=-1, descending=True, stable=True).indices


def _top_k(ctx, k: int = 1000, concept_influence: bool = False, normalise: bool = True, abs: bool = False,
           region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    if k >= a.shape[-1]:
        raise InputError(f"top-k-intersection: k={k} must be smaller than the map's {a.shape[-1]} pixels "
                         f"({ctx.size[0]} x {ctx.size[1]}); pass a smaller k, e.g. top-k-intersection(k=100)")
    chosen = _order(a)[..., :k]
    s_k = s[None].expand_as(a).gather(-1, chosen).to(torch.float64)
    tki = s_k.mean(-1)
    if concept_influence:
        tki = _ratio(tki * s.shape[-1], s.sum(-1).to(tki.dtype)[None].expand_as(tki))
    return emit(keys, {"intersection": nan_where(tki, bad)})


TOP_K_INTERSECTION = Metric(
    name="top-k-intersection",
    compute=_top_k,
    measures=[Measure(name="intersection", direction="higher", low=0, high=math.inf,
                      doc="share of the map's k largest pixels inside the region (in [0, 1]; with "
                          "concept_influence divided by the region's share of the image)")],
    params=[Param("k", int, 1000, "how many of the largest pixels (fewer than the map's pixels)",
                  check=lambda v: None if v >= 1 else "must be >= 1"),
            flag("concept_influence", False, "divide by the region's share of the image")]
    + abs_normalise_params(False, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="Top-k intersection: the share of the k highest-ranked pixels of the map that lie inside the explained "
        "class's region (Quantus's TopKIntersection, same definition and defaults).",
    reference="Theiner et al., Interpretable Semantic Photo Geolocation, WACV 2022",
)


# --------------------------------------------------------------------------------------------- relevance mass
def _mass(ctx, normalise: bool = True, abs: bool = False, region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    return emit(keys, {"mass_accuracy": nan_where(_ratio((a * s[None]).sum(-1), a.sum(-1)), bad)})


RELEVANCE_MASS_ACCURACY = Metric(
    name="relevance-mass-accuracy",
    compute=_mass,
    measures=[Measure(name="mass_accuracy", direction="higher",
                      doc="the map's sum inside the region over its total sum (in [0, 1] for non-negative maps; "
                          "any number for signed ones, as Quantus's default abs=False allows)")],
    params=abs_normalise_params(False, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="Relevance mass accuracy: the share of the map's sum inside the explained class's region (Quantus's "
        "RelevanceMassAccuracy, same definition and defaults).",
    reference="Arras et al., CLEVR-XAI: A Benchmark Dataset for the Ground Truth Evaluation of Neural Network "
              "Explanations, Information Fusion 2022",
)


# --------------------------------------------------------------------------------------------- relevance rank
def _rank(ctx, normalise: bool = True, abs: bool = False, region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    size = s.sum(-1)
    ranked = s[None].expand_as(a).gather(-1, _order(a))
    first = torch.arange(a.shape[-1], device=a.device)[None] < size[:, None]
    acc = (ranked & first[None]).sum(-1).to(torch.float64) / size.clamp(min=1)[None]
    return emit(keys, {"rank_accuracy": nan_where(acc, bad)})


RELEVANCE_RANK_ACCURACY = Metric(
    name="relevance-rank-accuracy",
    compute=_rank,
    measures=[Measure(name="rank_accuracy", direction="higher", low=0, high=1,
                      doc="share of the map's |region| largest pixels inside the region")],
    params=abs_normalise_params(False, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="Relevance rank accuracy: of the as many highest-ranked pixels as the region has, the share inside the "
        "explained class's region (Quantus's RelevanceRankAccuracy, same definition and defaults).",
    reference="Arras et al., CLEVR-XAI: A Benchmark Dataset for the Ground Truth Evaluation of Neural Network "
              "Explanations, Information Fusion 2022",
)


# --------------------------------------------------------------------------------------------- AUC
def roc_auc(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of scores (..., P) for bool labels (..., P): the Mann-Whitney statistic, a tie
    between a region pixel and another counting one half (what the trapezoid over sklearn's ROC curve gives);
    NaN without positives or without negatives."""
    s = s.expand_as(a)
    ranks = average_ranks(a.to(torch.float64))  # 1-based mid-ranks
    pos = s.sum(-1).to(torch.float64)
    neg = s.shape[-1] - pos
    u = (ranks * s).sum(-1) - pos * (pos + 1) / 2
    return _ratio(u, pos * neg)


def _auc(ctx, normalise: bool = True, abs: bool = False, region: str = "mask"):
    keys, a, s, bad = _inputs(ctx, normalise, abs, region)
    return emit(keys, {"auc": nan_where(roc_auc(a, s[None]), bad)})


AUC = Metric(
    name="auc",
    compute=_auc,
    measures=[Measure(name="auc", direction="higher", low=0, high=1,
                      doc="ROC AUC of the map as a detector of the region's pixels (0.5: chance)")],
    params=abs_normalise_params(False, True) + [region_param()],
    needs=NEEDS,
    cost=FREE,
    doc="AUC: the area under the ROC curve of the map's values as scores of the explained class's region (Quantus's "
        "AUC through sklearn's roc_curve; here the equal Mann-Whitney form). NaN for a region covering the whole "
        "image, where the ROC curve is undefined.",
    reference="Fawcett, An Introduction to ROC Analysis, Pattern Recognition Letters 2006",
)


# --------------------------------------------------------------------------------------------- energy
def _energy(ctx, region: str = "box"):
    keys, a, s, bad = _inputs(ctx, False, False, region)
    a = a.clamp(min=0)
    return emit(keys, {"energy": nan_where(_ratio((a * s[None]).sum(-1), a.sum(-1)), bad)})


ENERGY_POINTING_GAME = Metric(
    name="energy-pointing-game",
    compute=_energy,
    measures=[Measure(name="energy", direction="higher", low=0, high=1,
                      doc="the map's positive mass inside the region over its positive mass (NaN for a map "
                          "with none)")],
    params=[region_param("box")],
    needs=NEEDS,
    cost=FREE,
    doc="Energy-based pointing game: the share of the map's positive energy that falls in the explained class's "
        "bounding box (region=mask: in its mask). Not in Quantus.",
    reference="Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks, "
              "CVPR Workshops 2020",
)

METRICS: tuple = (POINTING_GAME, ATTRIBUTION_LOCALISATION, TOP_K_INTERSECTION, RELEVANCE_MASS_ACCURACY,
                  RELEVANCE_RANK_ACCURACY, AUC, ENERGY_POINTING_GAME)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
