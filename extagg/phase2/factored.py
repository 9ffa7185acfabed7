"""The factored form: a block outer product of the gradient and the patches a convolution reads, never built.

``c_u = concat_b vec(g_u^b (p_u^b)^T)``, where ``g_u^b`` is block ``b`` of the gradient at the layer's output
(``g``, shape ``(N, T, C_g, h, w)``) and ``p_u^b`` the matching block of the patch of ``x`` that a convolution
with the given :class:`PatchGeometry` reads at ``u``. Identity and real convolutions (grouped ones as one block
per group) take this form. Every statistic is a product of a gradient-side statistic and a pooled patch-side
one (pooling, not ``unfold``); with one gradient entry per block (depthwise) they are fused over chunks of
blocks by :func:`extagg.phase2.backend.depthwise_stats`.

Element order of a materialised factored contribution: block, then gradient index, then patch index (the
patch index in :func:`torch.nn.functional.unfold` order, channel-major).
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch
import torch.nn.functional as F

from . import backend, pooling
from .contribution import Contribution, mul_add
from .dense import Dense  # only for dense(), the materialised reference
from .sides import SideStats, Store
from .stats import EXTREME_FAMILY, SIDES_OF, SUM_FAMILY, Side, Stat, as_stats
from .sweeps import Scratch, fold


@attrs.frozen
class PatchGeometry:
    """How a convolution reads its input: kernel, stride, padding, dilation, groups and padding mode."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom (F.pad order)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def identity(cls, k: int, groups: int = 1) -> "PatchGeometry":
        """A stride-1, 'same' zero-padded kxk convolution (k odd)."""
        return cls((k, k), (1, 1), (k // 2,) * 4, groups=groups)

    @classmethod
    def of_conv(cls, conv: torch.nn.Conv2d) -> "PatchGeometry":
        """The geometry of a Conv2d, including a ``static_padding`` pad module (TF-style 'same' convs)."""
        if conv.padding == "same":  # torch pads total = dilation*(k-1): total//2 before, the rest after
            (top, bottom), (left, right) = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                                            for d, k in zip(conv.dilation, conv.kernel_size)]
            pad = (left, right, top, bottom)
        elif conv.padding == "valid":
            pad = (0, 0, 0, 0)
        else:
            ph, pw = conv.padding
            pad = (pw, pw, ph, ph)
        extra = getattr(conv, "static_padding", None)
        if isinstance(extra, (torch.nn.ZeroPad2d, torch.nn.ConstantPad2d)) and getattr(extra, "value", 0) == 0:
            pad = tuple(a + b for a, b in zip(pad, extra.padding))
        return cls(tuple(conv.kernel_size), tuple(conv.stride), pad, tuple(conv.dilation),
                   conv.groups, conv.padding_mode)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.padding):
            return x
        if self.padding_mode == "zeros":
            return pooling.pad_zeros(x, self.padding)
        return F.pad(x, self.padding, mode=self.padding_mode)


