"""Per-location contributions, the output of phase 1, and the statistics phase 2 reads from them.

An extractor returns one of two descriptions of ``c_u``, the contribution of location ``u``:

* :class:`Dense`: the vector itself, ``values`` of shape ``(N, T, D, h, w)`` (T: targets per image).
* :class:`Factored`: a block outer product, ``c_u = concat_b vec(g_u^b (p_u^b)^T)``, where ``g_u^b`` is block ``b``
  of the gradient at the layer's output (``g``, shape ``(N, T, C_g, h, w)``) and ``p_u^b`` the matching block of
  the patch of ``x`` that a convolution with the given :class:`PatchGeometry` reads at ``u``. Identity and real
  convolutions (grouped ones as one block per group) take this form; ``c_u`` is never materialised for the
  builtin filters and aggregators. Patch statistics come from pooling, not ``unfold``.

Both forms offer the same cached statistics per location (each (N, T, h, w)): ``total_sum()``,
``total_square_sum()``, ``signed_sums()`` (sums of the positive and negative parts), ``signed_square_sums()``,
``extremes()`` (largest and smallest entry), ``min_abs()`` and ``size`` (entries per location). Closed forms
(:mod:`extagg.closed_forms`, re-exported here, and a plugin aggregator's ``closed_form``) are written against
these and so serve both forms: a whole sweep costs a few reductions per contribution, whatever the number of
methods. :class:`Scaled` (an activation scaled per channel, Grad-CAM) and :class:`Product` (activation times
gradient) are :class:`Dense` forms given by their factors; the dense forms live in :mod:`extagg.dense`.

Element order of a materialised factored contribution: block, then gradient index, then patch index (the
patch index in :func:`torch.nn.functional.unfold` order, channel-major).
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch
import torch.nn.functional as F

from . import native, statistics
from .closed_forms import (IDENTITY, ClosedForm, Profile, apply_profile, compose_profiles,  # noqa: F401 (re-exported)
                           factored_max, factored_min, factored_norm, factored_sum, reads_max, reads_min, reads_norm,
                           reads_sum)
from .dense import _SIDE_STATS, Dense, Product, Scaled, _mul_add, _or_zero, _Stats  # noqa: F401 (re-exported)
from .depthwise import one_per_block_stats
from .statistics import SideStats, Store, fold, pad_zeros, pool_extreme, pool_sum

_SUM_STATS = ("sum", "sq", "pos", "neg", "pos_sq", "neg_sq")
_EXTREME_STATS = ("max", "min", "min_abs")  # "max" first: _ps pools a family with the op of its first member


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
            return pad_zeros(x, self.padding)
        return F.pad(x, self.padding, mode=self.padding_mode)


@attrs.define(eq=False)
class Factored(_Stats):
    """A block outer product ``g_u (p_u)^T``; see the module docstring. Statistics are computed lazily and cached."""

    g: torch.Tensor  # (N, T, C_g, h, w)
    x: torch.Tensor  # (N, C_x, H, W): the tensor the patches are read from
    geometry: PatchGeometry
    _cache: dict = attrs.field(factory=dict, repr=False)
    store: Store = attrs.field(factory=Store, repr=False)
    """Set by the evaluator: shares parts and statistics of the layer's captured ``g`` and ``x`` between its
    contributions (``conv1x1``, ``conv3x3``, ``dwconv`` and ``bias`` read the same gradient statistics once)."""

    def __attrs_post_init__(self) -> None:
        groups = self.geometry.groups
        if self.g.shape[2] % groups or self.x.shape[1] % groups:
            raise ValueError(f"channels {self.g.shape[2]}, {self.x.shape[1]} not divisible by groups={groups}")
        geo = self.geometry
        size = [self.x.shape[-2] + geo.padding[2] + geo.padding[3], self.x.shape[-1] + geo.padding[0] + geo.padding[1]]
        grid = tuple((s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(size, geo.kernel, geo.stride, geo.dilation))
        if grid != tuple(self.g.shape[-2:]):
            raise ValueError(
                f"the patch grid {grid} read with {self.geometry} does not match the gradient's grid "
                f"{tuple(self.g.shape[-2:])}; for a real conv this means its forward differs from nn.Conv2d's "
                "(custom padding or reshaping)"
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, t, _, h, w = self.g.shape
        return n, t, h, w

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

    def _ref(self) -> torch.Tensor:
        return self.g

    def _g_blocks(self) -> torch.Tensor:
        n, t, c, h, w = self.g.shape
        return self.g.reshape(n, t, self.blocks, c // self.blocks, h, w)

    # ---- gradient side: per block, (N, T, B, h, w); None where exactly zero
    def _g_side(self) -> SideStats:
        side = self._cache.get("g side")
        if side is None:
            n, t, c, h, w = self.g.shape
            if self.blocks == 1:  # the same statistics as Dense(g), i.e. the bias extractor's
                side = self.store.side(self.g, self.g.shape, 2)
            else:
                side = self.store.side(self.g, (n, t, self.blocks, c // self.blocks, h, w), 3)
            self._cache["g side"] = side
        return side

    def _x_side(self) -> SideStats:
        side = self._cache.get("x side")
        if side is None:
            n, c, hh, ww = self.x.shape
            side = self._cache["x side"] = self.store.side(self.x, (n, self.blocks, c // self.blocks, hh, ww), 2)
        return side

    def _gs(self, name: str) -> Optional[torch.Tensor]:
        out = self._g_side().get(name)
        return out.unsqueeze(2) if out is not None and self.blocks == 1 else out

    # ---- patch side: per block, (N, 1, B, h, w): reduce channels per pixel, then pool the padded reduced map
    def _ps(self, name: str) -> Optional[torch.Tensor]:
        side = self._x_side()
        key = "p:" + side.resolve(name)
        if key not in self._cache:
            if self.blocks == 1:  # one-channel maps: pool the whole family of statistics in one call
                family = _EXTREME_STATS if name in _EXTREME_STATS else _SUM_STATS
                names = [m for m in dict.fromkeys(side.resolve(m) for m in family) if side.get(m) is not None]
                flip = [m in ("min", "min_abs") for m in names]  # minima as maxima of the negated maps
                pooled = self._pool(torch.cat([-side.get(m) if f else side.get(m) for m, f in zip(names, flip)], 1),
                                    family[0])
                self._cache.update({"p:" + m: (-pooled[:, None, i:i + 1] if f else pooled[:, None, i:i + 1])
                                    for i, (m, f) in enumerate(zip(names, flip))})
                for m in family:  # exactly-zero statistics (the negative part of a ReLU output)
                    self._cache.setdefault("p:" + side.resolve(m), None)
            else:
                pixel = side.get(name)
                self._cache[key] = None if pixel is None else self._pool(pixel, name).unsqueeze(1)
        return self._cache[key]

    def _pool(self, pixel: torch.Tensor, name: str) -> torch.Tensor:
        """Pool pixel statistics (N, B, H, W) over each patch; extremes take max of max, min of min and min|.|.
        Padding pixels are whole zero (or copied) pixels, so padding commutes with the pixel statistics."""
        geo = self.geometry
        left, right, top, bottom = geo.padding
        if name not in _EXTREME_STATS and pixel.numel() > statistics.SMALL_MAP and geo.padding_mode == "zeros" \
                and left == right and top == bottom:  # one convolution, padding included
            return pool_sum(pixel, geo.kernel, geo.stride, geo.dilation, (top, left))
        last = self._cache.get("padded")  # statistics that are the same map (x itself) share one padded copy
        if last is None or last[0] is not pixel:
            last = self._cache["padded"] = (pixel, geo.pad(pixel))
        if name in _EXTREME_STATS:
            return pool_extreme(last[1], geo.kernel, geo.stride, geo.dilation, largest=name == "max")
        return pool_sum(last[1], geo.kernel, geo.stride, geo.dilation)

    def _compute(self, name: str):
        g, p = self._gs, self._ps
        if name == "sq" and "signed_sq" in self._cache:  # the sum of its two parts: no further pass
            return sum(self._cache["signed_sq"])
        if self.dims[0] == 1:
            return self._compute_one_per_block(name)
        if self.blocks == 1:
            return self._compute_one_block(name)
        if name == "sum":
            return self._fold("sum", (g("sum"), p("sum")))
        if name == "sq":
            return self._fold("sum", (g("sq"), p("sq")))
        if name in ("signed", "signed_sq"):
            sq = "_sq" if name == "signed_sq" else ""
            gp, gn, pp, pn = g("pos" + sq), g("neg" + sq), p("pos" + sq), p("neg" + sq)
            return self._fold("sum", (gp, pp), (gn, pn)), self._fold("sum", (gp, pn), (gn, pp))
        if name == "extremes":
            gmax, gmin, pmax, pmin = g("max"), g("min"), p("max"), p("min")
            corners = torch.stack([gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin])
            return corners.amax(0).amax(2), corners.amin(0).amin(2)
        return self._fold("amin", (g("min_abs"), p("min_abs")))

    def _compute_one_block(self, name: str):
        """Ungrouped: every statistic is a product of a gradient statistic (N, T, h, w), shared with ``bias``, and
        a pooled patch statistic (N, 1, h, w)."""
        side = self._g_side()

        def p(stat):
            out = self._ps(stat)
            return None if out is None else out[:, :, 0]

        if name == "sum":
            return side.get("sum") * p("sum")
        if name == "sq":
            return side.get("sq") * p("sq")
        if name in ("signed", "signed_sq"):
            sq = "_sq" if name == "signed_sq" else ""
            gp, gn, pp, pn = side.get("pos" + sq), side.get("neg" + sq), p("pos" + sq), p("neg" + sq)
            return (_or_zero(_mul_add(gp, pp, gn, pn), self), _or_zero(_mul_add(gp, pn, gn, pp), self))
        if name == "extremes":
            gmax, gmin, pmax, pmin = side.get("max"), side.get("min"), p("max"), p("min")
            if self._x_side().parts.nonneg:  # patches >= 0: the extremes pair each g extreme with one p extreme
                return torch.maximum(gmax * pmax, gmax * pmin), torch.minimum(gmin * pmax, gmin * pmin)
            a, b, c, d = gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin
            return torch.maximum(torch.maximum(a, b), torch.maximum(c, d)), torch.minimum(torch.minimum(a, b),
                                                                                         torch.minimum(c, d))
        return side.get("min_abs") * p("min_abs")

    def _compute_one_per_block(self, name: str):
        self.prefetch([name])
        return self._cache[name]

    def prefetch(self, names) -> None:
        names = [name for name in names if name not in self._cache]
        if not names:
            return
        if self.dims[0] == 1:  # depthwise: every statistic in one sweep over chunks of blocks
            fused = native.depthwise_stats(self.g, self.x, self.geometry)
            if fused is not None:
                pairs = ("signed", "signed_sq", "extremes")
                self._cache.update({name: value for name, value in fused.items() if "." not in name})
                self._cache.update({name: (fused[name + ".0"], fused[name + ".1"]) for name in pairs})
                return
            stats = one_per_block_stats(self.g, self.x, self.blocks, self._pool, names,
                                        g_nonneg=self._g_side().parts.nonneg, x_nonneg=self._x_side().parts.nonneg)
            for name, value in stats.items():
                self._cache[name] = (tuple(_or_zero(v, self) for v in value) if isinstance(value, tuple)
                                     else _or_zero(value, self))
        elif self.blocks == 1:  # ungrouped: the side statistics, each side in one sweep
            side_names = [m for name in names for m in _SIDE_STATS[name]]
            self._g_side().prefetch(side_names)
            self._x_side().prefetch(side_names)

    def _fold(self, op: str, *terms, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _or_zero(fold(self._cache, op, *terms, scale=scale), self)

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
        """The whole contribution as a :class:`Dense` (memory ``N*T*D*h*w``; tests and tiny layers only)."""
        n, t, h, w = self.shape
        dg, dp = self.dims
        p = self.patches()
        g = self._g_blocks().reshape(n, t, self.blocks, dg, h * w)
        c = g[:, :, :, :, None, :] * p[:, None, :, None, :, :]
        return Dense(c.reshape(n, t, -1, h, w))
