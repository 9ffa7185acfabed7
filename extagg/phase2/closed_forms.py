"""Sign profiles of filters, and the closed forms of the built-in aggregators with the statistics they read.

A filter with a sign profile ``(a, b)`` is the sign-linear function ``f(x) = a*max(x, 0) + b*max(-x, 0)``
(``relu`` is (1, 0), ``abs`` (1, 1), ``neg`` (0, 1), no filter (1, -1)); pre-filters compose to one profile.
A closed form takes a :class:`~extagg.phase2.contribution.Contribution` and the profile and returns the
(N, T, h, w) map from the contribution's statistics, without materialising it; ``reads_*`` name the
:class:`~extagg.phase2.stats.Stat` members each one reads, so that a sweep can compute them together.
"""
from __future__ import annotations

import torch

from .stats import Stat

Profile = tuple[int, int]
IDENTITY: Profile = (1, -1)
SIGNS = (-1, 0, 1)
"""The values a sign profile's entries may take."""


def apply_profile(x: torch.Tensor, profile: Profile) -> torch.Tensor:
    """The sign-linear function ``a*relu(x) + b*relu(-x)`` of ``profile = (a, b)``."""
    fast = _PROFILE_FNS.get(profile)
    if fast is not None:
        return fast(x)
    a, b = profile
    out = x.clamp(min=0) * a if a else torch.zeros_like(x)
    return out + x.clamp(max=0) * (-b) if b else out


_PROFILE_FNS = {
    IDENTITY: lambda x: x,
    (1, 0): lambda x: x.clamp(min=0),
    (1, 1): torch.abs,
    (-1, 1): torch.neg,
    (0, 1): lambda x: x.clamp(max=0).neg_(),
    (0, -1): lambda x: x.clamp(max=0),
    (-1, 0): lambda x: x.clamp(min=0).neg_(),
    (-1, -1): lambda x: x.abs().neg_(),
}


def compose_profiles(first: Profile, then: Profile) -> Profile:
    """The profile of ``then(first(x))``."""
    def coef(s: int, prof: Profile) -> int:  # value s*|x| goes through prof
        return prof[0] * s if s > 0 else (prof[1] * -s if s < 0 else 0)

    return coef(first[0], then), coef(first[1], then)


def _scaled(k: int, t: torch.Tensor) -> torch.Tensor:
    return t if k == 1 else (-t if k == -1 else k * t)


def _combine(a: int, x: torch.Tensor, b: int, y: torch.Tensor) -> torch.Tensor:
    """``a*x + b*y`` without multiplying by 0 or 1."""
    if not b:
        return _scaled(a, x) if a else torch.zeros_like(x)
    if not a:
        return _scaled(b, y)
    return torch.add(_scaled(a, x), y, alpha=b)


def factored_sum(c, profile: Profile) -> torch.Tensor:
    """``sum_i f(c_u)_i = a * sum c+ + b * sum c-``."""
    a, b = profile
    if a == -b:
        return _scaled(a, c.total_sum())
    pos, neg = c.signed_sums()
    return _scaled(a, pos + neg) if a == b else _combine(a, pos, b, neg)


def factored_norm(c, profile: Profile) -> torch.Tensor:
    """``||f(c_u)||_2 = sqrt(a^2 sum (c+)^2 + b^2 sum (c-)^2)``."""
    a, b = profile
    if a * a == b * b:
        sq = _scaled(a * a, c.total_square_sum())
    else:
        pos, neg = c.signed_square_sums()
        sq = _combine(a * a, pos, b * b, neg)
    return sq.sqrt()


def factored_max(c, profile: Profile) -> torch.Tensor:
    """``max_i f(c_u)_i``: ``max(f(M), f(m))`` for the extreme entries ``M, m`` (f monotone or convex);
    ``-min|c|`` for ``f = -|x|``."""
    if profile == (-1, -1):
        return -c.min_abs()
    hi, lo = c.extremes()
    if profile == IDENTITY:
        return hi
    if profile == (-1, 1):
        return -lo
    return torch.maximum(apply_profile(hi, profile), apply_profile(lo, profile))


def factored_min(c, profile: Profile) -> torch.Tensor:
    """``min_i f(c_u)_i``: ``min(f(M), f(m))`` (f monotone or concave); ``min|c|`` for ``f = |x|``."""
    if profile == (1, 1):
        return c.min_abs()
    hi, lo = c.extremes()
    if profile == IDENTITY:
        return lo
    if profile == (-1, 1):
        return -hi
    return torch.minimum(apply_profile(hi, profile), apply_profile(lo, profile))


def reads_sum(profile: Profile) -> tuple[Stat, ...]:
    """The statistics :func:`factored_sum` reads."""
    return (Stat.SUM,) if profile[0] == -profile[1] else (Stat.SIGNED,)


def reads_norm(profile: Profile) -> tuple[Stat, ...]:
    """The statistics :func:`factored_norm` reads."""
    return (Stat.SQ,) if profile[0] ** 2 == profile[1] ** 2 else (Stat.SIGNED_SQ,)


def reads_max(profile: Profile) -> tuple[Stat, ...]:
    """The statistics :func:`factored_max` reads."""
    return (Stat.MIN_ABS,) if tuple(profile) == (-1, -1) else (Stat.EXTREMES,)


def reads_min(profile: Profile) -> tuple[Stat, ...]:
    """The statistics :func:`factored_min` reads."""
    return (Stat.MIN_ABS,) if tuple(profile) == (1, 1) else (Stat.EXTREMES,)