class Factored(Contribution):
    """A block outer product ``g_u (p_u)^T``; see the module docstring. Statistics are computed lazily and cached."""

    chunked = True

    def __init__(self, g: torch.Tensor, x: torch.Tensor, geometry: PatchGeometry, *, store: Optional[Store] = None):
        super().__init__(store)
        self.g, self.x, self.geometry = g, x, geometry
        n, t, _, h, w = g.shape
        self._shape = (n, t, h, w)
        groups = geometry.groups
        if g.shape[2] % groups or x.shape[1] % groups:
            raise ValueError(f"channels {g.shape[2]}, {x.shape[1]} not divisible by groups={groups}")
        geo = geometry
        size = [x.shape[-2] + geo.padding[2] + geo.padding[3], x.shape[-1] + geo.padding[0] + geo.padding[1]]
        grid = tuple((s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(size, geo.kernel, geo.stride, geo.dilation))
        if grid != tuple(g.shape[-2:]):
            raise ValueError(
                f"the patch grid {grid} read with {geometry} does not match the gradient's grid "
                f"{tuple(g.shape[-2:])}; for a real conv this means its forward differs from nn.Conv2d's "
                "(custom padding or reshaping)"
            )
        self._g_side: Optional[SideStats] = None
        self._x_side: Optional[SideStats] = None
        self._pooled: dict[Side, Optional[torch.Tensor]] = {}  # patch statistics (N, 1, B, h, w)
        self._padded: Optional[tuple] = None  # (pixel map, its padded copy): shared by equal maps
        self._scratch = Scratch()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    @property
    def blocks(self) -> int:
        return self.geometry.groups

    @property
    def dims(self) -> tuple[int, int]:
        """(gradient entries per block, patch entries per block)."""
        kh, kw = self.geometry.kernel
        return self.g.shape[2] // self.blocks, self.x.shape[1] // self.blocks * kh * kw

    @property
    def size(self) -> int:
        dg, dp = self.dims
        return self.blocks * dg * dp

    def _dtype_ref(self) -> torch.Tensor:
        return self.g

    def _g_blocks(self) -> torch.Tensor:
        n, t, c, h, w = self.g.shape
        return self.g.reshape(n, t, self.blocks, c // self.blocks, h, w)

    # ---- gradient side: per block, (N, T, B, h, w); None where exactly zero
    def g_side(self) -> SideStats:
        if self._g_side is None:
            n, t, c, h, w = self.g.shape
            if self.blocks == 1:  # the same statistics as Dense(g), i.e. the bias extractor's
                self._g_side = self.store.side(self.g, self.g.shape, 2)
            else:
                self._g_side = self.store.side(self.g, (n, t, self.blocks, c // self.blocks, h, w), 3)
        return self._g_side

    def x_side(self) -> SideStats:
        if self._x_side is None:
            n, c, hh, ww = self.x.shape
            self._x_side = self.store.side(self.x, (n, self.blocks, c // self.blocks, hh, ww), 2)
        return self._x_side

    def _gs(self, side: Side) -> Optional[torch.Tensor]:
        out = self.g_side().get(side)
        return out.unsqueeze(2) if out is not None and self.blocks == 1 else out

    # ---- patch side: per block, (N, 1, B, h, w): reduce channels per pixel, then pool the padded reduced map
    def _ps(self, side: Side) -> Optional[torch.Tensor]:
        xs = self.x_side()
        key = xs.resolve(side)
        if key not in self._pooled:
            if self.blocks == 1:  # one-channel maps: pool the whole family of statistics in one call
                family = EXTREME_FAMILY if side.is_extreme else SUM_FAMILY
                members = [m for m in dict.fromkeys(xs.resolve(m) for m in family) if xs.get(m) is not None]
                flip = [m in (Side.MIN, Side.MIN_ABS) for m in members]  # minima as maxima of the negated maps
                pooled = self._pool(torch.cat([-xs.get(m) if f else xs.get(m) for m, f in zip(members, flip)], 1),
                                    family[0])
                self._pooled.update({m: (-pooled[:, None, i:i + 1] if f else pooled[:, None, i:i + 1])
                                     for i, (m, f) in enumerate(zip(members, flip))})
                for m in family:  # exactly-zero statistics (the negative part of a ReLU output)
                    self._pooled.setdefault(xs.resolve(m), None)
            else:
                pixel = xs.get(side)
                self._pooled[key] = None if pixel is None else self._pool(pixel, side).unsqueeze(1)
        return self._pooled[key]

    def _pool(self, pixel: torch.Tensor, side: Side) -> torch.Tensor:
        """Pool pixel statistics (N, B, H, W) over each patch; extremes take max of max, min of min and min|.|.
        Padding pixels are whole zero (or copied) pixels, so padding commutes with the pixel statistics."""
        geo = self.geometry
        left, right, top, bottom = geo.padding
        if not side.is_extreme and pixel.numel() > pooling.SMALL_MAP and geo.padding_mode == "zeros" \
                and left == right and top == bottom:  # one convolution, padding included
            return pooling.pool_sum(pixel, geo.kernel, geo.stride, geo.dilation, (top, left))
        if self._padded is None or self._padded[0] is not pixel:
            self._padded = (pixel, geo.pad(pixel))
        padded = self._padded[1]
        if side.is_extreme:
            return pooling.pool_extreme(padded, geo.kernel, geo.stride, geo.dilation, largest=side is Side.MAX)
        return pooling.pool_sum(padded, geo.kernel, geo.stride, geo.dilation)

    def _compute(self, stat: Stat):
        g, p = self._gs, self._ps
        if stat is Stat.SQ and self.has(Stat.SIGNED_SQ):  # the sum of its two parts: no further pass
            return sum(self.stat(Stat.SIGNED_SQ))
        if self.dims[0] == 1:
            self.prefetch([stat])
            return self.stat(stat)
        if self.blocks == 1:
            return self._compute_one_block(stat)
        if stat is Stat.SUM:
            return self._fold("sum", (g(Side.SUM), p(Side.SUM)))
        if stat is Stat.SQ:
            return self._fold("sum", (g(Side.SQ), p(Side.SQ)))
        if stat in (Stat.SIGNED, Stat.SIGNED_SQ):
            pos, neg = SIDES_OF[stat]
            gp, gn, pp, pn = g(pos), g(neg), p(pos), p(neg)
            return self._fold("sum", (gp, pp), (gn, pn)), self._fold("sum", (gp, pn), (gn, pp))
        if stat is Stat.EXTREMES:
            gmax, gmin, pmax, pmin = g(Side.MAX), g(Side.MIN), p(Side.MAX), p(Side.MIN)
            corners = torch.stack([gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin])
            return corners.amax(0).amax(2), corners.amin(0).amin(2)
        return self._fold("amin", (g(Side.MIN_ABS), p(Side.MIN_ABS)))

    def _compute_one_block(self, stat: Stat):
        """Ungrouped: every statistic is a product of a gradient statistic (N, T, h, w), shared with ``bias``, and
        a pooled patch statistic (N, 1, h, w)."""
        side = self.g_side()

        def p(s):
            out = self._ps(s)
            return None if out is None else out[:, :, 0]

        if stat is Stat.SUM:
            return side.get(Side.SUM) * p(Side.SUM)
        if stat is Stat.SQ:
            return side.get(Side.SQ) * p(Side.SQ)
        if stat in (Stat.SIGNED, Stat.SIGNED_SQ):
            pos, neg = SIDES_OF[stat]
            gp, gn, pp, pn = side.get(pos), side.get(neg), p(pos), p(neg)
            return self.or_zero(mul_add(gp, pp, gn, pn)), self.or_zero(mul_add(gp, pn, gn, pp))
        if stat is Stat.EXTREMES:
            gmax, gmin, pmax, pmin = side.get(Side.MAX), side.get(Side.MIN), p(Side.MAX), p(Side.MIN)
            if self.x_side().parts.nonneg:  # patches >= 0: the extremes pair each g extreme with one p extreme
                return torch.maximum(gmax * pmax, gmax * pmin), torch.minimum(gmin * pmax, gmin * pmin)
            a, b, c, d = gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin
            return torch.maximum(torch.maximum(a, b), torch.maximum(c, d)), torch.minimum(torch.minimum(a, b),
                                                                                         torch.minimum(c, d))
        return side.get(Side.MIN_ABS) * p(Side.MIN_ABS)

    def prefetch(self, stats) -> None:
        stats = [s for s in as_stats(stats) if not self.has(s)]
        if not stats:
            return
        if self.dims[0] == 1:  # depthwise: every statistic in one read (native) or one sweep over blocks
            out = backend.depthwise_stats(
                self.g, self.x, self.geometry, stats, pool=self._pool,
                signs=lambda: (self.g_side().parts.nonneg, self.x_side().parts.nonneg))
            for stat, value in out.items():
                self._keep(stat, tuple(self.or_zero(v) for v in value) if isinstance(value, tuple)
                           else self.or_zero(value))
        elif self.blocks == 1:  # ungrouped: the side statistics, each side in one sweep
            sides = [s for stat in stats for s in SIDES_OF[stat]]
            backend.prefetch_sides(self.g_side(), sides)
            backend.prefetch_sides(self.x_side(), sides)

    def _fold(self, op: str, *terms, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.or_zero(fold(self._scratch, op, *terms, scale=scale))

    # ---- materialisation, for components without a closed form and for the reference path
    def patches(self) -> torch.Tensor:
        """The unfolded patches, ``(N, B, D_p, h*w)``."""
        geo = self.geometry
        p = F.unfold(geo.pad(self.x), geo.kernel, dilation=geo.dilation, stride=geo.stride)
        n = p.shape[0]
        return p.reshape(n, self.blocks, -1, p.shape[-1])

    def materialise_chunks(self, budget: int = 1 << 24):
        """Yield ``(n, t, slice_of_locations, values (D, L))`` covering every location, ``D*L <= budget`` roughly."""
        n, t, h, w = self.shape
        dg, dp = self.dims
        d = self.blocks * dg * dp
        chunk = max(1, budget // d)
        p = self.patches()
        g = self._g_blocks().reshape(n, t, self.blocks, dg, h * w)
        for i in range(n):
            for j in range(t):
                for start in range(0, h * w, chunk):
                    sl = slice(start, min(start + chunk, h * w))
                    c = g[i, j, :, :, None, sl] * p[i, :, None, :, sl]  # (B, Dg, Dp, L)
                    yield i, j, sl, c.reshape(d, -1)

    def dense(self) -> Dense:
        """The whole contribution as a :class:`~extagg.phase2.dense.Dense` (memory ``N*T*D*h*w``; tests and tiny
        layers only)."""
        n, t, h, w = self.shape
        dg, dp = self.dims
        p = self.patches()
        g = self._g_blocks().reshape(n, t, self.blocks, dg, h * w)
        c = g[:, :, :, :, None, :] * p[:, None, :, None, :, :]
        return Dense(c.reshape(n, t, -1, h, w))
