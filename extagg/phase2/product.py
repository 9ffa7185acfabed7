"""The product form: activation times gradient entry by entry (gradient x activation, ``scaling``)."""
from __future__ import annotations

from typing import Optional

import torch

from . import backend
from .contribution import pick
from .dense import Materialisable
from .sides import Store
from .stats import SIDES_OF, as_stats


class Product(Materialisable):
    """``c_u = x_u * g_u``: an activation ``x`` (N, D, h, w) times a gradient ``g`` (N, T, D, h, w). Its statistics
    come from one read of ``x`` and ``g`` where the native kernels apply, without building the (N, T, D, h, w)
    ``values``; elsewhere ``values`` is built once, on first use, and reduced as a dense contribution."""

    def __init__(self, x: torch.Tensor, g: torch.Tensor, *, store: Optional[Store] = None):
        if x.ndim != 4 or g.ndim != 5 or g.shape[0] != x.shape[0] or g.shape[2:] != x.shape[1:]:
            raise ValueError(f"Product needs x (N, D, h, w) and g (N, T, D, h, w), got {tuple(x.shape)} and "
                             f"{tuple(g.shape)}")
        n, t, _, h, w = g.shape
        super().__init__((n, t, h, w), store)
        self.x, self.g = x, g

    def _build(self) -> torch.Tensor:
        return self.x[:, None] * self.g

    @property
    def size(self) -> int:
        return self.g.shape[2]

    def _dtype_ref(self) -> torch.Tensor:
        return self.g

    def prefetch(self, stats) -> None:
        stats = [s for s in as_stats(stats) if not self.has(s)]
        if not stats:
            return
        if self._values is None and backend.fused(self.x, self.g):
            sides = backend.product_sides(self.x, self.g.shape, {s for st in stats for s in SIDES_OF[st]},
                                          other=self.g)
            for stat in stats:
                self._keep(stat, pick(sides, stat))
            return
        super().prefetch(stats)
