"""The typed names of phase 2: what a contribution computes (:class:`Stat`) and what it is built from (:class:`Side`).

A closed form declares the :class:`Stat` members it reads (``Aggregator.reads``); every contribution form
computes each of them. :class:`Side` names the per-location statistics of one captured tensor along one axis,
from which the forms build their :class:`Stat` values; its order is the order of the native kernels' output
array (``S_SUM`` ... ``S_MIN_ABS`` in ``native_kernels.c``, checked by a test). Both are ``str`` enums, so a
plugin may still write ``"sum"``; extagg converts at the seam (:func:`as_stats`) and uses members inside.
"""
from __future__ import annotations

import enum
from typing import Iterable

from ..errors import UnknownNameError


class Stat(str, enum.Enum):
    """A statistic of a contribution ``c_u`` at every location, each (N, T, h, w) (pairs: two such tensors)."""

    SUM = "sum"  #: ``sum_i c_i``
    SQ = "sq"  #: ``sum_i c_i**2``
    SIGNED = "signed"  #: ``(sum_i max(c_i, 0), sum_i max(-c_i, 0))``
    SIGNED_SQ = "signed_sq"  #: ``(sum_i max(c_i, 0)**2, sum_i max(-c_i, 0)**2)``
    EXTREMES = "extremes"  #: ``(max_i c_i, min_i c_i)``
    MIN_ABS = "min_abs"  #: ``min_i |c_i|``

    @property
    def is_pair(self) -> bool:
        return self in (Stat.SIGNED, Stat.SIGNED_SQ, Stat.EXTREMES)


class Side(str, enum.Enum):
    """A statistic of one tensor along one axis (in the native kernels' order)."""

    SUM = "sum"
    SQ = "sq"
    POS = "pos"
    NEG = "neg"
    POS_SQ = "pos_sq"
    NEG_SQ = "neg_sq"
    MAX = "max"
    MIN = "min"
    MIN_ABS = "min_abs"

    @property
    def is_extreme(self) -> bool:
        return self in (Side.MAX, Side.MIN, Side.MIN_ABS)


SIDES_OF: dict[Stat, tuple[Side, ...]] = {
    Stat.SUM: (Side.SUM,), Stat.SQ: (Side.SQ,), Stat.SIGNED: (Side.POS, Side.NEG),
    Stat.SIGNED_SQ: (Side.POS_SQ, Side.NEG_SQ), Stat.EXTREMES: (Side.MAX, Side.MIN), Stat.MIN_ABS: (Side.MIN_ABS,),
}
"""The side statistics each contribution statistic of a dense form is made of (in order, for pairs)."""

NONNEG_ALIAS: dict[Side, Side] = {Side.POS: Side.SUM, Side.POS_SQ: Side.SQ, Side.MIN_ABS: Side.MIN}
"""For a nonnegative tensor, the side statistic each of these equals."""
ZERO_IF_NONNEG = (Side.NEG, Side.NEG_SQ)
"""Exactly zero for a nonnegative tensor (represented as None)."""
SUM_FAMILY = (Side.SUM, Side.SQ, Side.POS, Side.NEG, Side.POS_SQ, Side.NEG_SQ)
EXTREME_FAMILY = (Side.MAX, Side.MIN, Side.MIN_ABS)  # MAX first: a family is pooled with its first member's op


STAT_KIND = "contribution statistic"


def as_stat(name) -> Stat:
    """``name`` (a :class:`Stat` or its string) as a member; an :class:`UnknownNameError` with suggestions else."""
    try:
        return Stat(name)
    except ValueError:
        raise UnknownNameError(STAT_KIND, str(name), [s.value for s in Stat]) from None


def as_stats(names: Iterable) -> tuple[Stat, ...]:
    """Every entry of ``names`` as a :class:`Stat` (see :func:`as_stat`)."""
    if isinstance(names, str):
        raise TypeError(f"expected a sequence of statistics, got the string {names!r}; write ({names!r},)")
    return tuple(as_stat(name) for name in names)
