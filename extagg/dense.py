"""The dense contribution forms and the statistics protocol shared with :class:`extagg.contributions.Factored`.

:class:`Dense` holds ``c_u`` in full; :class:`Scaled` (Grad-CAM's ``w * x``) and :class:`Product` (gradient x
activation, ``x * g``) are dense contributions given by their factors, whose statistics never need the full
``values``. Documented, with the factored form, in :mod:`extagg.contributions` (which re-exports these).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import native
from .statistics import SideStats, Store, accumulate, chunks

_SIDE_STATS = {"sum": ("sum",), "sq": ("sq",), "signed": ("pos", "neg"), "signed_sq": ("pos_sq", "neg_sq"),
               "extremes": ("max", "min"), "min_abs": ("min_abs",)}
"""The side statistics (:mod:`extagg.statistics`) that each contribution statistic is built from."""


class _Stats:
    """Statistics shared by both forms; subclasses fill ``_compute(name)``, results are cached."""

    def _stat(self, name: str):
        if name not in self._cache:
            self._cache[name] = self._compute(name)
        return self._cache[name]

    def total_sum(self) -> torch.Tensor:
        """``sum_i c_i``."""
        return self._stat("sum")

    def total_square_sum(self) -> torch.Tensor:
        """``sum_i c_i**2``."""
        return self._stat("sq")

    def signed_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i max(c_i, 0), sum_i max(-c_i, 0))``."""
        return self._stat("signed")

    def signed_square_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i max(c_i, 0)**2, sum_i max(-c_i, 0)**2)``."""
        return self._stat("signed_sq")

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max_i c_i, min_i c_i)``."""
        return self._stat("extremes")

    def min_abs(self) -> torch.Tensor:
        """``min_i |c_i|``."""
        return self._stat("min_abs")

    def prefetch(self, names) -> None:
        """Compute the statistics ``names`` (``"sum"``, ``"sq"``, ``"signed"``, ``"signed_sq"``, ``"extremes"``,
        ``"min_abs"``) now, together, in as few sweeps over the data as the form allows; later calls of the
        accessors read them from the cache. Optional: every accessor computes what it needs on its own."""

    def _zero(self) -> torch.Tensor:
        n, t, h, w = self.shape
        return self._ref().new_zeros(n, t, h, w)


class Dense(_Stats):
    """A contribution given in full: ``values`` has shape ``(N, T, D, h, w)``."""

    def __init__(self, values: torch.Tensor):
        self._values = values
        self._cache: dict = {}
        self.store = Store()
        """Set by the evaluator: shares statistics of the layer's captured tensors (``bias`` and the gradient side
        of the factored extractors read the same gradient statistics)."""

    def __repr__(self) -> str:
        n, t, h, w = self.shape
        return f"{type(self).__name__}(shape={(n, t, self.size, h, w)})"

    @property
    def values(self) -> torch.Tensor:
        return self._values

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, t, _, h, w = self.values.shape
        return n, t, h, w

    @property
    def size(self) -> int:
        return self.values.shape[2]

    def _ref(self) -> torch.Tensor:
        return self.values

    def _side(self) -> SideStats:
        side = self._cache.get("side")
        if side is None:
            side = self._cache["side"] = self.store.side(self.values, self.values.shape, 2)
        return side

    def prefetch(self, names) -> None:
        self._side().prefetch([m for name in names if name not in self._cache for m in _SIDE_STATS[name]])

    def _compute(self, name: str):
        side = self._side()
        if name == "signed":
            return side.get("pos"), _or_zero(side.get("neg"), self)
        if name == "signed_sq":
            return side.get("pos_sq"), _or_zero(side.get("neg_sq"), self)
        if name == "extremes":
            return side.get("max"), side.get("min")
        return side.get(name)


