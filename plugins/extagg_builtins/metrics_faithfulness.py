"""Quantus's faithfulness metrics as extagg metrics (registered through ``register_metrics`` like a third party),
with Grad-CAM++'s average drop and increase in confidence.

Every metric perturbs the batch's images and reads the model on them through the batch's shared
:class:`~extagg.evaluation.perturbation.Forwards` (``ctx.forwards()``): all perturbed images of all maps (every
method x layer) are forwarded in batches, and an image met twice (the unperturbed image, a baseline, the first
and last points of curves, the points of maps that rank alike, random subsets that do not depend on the map,
the same image built by two metrics) is forwarded once. ``cost`` declares an upper bound of the distinct forward
images per batch, counted for a 3 x 224 x 224 input (the preview knows no image size); the sharing only lowers it.

Definitions follow Quantus 0.6.0 (defaults included): a one-channel map stands for every channel of the image,
features are the ``C * H * W`` entries in channel-major order, ``features_in_step`` counts them; ties in a
ranking go to the lower index (Quantus's NumPy sort leaves their order unspecified; with distinct map values
and ``features_in_step`` a multiple of C both agree exactly). Quantus's ``normalise`` (division by the maximum)
changes no ranking and no correlation and is left out. Random draws are seeded per (seed, image id, metric).
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import (Cost, Forwards, InputError, Measure, Metric, Param, feature_ranks, group_ranks, hookimpl,
                           linear_imputation, pearson, replaced, replaced_at, seed_of, spearman_ties, unit_trapezoid,
                           values_of)

PREVIEW_FEATURES, PREVIEW_SIDE = 3 * 224 * 224, 224
"""The input the cost preview counts for (C * H * W features, H = W pixels)."""
BASELINES = ("black", "white")


def _positive(v):
    return None if v >= 1 else "must be >= 1"


def _baseline(x: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 1) per-image baseline value: black = the image's minimum, white = its maximum (over C, H, W)."""
    flat = x.reshape(x.shape[0], -1)
    return (flat.amin(1) if name == "black" else flat.amax(1))[:, None]


def _stack(ctx, abs_: bool = False) -> torch.Tensor:
    """(P, N, H, W) float64 maps of ``ctx.keys`` (absolute values if ``abs_``)."""
    base = ctx.maps_for()
    if not ctx.keys:
        return torch.zeros(0, ctx.n, *ctx.x.shape[-2:], dtype=torch.float64)
    m = torch.stack([base[k] for k in ctx.keys]).detach().double().cpu()
    return m.abs() if abs_ else m


def _forwards(ctx) -> Forwards:
    return ctx.forwards(ctx.settings.get("curve_batch", 64))


def _emit(ctx, values: torch.Tensor, measure: str, subset: str = "all") -> list:
    """Values from a (P, N) tensor laid out key-major."""
    return values_of(ctx.keys, {measure: values}, subset)


def _seeds(ctx, name: str) -> list[int]:
    return [seed_of(ctx.seed, image, name) for image in ctx.image_ids]


# --------------------------------------------------------------------------------------------- pixel flipping
def flip_curves(fw: Forwards, maps: torch.Tensor, features_in_step: int = 1, perturb_baseline: str = "black"):
    """(P, N, ceil(F / features_in_step)) probability of the target after each step of replacing the most
    salient features (cumulatively) by the baseline."""
    n, c = fw.x.shape[:2]
    f = fw.x[0].numel()
    counts = [min((k + 1) * features_in_step, f) for k in range(math.ceil(f / features_in_step))]
    ids = replaced(fw, feature_ranks(maps, c), counts, _baseline(fw.x, perturb_baseline))
    return fw.values(ids, "prob")


def _pixel_flipping(ctx, features_in_step: int = 1, perturb_baseline: str = "black", abs: bool = False):
    curves = flip_curves(_forwards(ctx), _stack(ctx, abs), features_in_step, perturb_baseline)
    return _emit(ctx, unit_trapezoid(curves), "auc")


