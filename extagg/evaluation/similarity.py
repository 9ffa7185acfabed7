"""Similarity of saliency maps, in torch on the maps' device: Spearman, SSIM, HOG similarity, normalisations.

All functions take batches: the trailing dimensions hold one map (or one feature vector), the leading ones
are a batch, and the result has the leading shape. Computation is in float64 (float32 where the device has
no float64, e.g. MPS).

* :func:`spearman`: rank correlation with **average ranks for ties** (as ``scipy.stats.spearmanr``); NaN when
  either side is constant or contains NaN.
* :func:`ssim`: Wang et al.'s SSIM with a Gaussian window, exactly ``skimage.metrics.structural_similarity(a, b,
  gaussian_weights=True, data_range=...)`` (sigma 1.5, truncate 3.5, 11x11 window, sample covariance, mean over
  the valid interior).
* :func:`hog`: ``skimage.feature.hog(image, orientations, pixels_per_cell, cells_per_block, 'L2-Hys')``.
* :func:`hog_similarity`: Spearman between the HOG vectors (Adebayo et al. 2018).
* :func:`minmax`: per-map ``(m - min) / (max - min)``; a constant map becomes all zeros (not NaN).
"""
from __future__ import annotations

import math
from typing import Optional

import attrs
import torch

from ..errors import InputError
from ..maps import normalise


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _pair(a: torch.Tensor, b: torch.Tensor, ndim: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise InputError(f"{what} needs two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise InputError(f"{what} needs tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < ndim:
        raise InputError(f"{what} needs at least {ndim} dimensions, got shape {tuple(a.shape)}")
    return _float(a), _float(b.to(a.device))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along the last dimension, ties given their average rank (``scipy.stats.rankdata``).

    A tie group spanning sorted positions f..l gets (f + l) / 2 (exact: integers and halves); NaNs are each
    their own group, ranked after every number in their order of appearance."""
    p = x.shape[-1]
    flat = x.reshape(-1, p)
    # the order among equal values cannot change a rank (they share one), only among NaNs: stable where any
    values, order = flat.sort(dim=1, stable=bool(flat.is_floating_point() and torch.isnan(flat).any()))
    starts = torch.ones_like(values, dtype=torch.bool)
    torch.ne(values[:, 1:], values[:, :-1], out=starts[:, 1:])
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    index = torch.int32 if p < 2 ** 31 - 1 else torch.int64
    pos = torch.arange(1, p + 1, device=x.device, dtype=index).expand_as(values)
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, p + 1).flip(1).cummin(1).values.flip(1)
    dtype = values.dtype if values.is_floating_point() else torch.float64
    avg = (first.to(torch.float64) + last) / 2
    return torch.empty(flat.shape, device=x.device, dtype=dtype).scatter_(1, order, avg.to(dtype)).reshape(x.shape)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension; NaN where either side has zero variance. Rows are taken in
    chunks of about :data:`RANK_CHUNK` values (bounded transient memory; each row's sums are the same)."""
    a, b = torch.broadcast_tensors(a, b)
    p = a.shape[-1]
    fa, fb = a.reshape(-1, p), b.reshape(-1, p)
    out = torch.empty(fa.shape[0], device=a.device, dtype=torch.promote_types(a.dtype, b.dtype))
    step = max(1, RANK_CHUNK // max(p, 1))
    for s in range(0, fa.shape[0], step):
        ac = fa[s:s + step] - fa[s:s + step].mean(-1, keepdim=True)
        bc = fb[s:s + step] - fb[s:s + step].mean(-1, keepdim=True)
        num = (ac * bc).sum(-1)
        den = torch.sqrt((ac * ac).sum(-1) * (bc * bc).sum(-1))
        out[s:s + step] = torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny),
                                      torch.full_like(num, math.nan))
    return out.clamp(-1, 1).reshape(a.shape[:-1])


def _flat(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows that are constant up to rounding: range <= 16 eps max|x| (eps of the caller's dtype)."""
    top = x.abs().nan_to_num(0).amax(-1)
    return (x.nan_to_num(0).amax(-1) - x.nan_to_num(0).amin(-1)) <= 16 * eps * top


def spearman(a: torch.Tensor, b: torch.Tensor, *, ndim: int = 2) -> torch.Tensor:
    """Spearman rank correlation over the last ``ndim`` dims (2: maps (..., H, W); 1: vectors (..., F)).

    Average ranks for ties; NaN where either side holds a NaN or is constant. "Constant" includes maps that vary
    only by rounding noise (range <= 16 machine epsilons of the input dtype times max |value|, e.g. a gradient
    that is mathematically constant over space), whose ranks would be meaningless. Shape ``a.shape[:-ndim]``.
    """
    eps = [_eps(t) for t in (a, b)]
    a, b = _pair(a, b, ndim, "spearman")
    return _rank_pair(_rank_side(a, eps[0], ndim), _rank_side(b, eps[1], ndim))


def _eps(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


RANK_CHUNK = 1 << 20
"""Values ranked per step of :func:`_rank_side` (whole rows): the transient memory of a sort stays bounded however
many maps are ranked at once."""


def _rank_side(x: torch.Tensor, eps: float, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(average ranks in float, NaN-or-constant flags) of one side of :func:`spearman`, rows in chunks of about
    :data:`RANK_CHUNK` values, each converted to float only while it is ranked (the same numbers as at once)."""
    x = x.reshape(*x.shape[: x.ndim - ndim], -1)
    p = x.shape[-1]
    flat = x.reshape(-1, p)
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    ranks = torch.empty(flat.shape, device=x.device, dtype=dtype)
    flags = torch.empty(flat.shape[0], device=x.device, dtype=torch.bool)
    step = max(1, RANK_CHUNK // max(p, 1))
    for s in range(0, flat.shape[0], step):
        part = _float(flat[s:s + step])
        ranks[s:s + step] = average_ranks(part)
        flags[s:s + step] = torch.isnan(part).any(-1) | _flat(part, eps)
    return ranks.reshape(x.shape), flags.reshape(x.shape[:-1])


def _rank_pair(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    r = pearson(a[0], b[0])
    return torch.where(a[1] | b[1], torch.full_like(r, math.nan), r)


def ranked(x: torch.Tensor, *, ndim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """One side of :func:`spearman`, computed once to pair with many: ``(average ranks (..., P) in float64,
    NaN-or-constant flags (...))`` over the last ``ndim`` dims. ``rank_correlation(ranked(a), ranked(b)) ==
    spearman(a, b)`` bit for bit. Ranks of a rearrangement of ``x`` (``x.flatten(-ndim)[..., order]``) are the
    ranks rearranged the same way, with the same flags (:func:`rearranged_side`)."""
    if not isinstance(x, torch.Tensor) or x.ndim < ndim:
        raise InputError(f"ranked needs a tensor of at least {ndim} dimensions, got "
                         f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    return _rank_side(x, _eps(x), ndim)


def rank_correlation(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`spearman` of two :func:`ranked` sides (NaN where either side is flagged)."""
    return _rank_pair(a, b)


def rearranged_side(side: tuple[torch.Tensor, torch.Tensor], order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The :func:`ranked` side of ``x`` rearranged by flat indices ``order`` (..., P): ranks gathered, flags kept
    (a rearrangement keeps the values, so their ties, NaNs and range)."""
    ranks, flags = side
    return ranks.gather(-1, order.to(ranks.device)), flags


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation over the last two dims to [0, 1]; constant maps become zeros."""
    return normalise(_float(m))


def gaussian_kernel1d(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    """``exp(-x^2 / (2 sigma^2))`` for x in [-radius, radius], normalised to sum 1 (scipy.ndimage's kernel)."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03, sample_covariance: bool = True) -> torch.Tensor:
    """Mean SSIM of maps (..., H, W) with a Gaussian window, as scikit-image's ``gaussian_weights=True``.

    The window radius is ``int(truncate * sigma + 0.5)`` (5 by default: 11x11); local statistics use the
    window's sample covariance (factor ``P/(P-1)``, P = window pixels) unless ``sample_covariance=False``;
    the mean is over positions whose window lies inside the map. Maps must be at least 11x11 (by default).
    """
    a, b = _pair(a, b, 2, "ssim")
    if data_range <= 0:
        raise InputError(f"ssim: data_range must be > 0, got {data_range!r}")
    return _ssim_pair(_ssim_side(*_ssim_args(a, sigma, truncate)), _ssim_side(*_ssim_args(b, sigma, truncate)),
                      data_range, k1, k2, sample_covariance)


def _ssim_side(a: torch.Tensor, r: int, sigma: float) -> tuple:
    """(maps, local means, local means of squares, filter) of one side of :func:`ssim` (checked, in float)."""
    h, w = a.shape[-2:]
    win = 2 * r + 1
    g = gaussian_kernel1d(sigma, r, a.device, a.dtype).tolist()

    def filt(t):
        """The separable window over valid positions, as weighted sums of shifted views (a one-channel float64
        ``conv2d`` takes a slow generic path on the CPU; the same sums up to the last bit)."""
        for dim in (-1, -2):
            n = t.shape[dim] - win + 1
            acc = t.narrow(dim, 0, n) * g[0]
            for k in range(1, win):
                acc.add_(t.narrow(dim, k, n), alpha=g[k])
            t = acc
        return t

    x = a.reshape(-1, 1, h, w)
    return x, filt(x), filt(x * x), filt, a.shape[:-2]


def _ssim_pair(a: tuple, b: tuple, data_range: float, k1: float, k2: float, sample_covariance: bool):
    (x, ux, uxx, filt, lead), (y, uy, uyy, _, _) = a, b
    win = x.shape[-1] - ux.shape[-1] + 1
    uxy = filt(x * y)
    norm = win * win / (win * win - 1) if sample_covariance else 1.0
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean((-2, -1)).reshape(lead)


def hog(image: torch.Tensor, *, cell: int = 16, block: int = 3, orientations: int = 9) -> torch.Tensor:
    """Histogram of oriented gradients of maps (..., H, W) -> (..., F), as ``skimage.feature.hog``.

    Central-difference gradients (zero on the border rows/columns), unsigned orientation in [0, 180) split in
    ``orientations`` equal bins, magnitudes averaged over ``cell`` x ``cell`` cells (whole cells from the top
    left), ``block`` x ``block`` blocks with stride one cell, L2-Hys normalisation (clip 0.2, eps 1e-5).
    """
    if cell < 1 or block < 1 or orientations < 1:
        raise InputError(f"hog: cell, block and orientations must be >= 1, got {cell}, {block}, {orientations}")
    x = _float(image)
    h, w = x.shape[-2:]
    ncr, ncc = h // cell, w // cell
    if ncr < block or ncc < block:
        raise InputError(f"hog with {cell}-pixel cells and {block}x{block}-cell blocks needs maps of at least "
                         f"{cell * block}x{cell * block} pixels, got {h}x{w}; use a smaller hog cell size")
    lead = x.shape[:-2]
    x = x.reshape(-1, h, w)
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    g_row, g_col = g_row[:, : ncr * cell, : ncc * cell], g_col[:, : ncr * cell, : ncc * cell]  # whole cells
    mag = torch.hypot(g_col, g_row)
    ori = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    width = 180.0 / orientations
    edges = torch.tensor([width * (i + 1) for i in range(orientations)], device=x.device, dtype=x.dtype)
    # bin i holds width*i <= ori < width*(i+1) (skimage's comparisons); ori == 180 falls in no bin, as there.
    # Each pixel's magnitude goes to its (cell, bin) by index, so memory stays a few copies of the maps.
    bins = torch.bucketize(ori, edges, right=True)  # edges[i-1] <= ori < edges[i] -> i; >= 180 or NaN -> O
    rows = torch.arange(ncr * cell, device=x.device) // cell
    cols = torch.arange(ncc * cell, device=x.device) // cell
    where = ((rows[:, None] * ncc + cols[None, :]) * (orientations + 1))[None] + bins
    hist = torch.zeros(x.shape[0], ncr * ncc * (orientations + 1), device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, where.flatten(1), mag.flatten(1))
    hist = hist.view(-1, ncr, ncc, orientations + 1)[..., :orientations] / (cell * cell)
    # a non-finite magnitude made every bin of its cell NaN in the one-hot sum (inf * 0): keep that
    bad = torch.zeros(x.shape[0], ncr * ncc, device=x.device, dtype=x.dtype)
    bad.scatter_add_(1, (where // (orientations + 1)).flatten(1), (~torch.isfinite(mag)).flatten(1).to(x.dtype))
    hist = torch.where(bad.view(-1, ncr, ncc, 1) > 0, torch.full_like(hist, math.nan), hist)
    blocks = hist.unfold(1, block, 1).unfold(2, block, 1)          # (B, nbr, nbc, O, block, block)
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(hist.shape[0], ncr - block + 1, ncc - block + 1, -1)
    eps = 1e-5
    out = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    out = out.clamp(max=0.2)
    out = out / torch.sqrt((out ** 2).sum(-1, keepdim=True) + eps ** 2)
    return out.reshape(*lead, -1)


def hog_similarity(a: torch.Tensor, b: torch.Tensor, *, cell: int = 16, block: int = 3,
                   orientations: int = 9) -> torch.Tensor:
    """Spearman correlation between the HOG vectors of two (..., H, W) maps (Adebayo et al. 2018).

    Apply to min-max normalised maps (:func:`minmax`) as Adebayo et al. do; NaN if either HOG vector is constant
    (e.g. a constant map).
    """
    a, b = _pair(a, b, 2, "hog_similarity")
    kw = dict(cell=cell, block=block, orientations=orientations)
    return spearman(hog(a, **kw), hog(b, **kw), ndim=1)


def map_similarities(a: torch.Tensor, b: torch.Tensor, *, hog_cell: int = 16) -> dict[str, torch.Tensor]:
    """The four randomisation-test similarities of maps (..., H, W), as Adebayo et al. define them for 2-D masks.

    ``spearman``: signed maps; ``spearman_abs``: ``|a|`` vs ``|b|`` (their ``m / max|m|`` and ``|m| / max|m|``
    normalisations are positive rescalings, which Spearman ignores); ``ssim`` and ``hog``: on min-max
    normalised maps, SSIM with ``data_range=1``. To compare the same ``a`` with many ``b``, prepare ``a`` once
    with :func:`similarity_reference` and call :func:`similarities_to` (the same numbers, bit for bit).
    """
    _pair(a, b, 2, "map_similarities")
    return similarities_to(similarity_reference(a, hog_cell=hog_cell), b)


EXACT_RANKS = 1 << 22
"""Average ranks (multiples of 1/2 up to P) are exact in float32 for P <= 2**22 pixels: a reference keeps them so."""


@attrs.frozen
class SimilarityReference:
    """The work of :func:`map_similarities` on its first maps alone, kept small for many comparisons (the
    randomisation test holds one per map for all its steps): the ranks (exact in float32 up to
    :data:`EXACT_RANKS` pixels, float64 above), the HOG ranks, and the maps themselves, whose SSIM statistics are
    recomputed per comparison (a Gaussian filter, cheap next to a sort) instead of kept as three float64 copies."""

    shape: tuple
    device: torch.device
    eps: float
    hog_cell: int
    signed: tuple
    absolute: tuple
    maps: torch.Tensor
    hog: tuple


def _compact(side: tuple) -> tuple:
    ranks, flags = side
    return (ranks.to(torch.float32) if ranks.dtype == torch.float64 and ranks.shape[-1] <= EXACT_RANKS else ranks,
            flags)


def _widen(side: tuple) -> tuple:
    ranks, flags = side
    return _float(ranks), flags


def similarity_reference(a: torch.Tensor, *, hog_cell: int = 16) -> SimilarityReference:
    """Prepare maps (..., H, W) to be compared with many others by :func:`similarities_to`."""
    eps = _eps(a)
    _pair(a, a, 2, "map_similarities")
    a01 = minmax(a)
    _ssim_args(a01)  # the size check, once, up front
    return SimilarityReference(tuple(a.shape), a.device, eps, hog_cell, _compact(_rank_side(a, eps, 2)),
                               _compact(_rank_side(a.abs(), eps, 2)), a.detach(), _hog_side(a01, hog_cell))


def similarities_to(reference: SimilarityReference, b: torch.Tensor, *, order: Optional[torch.Tensor] = None,
                    rows: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """:func:`map_similarities` of the reference's maps and ``b`` (same shape). Where ``b`` is made of the
    reference's own maps, say how, and their ranks (and statistics) are reused instead of computed again (the same
    numbers, bit for bit):

    * ``order`` (..., H * W): ``b`` rearranges each map's pixels (``b.flatten(-2) ==
      maps.flatten(-2).gather(-1, order)``, as a smooth-noise surrogate does): the Spearman measures rearrange the
      reference's ranks;
    * ``rows`` (...): ``b`` is other maps of the reference (``b.flatten(0, -3) == maps.flatten(0, -3)[rows]``,
      flat indices over the leading dims, as the cross-image floor pairs each map with another image's): Spearman,
      HOG and the SSIM statistics of ``b`` are the reference's rows.
    """
    if not isinstance(b, torch.Tensor) or tuple(b.shape) != reference.shape:
        raise InputError(f"map_similarities needs tensors of the same shape, got {reference.shape} and "
                         f"{tuple(getattr(b, 'shape', ())) or type(b).__name__}")
    mine = _ssim_side(*_ssim_args(minmax(reference.maps)))
    if rows is not None:
        rows = rows.to(reference.device).reshape(-1)
        signed, absolute, hog_b = (_picked(_widen(reference.signed), rows), _picked(_widen(reference.absolute), rows),
                                   _picked(reference.hog, rows))
        theirs = tuple(t[rows] for t in mine[:3]) + mine[3:]
    else:
        eps = _eps(b)
        b = b.to(reference.device)
        b01 = minmax(b)
        theirs, hog_b = _ssim_side(*_ssim_args(b01)), _hog_side(b01, reference.hog_cell)
        if order is None:
            signed, absolute = _rank_side(b, eps, 2), _rank_side(b.abs(), eps, 2)
        else:
            order = order.reshape(*reference.shape[:-2], -1)
            signed, absolute = (_widen(rearranged_side(side, order)) for side in (reference.signed,
                                                                                  reference.absolute))
    return {
        "spearman": _rank_pair(_widen(reference.signed), signed),
        "spearman_abs": _rank_pair(_widen(reference.absolute), absolute),
        "ssim": _ssim_pair(mine, theirs, 1.0, 0.01, 0.03, True),
        "hog": _rank_pair(reference.hog, hog_b),
    }


def _picked(side: tuple, rows: torch.Tensor) -> tuple:
    """A ranked side's ``rows`` (flat over its leading dims), in its shape."""
    ranks, flags = side
    return ranks.reshape(-1, ranks.shape[-1])[rows].reshape(ranks.shape), flags.reshape(-1)[rows].reshape(flags.shape)


def _hog_side(m01: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = hog(m01, cell=cell)
    return _rank_side(h, _eps(h), 1)


def _ssim_args(m: torch.Tensor, sigma: float = 1.5, truncate: float = 3.5):
    """(maps, radius, sigma) for :func:`_ssim_side` with :func:`ssim`'s defaults and checks."""
    x, _ = _pair(m, m, 2, "ssim")
    r = int(truncate * sigma + 0.5)
    if min(x.shape[-2:]) < 2 * r + 1:
        raise InputError(f"ssim needs maps of at least {2 * r + 1}x{2 * r + 1} pixels (Gaussian window, sigma "
                         f"{sigma}), got {x.shape[-2]}x{x.shape[-1]}; compare maps resized to the input resolution")
    return x, r, sigma