class Scaled(Dense):
    """``c_u = w * x_u``: an activation ``x`` (N, C, h, w) scaled per channel by weights ``w`` (N, T, C) that do
    not vary over space, as in Grad-CAM (``w`` = the spatially pooled gradient). A :class:`Dense` whose sums
    (of the parts and of their squares) are matrix-vector products, so they never build the (N, T, C, h, w)
    ``values``; the extremes materialise them once."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor):
        if x.ndim != 4 or w.ndim != 3 or w.shape[0] != x.shape[0] or w.shape[2] != x.shape[1]:
            raise ValueError(f"Scaled needs x (N, C, h, w) and w (N, T, C), got {tuple(x.shape)} and {tuple(w.shape)}")
        super().__init__(None)
        self.x, self.w = x, w

    @property
    def values(self) -> torch.Tensor:
        if self._values is None:
            self._values = self.x[:, None] * self.w[..., None, None]
        return self._values

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.x.shape
        return n, self.w.shape[1], h, w

    @property
    def size(self) -> int:
        return self.x.shape[1]

    def _ref(self) -> torch.Tensor:
        return self.x

    def prefetch(self, names) -> None:
        """All statistics from one read of ``x`` where the native kernels apply; else sums are matrix-vector
        products, computed when asked, and extremes and ``min_abs`` come from one sweep over chunks of channels.
        Neither builds ``values``."""
        if self._values is None and _fused_side(self, names, self.x, scale=self.w):
            return
        want = {m for name in names if name in ("extremes", "min_abs") and name not in self._cache
                for m in _SIDE_STATS[name]}
        if not want or self._values is not None:
            return super().prefetch(names) if want else None
        acc: dict = {}
        w = self.w[..., None, None]
        for start, xc in chunks(self.x, 1):
            chunk = xc[:, None] * w[:, :, start:start + xc.shape[1]]
            accumulate(acc, chunk, 2, want, nonneg=False)
        if "max" in acc:
            self._cache["extremes"] = (acc["max"], acc["min"])
        if "min_abs" in acc:
            self._cache["min_abs"] = acc["min_abs"]

    def _mv(self, x: Optional[torch.Tensor], w: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``sum_c w[n, t, c] x[n, c, u]`` as (N, T, h, w); None for a zero factor."""
        if x is None or w is None:
            return None
        n, c, h, ww = x.shape
        return torch.matmul(w, x.reshape(n, c, h * ww)).reshape(n, w.shape[1], h, ww)

    def _x_parts(self, sq: bool):
        key = "x_sq" if sq else "x_parts"
        if key not in self._cache:
            parts = self._cache.setdefault("x", self.store.parts(self.x))
            xp, xn = parts.pos(), parts.neg()
            self._cache[key] = (xp * xp, None if xn is None else xn * xn) if sq else (xp, xn)
        return self._cache[key]

    def _compute(self, name: str):
        if name in ("extremes", "min_abs"):
            return super()._compute(name)
        w = self.w
        if name == "sum":
            return self._mv(self.x, w)
        wp = w.clamp(min=0)
        wn = wp - w
        if name in ("sq", "signed_sq"):
            xp, xn = self._x_parts(sq=True)
            wp, wn = wp * wp, wn * wn
            if name == "sq":
                return _add(self._mv(xp, wp + wn), self._mv(xn, wp + wn))
        else:
            xp, xn = self._x_parts(sq=False)
        pos = _or_zero(_add(self._mv(xp, wp), self._mv(xn, wn)), self)
        neg = _or_zero(_add(self._mv(xp, wn), self._mv(xn, wp)), self)
        return pos, neg


class Product(Dense):
    """``c_u = x_u * g_u`` entry by entry: an activation ``x`` (N, D, h, w) times a gradient ``g`` (N, T, D, h, w),
    as in gradient x activation (the ``scaling`` extractor). A :class:`Dense` whose statistics come from one read
    of ``x`` and ``g`` where the native kernels apply, without building the (N, T, D, h, w) ``values``; elsewhere
    ``values`` is built once, on first use."""

    def __init__(self, x: torch.Tensor, g: torch.Tensor):
        if x.ndim != 4 or g.ndim != 5 or g.shape[0] != x.shape[0] or g.shape[2:] != x.shape[1:]:
            raise ValueError(f"Product needs x (N, D, h, w) and g (N, T, D, h, w), got {tuple(x.shape)} and "
                             f"{tuple(g.shape)}")
        super().__init__(None)
        self.x, self.g = x, g

    @property
    def values(self) -> torch.Tensor:
        if self._values is None:
            self._values = self.x[:, None] * self.g
        return self._values

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, t, _, h, w = self.g.shape
        return n, t, h, w

    @property
    def size(self) -> int:
        return self.g.shape[2]

    def _ref(self) -> torch.Tensor:
        return self.g

    def prefetch(self, names) -> None:
        if self._values is None and _fused_side(self, names, self.x, other=self.g):
            return
        super().prefetch(names)


def _fused_side(c: Dense, names, x: torch.Tensor, **factors) -> bool:
    """Fill ``c``'s cache with the statistics ``names`` of ``x`` times ``factors`` (see
    :func:`extagg.native.side_stats`) in one native read; False where the kernels do not apply."""
    names = [name for name in names if name not in c._cache]
    if not names:
        return True
    n, t, h, w = c.shape
    side = native.side_stats(x, (n, t, c.size, h, w), 2, {m for name in names for m in _SIDE_STATS[name]}, **factors)
    if side is None:
        return False
    for name in names:
        parts = [side[m] for m in _SIDE_STATS[name]]
        c._cache[name] = tuple(parts) if len(parts) > 1 else parts[0]
    return True


def _mul_add(a, b, c, d) -> Optional[torch.Tensor]:
    """``a*b + c*d`` where a None factor is an exact zero; None if both terms are."""
    ab = None if a is None or b is None else a * b
    if c is None or d is None:
        return ab
    return c * d if ab is None else torch.addcmul(ab, c, d)


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return a if b is None else (b if a is None else a + b)


def _or_zero(t: Optional[torch.Tensor], c: "_Stats") -> torch.Tensor:
    return c._zero() if t is None else t
