"""The :class:`Contribution` protocol: what every phase-1 form offers phase 2.

A contribution describes ``c_u``, the contribution vector of location ``u`` (``size`` entries), for N images
and T targets on an (h, w) grid. Phase 2 reads it in two ways:

* statistics (:class:`~extagg.phase2.stats.Stat`), each cached on first use: :meth:`stat`, the named accessors
  (:meth:`total_sum`, ...) that closed forms call, and :meth:`prefetch` to compute several in one sweep;
* the values themselves, for components without a closed form: ``values`` (N, T, D, h, w) for dense forms
  (``chunked = False``) or :meth:`materialise_chunks` for forms too large to build (``chunked = True``).

Forms implement ``shape``, ``size``, ``_compute(stat)`` and the value access; each lives in its own module and
imports only this one and the shared statistics machinery. The per-layer
:class:`~extagg.phase2.sides.Store` is passed in when a form is built (``store=``), never set afterwards.
"""
from __future__ import annotations

import abc
from typing import Iterable, Optional

import torch

from .sides import SideStats, Store
from .stats import SIDES_OF, Stat, as_stat


class Contribution(abc.ABC):
    """Base of every contribution form; see the module docstring."""

    chunked = False
    """True where ``values`` is too large to build: the generic path reads :meth:`materialise_chunks`."""

    def __init__(self, store: Optional[Store] = None):
        self._stats: dict[Stat, object] = {}
        self._store = store if store is not None else Store()

    @property
    def store(self) -> Store:
        """The per-layer store of shared side statistics this form was built with."""
        return self._store

    # ---- the form's part
    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, T, h, w)``: the shape of every statistic and of the map."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Entries of ``c_u`` per location."""

    @abc.abstractmethod
    def _compute(self, stat: Stat):
        """The value of ``stat`` (not cached yet)."""

    def prefetch(self, stats: Iterable[Stat]) -> None:
        """Compute ``stats`` now, together, in as few sweeps as the form allows (later reads hit the cache).
        Optional: every statistic is also computed on its own when first read."""

    # ---- shared
    def stat(self, stat: Stat):
        """The value of ``stat``: one (N, T, h, w) tensor, or a pair of them for the pair statistics."""
        if stat.__class__ is not Stat:
            stat = as_stat(stat)
        if stat not in self._stats:
            self._stats[stat] = self._compute(stat)
        return self._stats[stat]

    def has(self, stat: Stat) -> bool:
        """Whether ``stat`` is already computed."""
        return stat in self._stats

    def _keep(self, stat: Stat, value) -> None:
        self._stats[stat] = value

    def total_sum(self) -> torch.Tensor:
        """``sum_i c_i``."""
        return self.stat(Stat.SUM)

    def total_square_sum(self) -> torch.Tensor:
        """``sum_i c_i**2``."""
        return self.stat(Stat.SQ)

    def signed_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i max(c_i, 0), sum_i max(-c_i, 0))``."""
        return self.stat(Stat.SIGNED)

    def signed_square_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i max(c_i, 0)**2, sum_i max(-c_i, 0)**2)``."""
        return self.stat(Stat.SIGNED_SQ)

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max_i c_i, min_i c_i)``."""
        return self.stat(Stat.EXTREMES)

    def min_abs(self) -> torch.Tensor:
        """``min_i |c_i|``."""
        return self.stat(Stat.MIN_ABS)

    def zeros(self) -> torch.Tensor:
        """An (N, T, h, w) map of zeros (an exactly-zero statistic)."""
        return torch.zeros(self.shape, dtype=self._dtype_ref().dtype, device=self._dtype_ref().device)

    def or_zero(self, t: Optional[torch.Tensor]) -> torch.Tensor:
        return self.zeros() if t is None else t

    @abc.abstractmethod
    def _dtype_ref(self) -> torch.Tensor:
        """A tensor of the form's dtype and device."""

    def __repr__(self) -> str:
        n, t, h, w = self.shape
        return f"{type(self).__name__}(shape={(n, t, self.size, h, w)})"


def from_sides(c: Contribution, side: SideStats, stat: Stat):
    """``stat`` of a dense form whose ``c_u`` are the rows of ``side`` (its side statistics along the axis)."""
    parts = [side.get(s) for s in SIDES_OF[stat]]
    if len(parts) == 1:
        return parts[0]
    return tuple(c.or_zero(p) for p in parts)


def pick(sides: dict, stat: Stat):
    """``stat`` from a dict of computed side statistics (a pair for the pair statistics)."""
    parts = [sides[s] for s in SIDES_OF[stat]]
    return tuple(parts) if len(parts) > 1 else parts[0]


def mul_add(a, b, c, d) -> Optional[torch.Tensor]:
    """``a*b + c*d`` where a None factor is an exact zero; None if both terms are."""
    ab = None if a is None or b is None else a * b
    if c is None or d is None:
        return ab
    return c * d if ab is None else torch.addcmul(ab, c, d)


def add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a + b`` where None is an exact zero."""
    return a if b is None else (b if a is None else a + b)
