"""The dense form: ``c_u`` given in full, ``values`` of shape (N, T, D, h, w)."""
from __future__ import annotations

from typing import Optional

import torch

from . import backend
from .contribution import Contribution, from_sides
from .sides import SideStats, Store
from .stats import SIDES_OF, Stat, as_stats


class Materialisable(Contribution):
    """Base of the forms whose ``c_u`` is a (N, T, D, h, w) tensor that can be built: ``values`` is built once, on
    first use (by :meth:`_build`), and its side statistics along D come from the store."""

    def __init__(self, shape: tuple[int, int, int, int], store: Optional[Store] = None):
        super().__init__(store)
        self._shape = shape
        self._values: Optional[torch.Tensor] = None
        self._side: Optional[SideStats] = None

    def _build(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def values(self) -> torch.Tensor:
        if self._values is None:
            self._values = self._build()
        return self._values

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    def side(self) -> SideStats:
        """The side statistics of ``values`` along D (shared through the store)."""
        if self._side is None:
            self._side = self.store.side(self.values, self.values.shape, 2)
        return self._side

    def prefetch(self, stats) -> None:
        backend.prefetch_sides(self.side(),
                               [s for stat in as_stats(stats) if not self.has(stat) for s in SIDES_OF[stat]])

    def _compute(self, stat: Stat):
        return from_sides(self, self.side(), stat)


class Dense(Materialisable):
    """A contribution given in full: ``values`` has shape ``(N, T, D, h, w)``. Its statistics are the side
    statistics of ``values`` along D (shared through the store: ``bias`` and the gradient side of the factored
    extractors read the same gradient statistics)."""

    def __init__(self, values: torch.Tensor, *, store: Optional[Store] = None):
        if not isinstance(values, torch.Tensor) or values.ndim != 5:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"Dense needs values of shape (N, T, D, h, w), got {got}")
        n, t, _, h, w = values.shape
        super().__init__((n, t, h, w), store)
        self._values = values

    @property
    def size(self) -> int:
        return self._values.shape[2]

    def _dtype_ref(self) -> torch.Tensor:
        return self._values
