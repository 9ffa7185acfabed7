"""Seeded percentile bootstrap confidence intervals of a sweep cell's mean, over its per-image values."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

REPS = 2000
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], seed: int, reps: int = REPS, level: float = LEVEL,
                 classes: Optional[Sequence] = None) -> tuple[float, float]:
    """The ``level`` percentile bootstrap interval of the mean of the finite ``values`` (NaN, an undefined value,
    is left out as in the reduced mean): ``reps`` resamples of the n finite values with replacement, drawn as
    ``numpy.random.default_rng(seed).integers(0, n, size=(reps, n))``, each resample's mean, and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means (NumPy's default linear interpolation).

    ``classes``: one class per value (the pointing game): each resample's statistic is then the mean over the
    classes it holds of each class's mean, as the reduced value is. ``(nan, nan)`` for fewer than two finite
    values (no interval from one image)."""
    from ..errors import InputError

    if not 0 < level < 1:
        raise InputError(f"the confidence level must be in (0, 1), got {level!r}")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise InputError(f"the number of bootstrap resamples must be an integer >= 1, got {reps!r}")
    vals = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(vals)
    vals = vals[keep]
    n = vals.size
    if n < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    sample = vals[idx]
    if classes is None or all(c is None for c in classes):
        stats = sample.mean(axis=1)
    else:
        cls = np.asarray([-1 if c is None else int(c) for c in classes])[keep][idx]
        means = []
        for c in np.unique(cls):
            hit = cls == c
            count = hit.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                means.append(np.where(count > 0, (sample * hit).sum(axis=1) / np.maximum(count, 1), np.nan))
        stats = np.nanmean(np.stack(means, axis=1), axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