# --------------------------------------------------------------------------------------------- patches
def patch_labels(h: int, w: int, patch_size: int) -> torch.Tensor:
    """(H, W) label of each pixel's patch on Quantus's grid: non-overlapping ``patch_size`` squares, row-major, the
    image centred in the padded grid (padding split floor / ceil)."""
    top, left = (-h % patch_size) // 2, (-w % patch_size) // 2
    rows = (torch.arange(h) + top) // patch_size
    cols = (torch.arange(w) + left) // patch_size
    return rows[:, None] * math.ceil(w / patch_size) + cols[None, :]


def random_order(seed: int, groups: int) -> torch.Tensor:
    """A seeded permutation of ``groups`` patches (region perturbation's ``order=random``), first removed first."""
    return torch.randperm(groups, generator=torch.Generator().manual_seed(seed))


def patch_curves(fw: Forwards, maps: torch.Tensor, patch_size: int = 8, order: str = "morf",
                 regions: int = 0, perturb_baseline: str = "black", seeds=None):
    """(P, N, L) probability of the target after removing 1..L patches (cumulatively) in ``order`` of their
    attribution sums (morf: largest first, lerf: smallest first, random: a seeded permutation per image);
    L = all patches, or the first ``regions``."""
    n, c, h, w = fw.x.shape
    labels = patch_labels(h, w, patch_size)
    groups = int(labels.max()) + 1
    p = maps.shape[0]
    sums = torch.zeros(p, n, groups, dtype=torch.float64).scatter_add_(
        -1, labels.reshape(1, 1, -1).expand(p, n, -1), maps.reshape(p, n, -1))
    if order == "random":
        perms = torch.stack([random_order(s, groups) for s in seeds])
        position = torch.empty_like(perms).scatter_(1, perms, torch.arange(groups).expand_as(perms))
        sums = -position.double()[None].expand(p, n, groups)
    ranks = group_ranks(labels.expand(n, h, w), sums, c, descending=order != "lerf")
    count = min(regions, groups) if regions else groups
    ids = replaced(fw, ranks, range(1, count + 1), _baseline(fw.x, perturb_baseline))
    return fw.values(ids, "prob")


def _region(ctx, patch_size: int = 8, order: str = "morf", regions_evaluation: int = 100,
            perturb_baseline: str = "black", abs: bool = False):
    fw = _forwards(ctx)
    y = fw.values(fw.source(range(ctx.n)), "prob")
    curves = y[None, :, None] - patch_curves(fw, _stack(ctx, abs), patch_size, order, regions_evaluation,
                                             perturb_baseline, _seeds(ctx, "region-perturbation"))
    aopc = curves.sum(-1) / (curves.shape[-1] + 1)
    return _emit(ctx, unit_trapezoid(curves), "auc") + _emit(ctx, aopc, "aopc")


def _selectivity(ctx, patch_size: int = 8, perturb_baseline: str = "black", abs: bool = False):
    curves = patch_curves(_forwards(ctx), _stack(ctx, abs), patch_size, "morf", 0, perturb_baseline)
    return _emit(ctx, unit_trapezoid(curves), "auc")


# --------------------------------------------------------------------------------------------- ROAD
def road_noise(seed: int, percentage: int, channels: int, k: int) -> torch.Tensor:
    """(C, k) standard normal draws of one image at one percentage (column j: the j-th most salient pixel)."""
    g = torch.Generator().manual_seed(seed_of(seed, "road", percentage))
    return torch.randn((channels, k), generator=g, dtype=torch.float64)


