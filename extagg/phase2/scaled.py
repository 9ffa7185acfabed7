"""The scaled form: an activation scaled per channel (Grad-CAM's ``w * x``), never built in full for sums."""
from __future__ import annotations

from typing import Optional

import torch

from . import backend
from .contribution import add, pick
from .dense import Materialisable
from .sides import Store
from .stats import SIDES_OF, Stat, as_stats


class Scaled(Materialisable):
    """``c_u = w * x_u``: an activation ``x`` (N, C, h, w) scaled per channel by weights ``w`` (N, T, C) that do
    not vary over space, as in Grad-CAM (``w`` = the spatially pooled gradient). Sums (of the parts and of their
    squares) are matrix-vector products, so they never build the (N, T, C, h, w) ``values``; all statistics come
    from one read of ``x`` where the native kernels apply, else the extremes from one sweep over chunks of
    channels."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, *, store: Optional[Store] = None):
        if x.ndim != 4 or w.ndim != 3 or w.shape[0] != x.shape[0] or w.shape[2] != x.shape[1]:
            raise ValueError(f"Scaled needs x (N, C, h, w) and w (N, T, C), got {tuple(x.shape)} and {tuple(w.shape)}")
        super().__init__((x.shape[0], w.shape[1], x.shape[2], x.shape[3]), store)
        self.x, self.w = x, w
        self._x_parts: dict[bool, tuple] = {}

    def _build(self) -> torch.Tensor:
        return self.x[:, None] * self.w[..., None, None]

    @property
    def size(self) -> int:
        return self.x.shape[1]

    def _dtype_ref(self) -> torch.Tensor:
        return self.x

    def _full_shape(self) -> tuple[int, ...]:
        n, t, h, w = self.shape
        return n, t, self.size, h, w

    def prefetch(self, stats) -> None:
        stats = [s for s in as_stats(stats) if not self.has(s)]
        if not stats:
            return
        if self._values is None and backend.fused(self.x, self.w):
            sides = backend.product_sides(self.x, self._full_shape(), {s for st in stats for s in SIDES_OF[st]},
                                          scale=self.w)
            for stat in stats:
                self._keep(stat, pick(sides, stat))
            return
        sweep = [st for st in stats if st in (Stat.EXTREMES, Stat.MIN_ABS)]
        if not sweep:
            return
        if self._values is not None:
            super().prefetch(sweep)
            return
        sides = backend.product_sides(self.x, self._full_shape(), {s for st in sweep for s in SIDES_OF[st]},
                                      scale=self.w)
        for stat in sweep:
            self._keep(stat, pick(sides, stat))

    def _mv(self, x: Optional[torch.Tensor], w: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``sum_c w[n, t, c] x[n, c, u]`` as (N, T, h, w); None for a zero factor."""
        if x is None or w is None:
            return None
        n, c, h, ww = x.shape
        return torch.matmul(w, x.reshape(n, c, h * ww)).reshape(n, w.shape[1], h, ww)

    def _parts_of_x(self, sq: bool):
        if sq not in self._x_parts:
            parts = self.store.parts(self.x)
            xp, xn = parts.pos(), parts.neg()
            self._x_parts[sq] = (xp * xp, None if xn is None else xn * xn) if sq else (xp, xn)
        return self._x_parts[sq]

    def _compute(self, stat: Stat):
        if stat in (Stat.EXTREMES, Stat.MIN_ABS):
            return super()._compute(stat)
        w = self.w
        if stat is Stat.SUM:
            return self._mv(self.x, w)
        wp = w.clamp(min=0)
        wn = wp - w
        if stat in (Stat.SQ, Stat.SIGNED_SQ):
            xp, xn = self._parts_of_x(sq=True)
            wp, wn = wp * wp, wn * wn
            if stat is Stat.SQ:
                return add(self._mv(xp, wp + wn), self._mv(xn, wp + wn))
        else:
            xp, xn = self._parts_of_x(sq=False)
        pos = self.or_zero(add(self._mv(xp, wp), self._mv(xn, wn)))
        neg = self.or_zero(add(self._mv(xp, wn), self._mv(xn, wp)))
        return pos, neg
