"""Side statistics (:class:`~extagg.phase2.stats.Side`) of one tensor along one axis, computed lazily, and the
per-layer :class:`Store` that shares them between the contributions of one layer.

A :class:`Parts` holds a tensor with its positive and negative parts, computed at most once; a nonnegative
tensor (a ReLU output) is its own positive part and has no negative part, which callers see as ``None``
("exactly zero") and skip. Along an axis of size one the statistics are the parts themselves (no reduction).
The store shares only the layer's own captured tensors (temporaries stay private, so nothing is looked up by
the id of a freed tensor). Fused sweeps that fill many statistics at once are in :mod:`extagg.phase2.backend`.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from .stats import NONNEG_ALIAS, ZERO_IF_NONNEG, Side

_FRESH = (Side.SQ, Side.POS_SQ, Side.NEG_SQ, Side.MIN_ABS)


class Parts:
    """``v`` and, on demand, ``relu(v)``, ``relu(-v)`` and whether ``v >= 0`` everywhere."""

    __slots__ = ("v", "_nonneg", "_pos", "_neg")

    def __init__(self, v: torch.Tensor, nonneg: Optional[bool] = None):
        self.v = v
        self._nonneg = nonneg  # None: checked when first needed
        self._pos = self._neg = None

    @property
    def nonneg(self) -> bool:
        if self._nonneg is None:
            self.learn_sign(self.v)
        return self._nonneg

    @property
    def sign_known(self) -> bool:
        """Whether :attr:`nonneg` is known without a pass over ``v``."""
        return self._nonneg is not None

    def learn_sign(self, minimum: torch.Tensor) -> None:
        """Record whether ``v >= 0`` from ``minimum``, a reduction of ``v``'s entries by min (all of them)."""
        if self._nonneg is None:
            self._nonneg = bool(minimum.amin() >= 0) if minimum.numel() else True

    def pos(self) -> torch.Tensor:
        if self.nonneg:
            return self.v
        if self._pos is None:
            self._pos = self.v.clamp(min=0)
        return self._pos

    def neg(self) -> Optional[torch.Tensor]:
        """``relu(-v)``, or None where ``v >= 0`` everywhere."""
        if self.nonneg:
            return None
        if self._neg is None:
            self._neg = self.pos() - self.v
        return self._neg