def road_hits(fw: Forwards, maps: torch.Tensor, seeds, percentages=tuple(range(1, 100, 2)), noise: float = 0.01):
    """(P, N, len(percentages)) 1.0 where the model still predicts the target after the most salient
    ``int(H * W * p / 100)`` pixels are replaced by their noisy linear imputation (all channels; noise
    ``noise * road_noise``)."""
    n, c, h, w = fw.x.shape
    p = maps.shape[0]
    ranks = feature_ranks(maps, 1).view(p, n, h, w)
    ids = torch.empty(p, n, len(percentages), dtype=torch.long)
    for t, pct in enumerate(percentages):
        k = int(h * w * pct / 100)
        draws = torch.stack([road_noise(s, pct, c, k) for s in seeds]).to(fw.device)  # (N, C, k)
        for j in range(p):
            r = ranks[j].to(fw.device)
            unknown = r < k
            filled = linear_imputation(fw.x, unknown)
            at = r.clamp(max=k - 1).reshape(n, 1, -1).expand(n, c, -1) if k else None
            if k:
                extra = draws.gather(2, at).view(n, c, h, w)
                filled = torch.where(unknown[:, None], filled + noise * extra, filled)
            ids[j, :, t] = torch.tensor(fw.add(torch.arange(n), filled.to(fw.x.dtype)))
    return fw.values(ids, "hit")


def _road(ctx, percentage_start: int = 1, percentage_step: int = 2, noise: float = 0.01, abs: bool = False):
    pcts = range(percentage_start, 100, percentage_step)
    hits = road_hits(_forwards(ctx), _stack(ctx, abs), _seeds(ctx, "road"), pcts, noise)
    return _emit(ctx, hits.mean(-1), "accuracy")


# --------------------------------------------------------------------------------------------- IROF
def superpixels(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) SLIC superpixel labels 0..L-1 of each image (scikit-image's ``slic`` at its defaults, as
    Quantus segments), computed on the model inputs."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise InputError("irof needs scikit-image for its superpixels: pip install scikit-image "
                         "(or extagg[default-model])") from None
    return torch.stack([torch.as_tensor(slic(img.permute(1, 2, 0).double().cpu().numpy(), start_label=0))
                        for img in x]).long()


def irof_curves(fw: Forwards, maps: torch.Tensor, segments: torch.Tensor, base=None) -> list:
    """Per image i: (P, L_i) probability of the target after removing its 1..L_i superpixels (cumulatively, most
    salient mean attribution first) by ``base`` (N, 1) (default: each image's mean), over the unperturbed
    probability."""
    n, c = fw.x.shape[:2]
    base = fw.x.reshape(n, -1).mean(1, keepdim=True) if base is None else base.to(fw.x)
    y = fw.values(fw.source(range(n)), "prob")
    out = []
    for i in range(n):
        seg = segments[i].reshape(-1)
        groups = int(seg.max()) + 1
        size = torch.zeros(groups, dtype=torch.float64).scatter_add_(0, seg, torch.ones(seg.shape, dtype=torch.float64))
        p = maps.shape[0]
        mean = torch.zeros(p, groups, dtype=torch.float64).scatter_add_(
            1, seg.expand(p, -1), maps[:, i].reshape(p, -1)) / size
        ranks = group_ranks(segments[i][None], mean[:, None], c)
        ids = replaced(fw, ranks, range(1, groups + 1), base[i:i + 1], index=[i])
        out.append(fw.values(ids, "prob")[:, 0] / (y[i] if y[i] > 0 else math.nan))  # NaN: no probability
    return out


def _irof(ctx, abs: bool = False):
    curves = irof_curves(_forwards(ctx), _stack(ctx, abs), superpixels(ctx.x))
    aoc = torch.stack([cv.shape[-1] - unit_trapezoid(cv) for cv in curves], 1)  # (P, N)
    return _emit(ctx, aoc, "aoc")


