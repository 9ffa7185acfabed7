"""Statistics of factored contributions with one gradient entry per block (depthwise convolutions, virtual or
real), fused over chunks of blocks.

Here the gradient side of every block is a single number, so the statistics cannot be reduced per side first:
each is a sum (or extreme) over blocks of products of full-size maps. They are computed a chunk of blocks at a
time (about :data:`extagg.statistics.CHUNK` elements), every requested statistic from the same chunk while it is
in cache, and no temporary is larger than a chunk. Uses that ``g+`` and ``g-`` have disjoint supports:
``(g+)^2 A + (g-)^2 B = |g| (g+ A + g- B)``, and ``max_j g p_j = g+ max p - g- min p``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .statistics import Parts, SideStats, chunk_step, combine, fold

Pool = Callable[[torch.Tensor, str], torch.Tensor]
_OPS = {"sum": torch.add, "amax": torch.maximum, "amin": torch.minimum}


def one_per_block_stats(g: torch.Tensor, x: torch.Tensor, blocks: int, pool: Pool, names, *,
                        g_nonneg: bool, x_nonneg: bool) -> dict:
    """The contribution statistics ``names`` (``sum``, ``sq``, ``signed``, ``signed_sq``, ``extremes``,
    ``min_abs``; see :class:`extagg.contributions.Factored`) of ``g`` (N, T, B, h, w) against the patches of
    ``x`` (N, B*c, H, W); ``pool(pixel_stat (N, b, H, W), name)`` pools pixel statistics over each patch.
    Values are (N, T, h, w) tensors, pairs for ``signed``, ``signed_sq`` and ``extremes``; None means zero."""
    n, t, _, h, w = g.shape
    c, hh, ww = x.shape[1] // blocks, x.shape[-2], x.shape[-1]
    xb = x.reshape(n, blocks, c, hh, ww)
    names = list(dict.fromkeys(names))
    step = chunk_step(n * t * h * w + n * c * hh * ww)
    acc: dict = {}
    for b0 in range(0, blocks, step):
        b = min(step, blocks - b0)
        parts = Parts(xb[:, b0:b0 + b].reshape(n, b * c, hh, ww), nonneg=x_nonneg)
        chunk = _Chunk(g[:, :, b0:b0 + b], SideStats(parts, (n, b, c, hh, ww), 2), pool, g_nonneg)
        for name in names:
            for key, op, value in chunk.stat(name, names):
                if value is not None:
                    combine(acc, key, value, _OPS[op])
    out: dict = {}
    for name in names:
        if name in ("signed", "signed_sq", "extremes"):
            out[name] = (acc.get(name + ".0"), acc.get(name + ".1"))
        elif name == "sq" and "signed_sq" in names:
            pos, neg = acc.get("signed_sq.0"), acc.get("signed_sq.1")
            out[name] = pos if neg is None else (neg if pos is None else pos + neg)
        else:
            out[name] = acc.get(name)
    return out


class _Chunk:
    """One chunk of blocks: its gradient parts and pooled patch statistics, each computed once."""

    def __init__(self, g: torch.Tensor, x_side: SideStats, pool: Pool, g_nonneg: bool):
        self.g, self.x_side, self.pool = g, x_side, pool
        self.gp = g if g_nonneg else g.clamp(min=0)
        self.gn = None if g_nonneg else self.gp - g
        self._abs: Optional[torch.Tensor] = None
        self._pooled: dict = {}
        self._buffers: dict = {}

    @property
    def abs(self) -> torch.Tensor:
        if self._abs is None:
            self._abs = self.gp if self.gn is None else self.gp + self.gn
        return self._abs

    def p(self, name: str) -> Optional[torch.Tensor]:
        key = self.x_side.resolve(name)
        if key not in self._pooled:
            pixel = self.x_side.get(name)
            self._pooled[key] = None if pixel is None else self.pool(pixel, name).unsqueeze(1)
        return self._pooled[key]

    def stat(self, name: str, names) -> list[tuple[str, str, Optional[torch.Tensor]]]:
        """(accumulator key, how chunks combine, this chunk's value) for statistic ``name``."""
        p, gp, gn, buf = self.p, self.gp, self.gn, self._buffers
        if name == "sum":
            return [("sum", "sum", fold(buf, "sum", (self.g, p("sum"))))]
        if name == "sq":
            if "signed_sq" in names:
                return []  # the sum of signed_sq's two parts
            return [("sq", "sum", fold(buf, "sum", (self.abs, p("sq")), scale=self.abs))]
        if name in ("signed", "signed_sq"):
            sq = "_sq" if name == "signed_sq" else ""
            pp, pn = p("pos" + sq), p("neg" + sq)
            scale = self.abs if sq else None
            return [(name + ".0", "sum", fold(buf, "sum", (gp, pp), (gn, pn), scale=scale)),
                    (name + ".1", "sum", fold(buf, "sum", (gp, pn), (gn, pp), scale=scale))]
        if name == "extremes":
            pmax, pmin = p("max"), p("min")
            return [("extremes.0", "amax", fold(buf, "amax", (gp, pmax), (gn, pmin, -1))),
                    ("extremes.1", "amin", fold(buf, "amin", (gp, pmin), (gn, pmax, -1)))]
        if name == "min_abs":
            return [("min_abs", "amin", fold(buf, "amin", (self.abs, p("min_abs"))))]
        raise KeyError(name)