class SideStats:
    """Statistics of ``parts.v.reshape(shape)`` along ``dim``, each computed once.

    ``get(side)`` returns a tensor, or None for a statistic that is exactly zero (``NEG`` and ``NEG_SQ`` of a
    nonnegative tensor).
    """

    __slots__ = ("parts", "shape", "dim", "_out", "_scratch", "_moved")

    def __init__(self, parts: Parts, shape: tuple[int, ...], dim: int):
        self.parts, self.shape, self.dim = parts, tuple(shape), dim
        self._out: dict[Side, Optional[torch.Tensor]] = {}
        self._scratch: Optional[torch.Tensor] = None  # elementwise temporaries, never a result
        self._moved: Optional[torch.Tensor] = None  # v with the reduced axis last, for small inner sizes

    def view(self) -> torch.Tensor:
        return self.parts.v.reshape(self.shape)

    @property
    def single(self) -> bool:
        """Whether the reduced axis has one entry: the statistics are then full-size elementwise functions."""
        return self.shape[self.dim] == 1

    def get(self, side: Side) -> Optional[torch.Tensor]:
        side = self.resolve(side)
        if side in self._out:
            return self._out[side]
        out = self._compute(side)
        if not (self.single and side in _FRESH):  # full-size fresh results are pooled and cached by the caller
            self._out[side] = out
        return out

    def resolve(self, side: Side) -> Side:
        """The statistic that ``side`` equals here (for a nonnegative tensor ``POS`` is ``SUM``, ...)."""
        return NONNEG_ALIAS.get(side, side) if self.parts.nonneg else side

    def known(self, side: Side) -> bool:
        return side in self._out

    def unknown(self, sides: Iterable[Side]) -> set[Side]:
        """The statistics that ``sides`` resolve to, less those already known and the exact zeros."""
        want = {self.resolve(s) for s in sides} - set(self._out)
        return want - set(ZERO_IF_NONNEG) if self.parts.nonneg else want

    def absorb(self, computed: dict) -> None:
        """Take statistics computed elsewhere (a fused sweep); for a nonnegative tensor, fill the aliases too."""
        if self.parts.nonneg:
            computed = dict(computed)
            computed.update({s: None for s in ZERO_IF_NONNEG if s in computed})
            for alias, same in NONNEG_ALIAS.items():
                if alias in computed:
                    computed.setdefault(same, computed[alias])
        self._out.update(computed)

    def _reduce(self, fn, a: torch.Tensor, b: Optional[torch.Tensor], op: str) -> torch.Tensor:
        """``op`` of the elementwise ``fn(a, b)`` along the axis, through one reused buffer."""
        if self._scratch is None:
            self._scratch = torch.empty_like(a)
        buf = fn(a, b, out=self._scratch) if b is not None else fn(a, out=self._scratch)
        return getattr(buf, op)(self.dim)

    def _compute(self, side: Side) -> Optional[torch.Tensor]:
        parts, dim, single = self.parts, self.dim, self.single
        if parts.nonneg and side in ZERO_IF_NONNEG:
            return None
        v = self.view()
        if side in (Side.POS, Side.NEG, Side.POS_SQ, Side.NEG_SQ):
            part = (parts.pos() if side in (Side.POS, Side.POS_SQ) else parts.neg()).reshape(self.shape)
            if side in (Side.POS, Side.NEG):
                return part.squeeze(dim) if single else part.sum(dim)
            if single:
                return (part * part).squeeze(dim)
            return self._reduce(torch.mul, part, part, "sum")
        if side is Side.SQ:
            if single:
                return (v * v).squeeze(dim)
            if not parts.nonneg and Side.POS_SQ in self._out and Side.NEG_SQ in self._out:
                return self._out[Side.POS_SQ] + self._out[Side.NEG_SQ]
            return self._reduce(torch.mul, v, v, "sum")
        if side is Side.MIN_ABS:
            return v.abs().squeeze(dim) if single else self._reduce(torch.abs, v, None, "amin")
        if single:  # sum, max and min of one entry: the entry itself, one view shared by all three
            return v.squeeze(dim) if side is Side.SUM else self.get(Side.SUM)
        if side is Side.SUM:
            return v.sum(dim)
        return self._extreme(v, side)

    def _extreme(self, v: torch.Tensor, side: Side) -> torch.Tensor:
        """amax/amin along the axis; with few entries after the axis (7x7 maps) through a copy that puts it last,
        where the CPU kernels vectorise (several times faster than reducing a middle axis of inner size 49)."""
        inner = 1
        for size in self.shape[self.dim + 1:]:
            inner *= size
        if inner >= 128 or v.device.type != "cpu":
            return v.amax(self.dim) if side is Side.MAX else v.amin(self.dim)
        if self._moved is None:
            self._moved = v.movedim(self.dim, -1).contiguous()
        return self._moved.amax(-1) if side is Side.MAX else self._moved.amin(-1)


class Store:
    """Parts and side statistics shared by the contributions of one layer, for ``pinned`` tensors only.

    :func:`extagg.phase2.evaluate_layer` builds one per layer and hands it to the extractors in the capture
    (``capture.store``); forms take it as their ``store=`` argument. A form built without one gets its own.
    """

    def __init__(self, pinned=()):
        self._pinned = {id(t): t for t in pinned if t is not None}
        self._parts: dict[int, Parts] = {}
        self._sides: dict[tuple, SideStats] = {}

    def parts(self, t: torch.Tensor) -> Parts:
        if self._pinned.get(id(t)) is not t:
            return Parts(t)
        if id(t) not in self._parts:
            self._parts[id(t)] = Parts(t)
        return self._parts[id(t)]

    def side(self, t: torch.Tensor, shape: tuple[int, ...], dim: int) -> SideStats:
        """Statistics of ``t.reshape(shape)`` along ``dim``, shared if ``t`` is pinned."""
        if self._pinned.get(id(t)) is not t:
            return SideStats(Parts(t), shape, dim)
        key = (id(t), tuple(shape), dim)
        if key not in self._sides:
            self._sides[key] = SideStats(self.parts(t), shape, dim)
        return self._sides[key]
