"""extagg-hello: an example third-party extagg plugin.

It adds three aggregators and one filter; every method string can use them once the distribution is installed
(``pip install -e examples/extagg-hello``), e.g. ``scaling+square+median`` or ``conv3x3+relu+l1``.

* ``median``: the median entry of each location's contribution. No closed form: on factored contributions
  (``conv1x1``, ``conv3x3``, ...) extagg materialises the contribution in chunks and calls ``reduce`` on each.
* ``l1``: the sum of absolute values, with a closed form on factored contributions.
* ``topk(k=3)``: the mean of the ``k`` largest entries, a parameter in the method string.
* ``square``: the elementwise square. It is not sign-linear, so it declares no ``sign_profile``; a method that
  uses it as a pre-filter on a factored contribution takes the generic path.
"""
from __future__ import annotations

import torch

import extagg
from extagg.closed_forms import factored_sum, reads_sum
from extagg.specs import Aggregator, Filter, Param

__version__ = "0.1.0"


# --- aggregators: reduce(x, dim, **params) collapses the contribution axis ``dim`` of x


def median(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The lower median along ``dim``: the ``(D - 1) // 2``-th smallest of D entries (as ``torch.median``)."""
    return x.median(dim=dim).values


def l1(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.abs().sum(dim)


def l1_closed_form(c, profile):
    """``sum_i |f(c_u)_i|`` on a factored contribution, where the pre-filters compose to ``f`` of ``profile``.

    ``f(x) = a * max(x, 0) + b * max(-x, 0)``, so ``|f(x)|`` is the sign-linear function of ``(|a|, |b|)``,
    and its sum over the entries of ``c_u`` is what the builtin ``factored_sum`` computes from block sums.
    """
    a, b = profile
    return factored_sum(c, (abs(a), abs(b)))


def l1_reads(profile):
    """The statistics ``l1_closed_form`` reads, so that a sweep computes them with the others in one pass."""
    a, b = profile
    return reads_sum((abs(a), abs(b)))


def topk(x: torch.Tensor, dim: int, k: int = 3) -> torch.Tensor:
    """The mean of the ``k`` largest entries along ``dim`` (all of them if there are fewer than ``k``)."""
    k = min(k, x.shape[dim])
    return x.topk(k, dim=dim).values.mean(dim)


def _at_least_one(k: int):
    return None if k >= 1 else "must be at least 1"


@extagg.hookimpl
def register_aggregators(register):
    register(Aggregator(
        name="median", reduce=median, keeps_sign=True,
        formula="median_i c_i (lower median)",
        doc="Median entry of the contribution; robust to a few large entries.",
    ))
    register(Aggregator(
        name="l1", reduce=l1, closed_form=l1_closed_form, reads=l1_reads, nonnegative=True, abs_invariant=True,
        formula="sum_i |c_i|",
        doc="L1 norm of the contribution.",
    ))
    register(Aggregator(
        name="topk", reduce=topk, keeps_sign=True,
        params=[Param("k", int, 3, "how many of the largest entries to average", check=_at_least_one)],
        formula="mean of the k largest c_i",
        doc="Mean of the k largest entries: 'topk(k=1)' is max, a large k approaches the mean.",
    ))


# --- filters: fn(x, **params) acts elementwise, on each contribution (pre) or on the map (post)


@extagg.hookimpl
def register_filters(register):
    register(Filter(
        name="square", fn=torch.square,
        formula="x^2",
        doc="Elementwise square (not sign-linear: no sign profile, no closed forms).",
    ))
