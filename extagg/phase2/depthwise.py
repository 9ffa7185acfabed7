"""PyTorch statistics of factored contributions with one gradient entry per block (depthwise convolutions,
virtual or real), fused over chunks of blocks; the native kernel's fallback and test oracle.

Here the gradient side of every block is a single number, so the statistics cannot be reduced per side first:
each is a sum (or extreme) over blocks of products of full-size maps. They are computed a chunk of blocks at a
time (about :data:`extagg.phase2.sweeps.CHUNK` elements), every requested statistic from the same chunk while it
is in cache. Uses that ``g+`` and ``g-`` have disjoint supports: ``(g+)^2 A + (g-)^2 B = |g| (g+ A + g- B)``, and
``max_j g p_j = g+ max p - g- min p``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .sides import Parts, SideStats
from .stats import Side, Stat
from .sweeps import Scratch, chunk_step, fold, fold_into

Pool = Callable[[torch.Tensor, Side], torch.Tensor]
_OPS = {"sum": torch.add, "amax": torch.maximum, "amin": torch.minimum}


def one_per_block_stats(g: torch.Tensor, x: torch.Tensor, blocks: int, pool: Pool, stats, *,
                        g_nonneg: bool, x_nonneg: bool) -> dict:
    """The contribution statistics ``stats`` of ``g`` (N, T, B, h, w) against the patches of ``x``
    (N, B*c, H, W); ``pool(pixel_stat (N, b, H, W), side)`` pools pixel statistics over each patch.
    Values are (N, T, h, w) tensors, pairs for the pair statistics; None means exactly zero."""
    n, t, _, h, w = g.shape
    c, hh, ww = x.shape[1] // blocks, x.shape[-2], x.shape[-1]
    xb = x.reshape(n, blocks, c, hh, ww)
    stats = list(dict.fromkeys(stats))
    step = chunk_step(n * t * h * w + n * c * hh * ww)
    acc: dict = {}
    for b0 in range(0, blocks, step):
        b = min(step, blocks - b0)
        parts = Parts(xb[:, b0:b0 + b].reshape(n, b * c, hh, ww), nonneg=x_nonneg)
        chunk = _Chunk(g[:, :, b0:b0 + b], SideStats(parts, (n, b, c, hh, ww), 2), pool, g_nonneg)
        for stat in stats:
            for key, op, value in chunk.stat(stat, stats):
                if value is not None:
                    fold_into(acc, key, value, _OPS[op])
    out: dict = {}
    for stat in stats:
        if stat.is_pair:
            out[stat] = (acc.get((stat, 0)), acc.get((stat, 1)))
        elif stat is Stat.SQ and Stat.SIGNED_SQ in stats:
            pos, neg = acc.get((Stat.SIGNED_SQ, 0)), acc.get((Stat.SIGNED_SQ, 1))
            out[stat] = pos if neg is None else (neg if pos is None else pos + neg)
        else:
            out[stat] = acc.get(stat)
    return out


class _Chunk:
    """One chunk of blocks: its gradient parts and pooled patch statistics, each computed once."""

    def __init__(self, g: torch.Tensor, x_side: SideStats, pool: Pool, g_nonneg: bool):
        self.g, self.x_side, self.pool = g, x_side, pool
        self.gp = g if g_nonneg else g.clamp(min=0)
        self.gn = None if g_nonneg else self.gp - g
        self._abs: Optional[torch.Tensor] = None
        self._pooled: dict = {}
        self._scratch = Scratch()

    @property
    def abs(self) -> torch.Tensor:
        if self._abs is None:
            self._abs = self.gp if self.gn is None else self.gp + self.gn
        return self._abs

    def p(self, side: Side) -> Optional[torch.Tensor]:
        key = self.x_side.resolve(side)
        if key not in self._pooled:
            pixel = self.x_side.get(side)
            self._pooled[key] = None if pixel is None else self.pool(pixel, side).unsqueeze(1)
        return self._pooled[key]

    def stat(self, stat: Stat, stats) -> list:
        """(accumulator key, how chunks combine, this chunk's value) for ``stat``."""
        p, gp, gn, buf = self.p, self.gp, self.gn, self._scratch
        if stat is Stat.SUM:
            return [(stat, "sum", fold(buf, "sum", (self.g, p(Side.SUM))))]
        if stat is Stat.SQ:
            if Stat.SIGNED_SQ in stats:
                return []  # the sum of SIGNED_SQ's two parts
            return [(stat, "sum", fold(buf, "sum", (self.abs, p(Side.SQ)), scale=self.abs))]
        if stat in (Stat.SIGNED, Stat.SIGNED_SQ):
            sq = stat is Stat.SIGNED_SQ
            pp, pn = (p(Side.POS_SQ), p(Side.NEG_SQ)) if sq else (p(Side.POS), p(Side.NEG))
            scale = self.abs if sq else None
            return [((stat, 0), "sum", fold(buf, "sum", (gp, pp), (gn, pn), scale=scale)),
                    ((stat, 1), "sum", fold(buf, "sum", (gp, pn), (gn, pp), scale=scale))]
        if stat is Stat.EXTREMES:
            pmax, pmin = p(Side.MAX), p(Side.MIN)
            return [((stat, 0), "amax", fold(buf, "amax", (gp, pmax), (gn, pmin, -1))),
                    ((stat, 1), "amin", fold(buf, "amin", (gp, pmin), (gn, pmax, -1)))]
        return [(stat, "amin", fold(buf, "amin", (self.abs, p(Side.MIN_ABS))))]