# --------------------------------------------------------------------------------------------- correlations
def random_subsets(seed: int, features: int, nr_runs: int, subset_size: int) -> torch.Tensor:
    """(nr_runs, subset_size) feature subsets drawn without replacement for one image."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(features, generator=g)[:subset_size] for _ in range(nr_runs)])


def faithfulness_correlation(fw: Forwards, maps: torch.Tensor, seeds, nr_runs: int = 100, subset_size: int = 224,
                             perturb_baseline: str = "black") -> torch.Tensor:
    """(P, N) Pearson correlation, over ``nr_runs`` random feature subsets, between the subset's attribution sum
    and the drop of the target's class score (logit) when the subset is replaced by the baseline. The perturbed
    images do not depend on the map: every map of an image shares them."""
    n, c = fw.x.shape[:2]
    f = fw.x[0].numel()
    if subset_size > f:
        raise InputError(f"subset_size {subset_size} exceeds the {f} features of an image")
    subsets = torch.stack([random_subsets(s, f, nr_runs, subset_size) for s in seeds])  # (N, R, S)
    base = _baseline(fw.x, perturb_baseline).cpu()
    index = torch.arange(n).repeat_interleave(nr_runs)
    ids = replaced_at(fw, index, subsets.reshape(n * nr_runs, -1), base[index])
    y = fw.values(fw.source(range(n)), "logit")
    delta = y[:, None] - fw.values(ids, "logit").view(n, nr_runs)
    p = maps.shape[0]
    flat = maps.reshape(p, n, 1, -1).expand(p, n, c, -1).reshape(p, n, -1)
    sums = flat.gather(2, subsets.reshape(1, n, -1).expand(p, n, -1)).view(p, n, nr_runs, -1).sum(-1)
    return pearson(sums.double(), delta[None].expand_as(sums).double())


def uniform_draws(seed: int, steps: int, nr_samples: int) -> torch.Tensor:
    """(steps, nr_samples) uniform [0, 1) baseline values of one image."""
    return torch.rand((steps, nr_samples), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def monotonicity_correlation(fw: Forwards, maps: torch.Tensor, seeds, nr_samples: int = 100,
                             features_in_step: int = 1, eps: float = 1e-5) -> torch.Tensor:
    """(P, N) Spearman correlation between the attribution sum of each step (features in increasing attribution
    order, ``features_in_step`` at a time) and the mean squared change of the target's probability over
    ``nr_samples`` copies with only that step's features set to a uniform random value (over the squared
    probability where it is >= ``eps``)."""
    n, c = fw.x.shape[:2]
    f = fw.x[0].numel()
    p = maps.shape[0]
    steps = math.ceil(f / features_in_step)
    draws = torch.stack([uniform_draws(s, steps, nr_samples) for s in seeds])  # (N, K, S)
    order = feature_ranks(maps, c, descending=False).argsort(-1)  # (P, N, F) features, ascending
    flat = maps.reshape(p, n, 1, -1).expand(p, n, c, -1).reshape(p, n, -1)
    y = fw.values(fw.source(range(n)), "prob")
    inv = torch.where(y.abs() >= eps, 1 / y.abs(), torch.ones_like(y)) ** 2
    atts = torch.empty(p, n, steps, dtype=torch.float64)
    index = torch.arange(n).repeat(p).repeat_interleave(nr_samples)  # (P * N * S,) p-major, then image, sample
    ids = torch.empty(p, n, steps, nr_samples, dtype=torch.long)
    for k in range(steps):
        feats = order[..., k * features_in_step:(k + 1) * features_in_step]  # (P, N, s)
        atts[..., k] = flat.gather(2, feats).sum(-1)
        rows = feats[:, :, None].expand(p, n, nr_samples, -1).reshape(p * n * nr_samples, -1)
        vals = draws[:, k][None].expand(p, n, nr_samples).reshape(-1, 1)
        ids[:, :, k] = torch.tensor(replaced_at(fw, index, rows, vals)).view(p, n, nr_samples)
    probs = fw.values(ids, "prob")  # (P, N, K, S)
    var = ((probs - y[None, :, None, None]) ** 2).mean(-1) * inv[None, :, None]
    return spearman_ties(atts, var)


def _faith_corr(ctx, nr_runs: int = 100, subset_size: int = 224, perturb_baseline: str = "black", abs: bool = False):
    r = faithfulness_correlation(_forwards(ctx), _stack(ctx, abs), _seeds(ctx, "faithfulness-correlation"),
                                 nr_runs, subset_size, perturb_baseline)
    return _emit(ctx, r, "pearson")


def _mono_corr(ctx, nr_samples: int = 100, features_in_step: int = 1, eps: float = 1e-5, abs: bool = True):
    r = monotonicity_correlation(_forwards(ctx), _stack(ctx, abs), _seeds(ctx, "monotonicity-correlation"),
                                 nr_samples, features_in_step, eps)
    return _emit(ctx, r, "spearman")


# --------------------------------------------------------------------------------------------- Grad-CAM++
def explanation_confidence(fw: Forwards, maps: torch.Tensor):
    """((N,) probability of the target on the image, (P, N) on the image times its min-max normalised map)."""
    n = fw.x.shape[0]
    p = maps.shape[0]
    lo = maps.flatten(2).amin(-1)[..., None, None]
    hi = maps.flatten(2).amax(-1)[..., None, None]
    m = ((maps - lo) / (hi - lo)).nan_to_num(0.0).to(fw.x.dtype)  # a constant map masks everything
    masked = fw.x[None] * m[:, :, None].to(fw.device)
    ids = fw.add(torch.arange(n).repeat(p), masked.flatten(0, 1))
    return fw.values(fw.source(range(n)), "prob"), fw.values(ids, "prob").view(p, n)


def _average_drop(ctx, abs: bool = False):
    y, o = explanation_confidence(_forwards(ctx), _stack(ctx, abs))
    return _emit(ctx, 100 * (y - o).clamp(min=0) / y, "drop")


def _increase(ctx, abs: bool = False):
    y, o = explanation_confidence(_forwards(ctx), _stack(ctx, abs))
    return _emit(ctx, 100 * (o > y).double(), "increase")


# --------------------------------------------------------------------------------------------- records
def _abs(default: bool) -> Param:
    return Param("abs", bool, default, "rank the maps' absolute values (Quantus's default for this metric)")


FIS = Param("features_in_step", int, 1, "features (of C * H * W) replaced per step; a multiple of C replaces "
            "whole pixels", check=_positive)
BASELINE = Param("perturb_baseline", str, "black", "replaced features become the image's minimum (black) or "
                 "maximum (white)", choices=BASELINES)
PATCH = Param("patch_size", int, 8, "side of the square patches in pixels", check=_positive)
EXTRA = {"extra_passes"}


def _steps(features_in_step: int) -> int:
    return math.ceil(PREVIEW_FEATURES / features_in_step)


def _patches(patch_size: int) -> int:
    return math.ceil(PREVIEW_SIDE / patch_size) ** 2


PIXEL_FLIPPING = Metric(
    name="pixel-flipping", compute=_pixel_flipping, needs=EXTRA, params=[FIS, BASELINE, _abs(False)],
    measures=[Measure(name="auc", direction="lower", low=0, high=math.inf,
                      doc="unit_trapezoid area (unit spacing, Quantus's get_auc_score) of the curve of the target's "
                          "probability after each step of replacing the most salient features")],
    cost=lambda n, keys, blocks, features_in_step=1, **_: Cost(forward_images=n * len(keys) * _steps(features_in_step)),
    doc="Pixel flipping: replace the most salient features step by step by the baseline; a faithful map makes the "
        "probability fall fast (low area). The curve starts after the first step, as in Quantus.",
    reference="Bach et al., On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance "
              "Propagation, PLOS ONE 2015")

REGION_PERTURBATION = Metric(
    name="region-perturbation", compute=_region, needs=EXTRA,
    params=[PATCH, Param("order", str, "morf", "patch order: morf (most relevant first), lerf (least relevant "
                         "first; lower is then better) or random (seeded per image)", choices=("morf", "lerf", "random")),
            Param("regions_evaluation", int, 100, "patches removed (at most all)", check=_positive),
            BASELINE, _abs(False)],
    measures=[Measure(name="auc", direction="higher", low=-math.inf, high=math.inf,
                      doc="unit_trapezoid area (unit spacing, Quantus's get_auc_score) of the curve of the drop of the "
                          "target's probability after removing 1..L patches"),
              Measure(name="aopc", direction="higher", low=-1, high=1,
                      doc="the paper's AOPC: the mean drop over 0..L removed patches (the curve's sum / (L + 1))")],
    cost=lambda n, keys, blocks, patch_size=8, regions_evaluation=100, **_: Cost(
        forward_images=n * (len(keys) * min(regions_evaluation, _patches(patch_size)) + 1)),
    doc="Region perturbation: remove non-overlapping patches in the order of their attribution sums and record the "
        "probability drop; higher is better for morf. Shares its images with selectivity at equal patch size.",
    reference="Samek et al., Evaluating the Visualization of What a Deep Neural Network Has Learned, IEEE TNNLS 2017 "
              "(arXiv 2015)")

SELECTIVITY = Metric(
    name="selectivity", compute=_selectivity, needs=EXTRA, params=[PATCH, BASELINE, _abs(False)],
    measures=[Measure(name="auc", direction="lower", low=0, high=math.inf,
                      doc="unit_trapezoid area (unit spacing, Quantus's get_auc_score) of the target's probability "
                          "after removing 1..all patches, most relevant first")],
    cost=lambda n, keys, blocks, patch_size=8, **_: Cost(forward_images=n * len(keys) * _patches(patch_size)),
    doc="Selectivity: remove patches by decreasing attribution sum; a faithful map makes the probability fall fast.",
    reference="Montavon et al., Methods for Interpreting and Understanding Deep Neural Networks, Digital Signal "
              "Processing 2018")

ROAD = Metric(
    name="road", compute=_road, needs=EXTRA,
    params=[Param("percentage_start", int, 1, "the first percentage of pixels removed (1..99)",
                  check=lambda v: None if 1 <= v <= 99 else "must be in 1..99"),
            Param("percentage_step", int, 2, "percentages start, start + step, ... below 100 (Quantus's default: "
                  "1, 3, ..., 99)", check=_positive),
            Param("noise", float, 0.01, "standard deviation of the noise added to imputed values",
                  check=lambda v: None if v >= 0 else "must be >= 0"), _abs(False)],
    measures=[Measure(name="accuracy", direction="lower", low=0, high=1,
                      doc="fraction of the percentages at which the model still predicts the explained class "
                          "(the per-image mean of Quantus's accuracy curve)")],
    cost=lambda n, keys, blocks, percentage_start=1, percentage_step=2, **_: Cost(
        forward_images=n * len(keys) * len(range(percentage_start, 100, percentage_step))),
    doc="ROAD (most relevant first): replace the top p% pixels by their noisy linear imputation; a faithful map "
        "makes the prediction change early. Pixels (all channels) are ranked by the map, as in the paper; Quantus "
        "0.6.0 ranks C*H*W features against H*W pixels and fails on inputs with more than one channel.",
    reference="Rong et al., A Consistent and Efficient Evaluation Strategy for Attribution Methods, ICML 2022")

IROF = Metric(
    name="irof", compute=_irof, needs=EXTRA, params=[_abs(False)],
    measures=[Measure(name="aoc", direction="higher", low=-math.inf, high=math.inf,
                      doc="area over the curve: L - unit_trapezoid area of the target's probability (over the "
                          "unperturbed one) after removing 1..L superpixels")],
    cost=lambda n, keys, blocks, **_: Cost(forward_images=n * (len(keys) * 100 + 1)),
    doc="IROF: remove SLIC superpixels by decreasing mean attribution, replaced by the image's mean (the paper); "
        "higher is better. Quantus 0.6.0 uses the mean of the whole batch in its current perturbed state, so its "
        "score of an image depends on the other images of the batch. Needs scikit-image. The cost assumes "
        "at most 100 superpixels (SLIC's default).",
    reference="Rieger & Hansen, IROF: a low resource evaluation metric for explanation methods, ICLR workshop 2020")

FAITHFULNESS_CORRELATION = Metric(
    name="faithfulness-correlation", compute=_faith_corr, needs=EXTRA,
    params=[Param("nr_runs", int, 100, "random subsets per image", check=lambda v: None if v >= 2 else "must be >= 2"),
            Param("subset_size", int, 224, "features per subset", check=_positive), BASELINE, _abs(False)],
    measures=[Measure(name="pearson", direction="higher", low=-1, high=1,
                      doc="Pearson correlation between subset attribution sums and class-score drops")],
    cost=lambda n, keys, blocks, nr_runs=100, **_: Cost(forward_images=n * (nr_runs + 1)),
    doc="Faithfulness correlation: replace random feature subsets by the baseline; the drop of the class score "
        "(logit, as Quantus) should correlate with the subset's attribution. Subsets are seeded per image, so all "
        "maps of an image share their forwards.",
    reference="Bhatt et al., Evaluating and Aggregating Feature-based Model Explanations, IJCAI 2020")

MONOTONICITY_CORRELATION = Metric(
    name="monotonicity-correlation", compute=_mono_corr, needs=EXTRA,
    params=[Param("nr_samples", int, 100, "uniform baseline draws per step", check=_positive), FIS,
            Param("eps", float, 1e-5, "smallest probability divided by", check=lambda v: None if v > 0 else "must be > 0"),
            _abs(True)],
    measures=[Measure(name="spearman", direction="higher", low=-1, high=1,
                      doc="Spearman between each step's attribution sum and the mean squared probability change")],
    cost=lambda n, keys, blocks, nr_samples=100, features_in_step=1, **_: Cost(
        forward_images=n * (len(keys) * _steps(features_in_step) * nr_samples + 1)),
    doc="Monotonicity correlation: features in increasing attribution, each step alone set to uniform noise; the "
        "prediction's variance should rise with the attribution.",
    reference="Nguyen & Martinez, On Quantitative Aspects of Model Interpretability, arXiv 2020")

_GCPP = "Chattopadhay et al., Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep Convolutional " \
        "Networks, WACV 2018"
AVERAGE_DROP = Metric(
    name="average-drop", compute=_average_drop, needs=EXTRA, params=[_abs(False)],
    measures=[Measure(name="drop", direction="lower", low=0, high=100,
                      doc="100 * max(0, Y - O) / Y, Y the target's probability on the image, O on the image times "
                          "its min-max normalised map; the mean over images is the paper's Average Drop %")],
    cost=lambda n, keys, blocks, **_: Cost(forward_images=n * (len(keys) + 1)),
    doc="Average drop: how much confidence the explanation map alone (image x normalised map) loses. Not in "
        "Quantus; shares its forwards with increase-in-confidence.", reference=_GCPP)

INCREASE_IN_CONFIDENCE = Metric(
    name="increase-in-confidence", compute=_increase, needs=EXTRA, params=[_abs(False)],
    measures=[Measure(name="increase", direction="higher", low=0, high=100,
                      doc="100 where O > Y else 0 (as average-drop); the mean over images is the paper's "
                          "Increase in Confidence %")],
    cost=lambda n, keys, blocks, **_: Cost(forward_images=n * (len(keys) + 1)),
    doc="Increase in confidence: does the explanation map alone raise the confidence? Not in Quantus.",
    reference=_GCPP)

METRICS: tuple = (PIXEL_FLIPPING, REGION_PERTURBATION, SELECTIVITY, ROAD, IROF, FAITHFULNESS_CORRELATION,
                  MONOTONICITY_CORRELATION, AVERAGE_DROP, INCREASE_IN_CONFIDENCE)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
