"""Per-location contributions, the output of phase 1, and the closed forms of phase 2 on them.

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
(:func:`factored_sum` and friends, and a plugin aggregator's ``closed_form``) are written against these and so
serve both forms: a whole sweep costs a few reductions per contribution, whatever the number of methods.

Element order of a materialised factored contribution: block, then gradient index, then patch index (the
patch index in :func:`torch.nn.functional.unfold` order, channel-major).
"""
from __future__ import annotations

from typing import Callable, Optional

import attrs
import torch
import torch.nn.functional as F

Profile = tuple[int, int]
IDENTITY: Profile = (1, -1)


def apply_profile(x: torch.Tensor, profile: Profile) -> torch.Tensor:
    """The sign-linear function ``a*relu(x) + b*relu(-x)`` of ``profile = (a, b)``."""
    a, b = profile
    if profile == IDENTITY:
        return x
    out = x.clamp(min=0) * a if a else torch.zeros_like(x)
    return out + x.clamp(max=0) * (-b) if b else out


def compose_profiles(first: Profile, then: Profile) -> Profile:
    """The profile of ``then(first(x))``."""
    def coef(s: int, prof: Profile) -> int:  # value s*|x| goes through prof
        return prof[0] * s if s > 0 else (prof[1] * -s if s < 0 else 0)

    return coef(first[0], then), coef(first[1], then)


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


@attrs.define(eq=False)
class Dense(_Stats):
    """A contribution given in full: ``values`` has shape ``(N, T, D, h, w)``."""

    values: torch.Tensor
    _cache: dict = attrs.field(factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, t, _, h, w = self.values.shape
        return n, t, h, w

    @property
    def size(self) -> int:
        return self.values.shape[2]

    def _compute(self, name: str):
        v = self.values
        if name == "sum":
            return v.sum(2)
        if name == "sq":
            return (v * v).sum(2)
        if name in ("signed", "signed_sq"):
            pos = v.clamp(min=0)
            neg = pos - v
            if name == "signed":
                return pos.sum(2), neg.sum(2)
            return (pos * pos).sum(2), (neg * neg).sum(2)
        if name == "extremes":
            return v.amax(2), v.amin(2)
        return v.abs().amin(2)


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
        mode = {"zeros": "constant"}.get(self.padding_mode, self.padding_mode)
        return F.pad(x, self.padding, mode=mode)


@attrs.define(eq=False)
class Factored(_Stats):
    """A block outer product ``g_u (p_u)^T``; see the module docstring. Statistics are computed lazily and cached."""

    g: torch.Tensor  # (N, T, C_g, h, w)
    x: torch.Tensor  # (N, C_x, H, W): the tensor the patches are read from
    geometry: PatchGeometry
    _cache: dict = attrs.field(factory=dict, repr=False)
    shared: dict = attrs.field(factory=dict, repr=False)
    """Per-pixel and per-block side statistics, keyed by tensor identity; the evaluator hands one dict to every
    contribution of a layer, so ``conv1x1`` and ``conv3x3`` read the same gradient and channel statistics once."""

    def __attrs_post_init__(self) -> None:
        groups = self.geometry.groups
        if self.g.shape[2] % groups or self.x.shape[1] % groups:
            raise ValueError(f"channels {self.g.shape[2]}, {self.x.shape[1]} not divisible by groups={groups}")
        grid = tuple(self._ps("max").shape[-2:])
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

    # ---- gradient side: per block, (N, T, B, h, w)
    def _g_blocks(self) -> torch.Tensor:
        n, t, c, h, w = self.g.shape
        return self.g.reshape(n, t, self.blocks, c // self.blocks, h, w)

    def _store(self) -> dict:
        # ungrouped side statistics are shared with the layer's other contributions; grouped ones (depthwise:
        # as large as the activation) stay private, so they are freed with this contribution
        return self.shared if self.blocks == 1 else self._cache

    def _gs(self, name: str) -> torch.Tensor:
        key, store = ("g", id(self.g), self.blocks, name), self._store()
        if key not in store:
            store[key] = _side_stat(self._g_blocks(), name, dim=3)
        return store[key]

    def _pixel(self, name: str) -> torch.Tensor:
        key, store = ("x", id(self.x), self.blocks, name), self._store()
        if key not in store:
            n, c, hh, ww = self.x.shape
            store[key] = _side_stat(self.x.reshape(n, self.blocks, c // self.blocks, hh, ww), name, dim=2)
        return store[key]

    # ---- patch side: per block, (N, 1, B, h, w): reduce channels per pixel, then pool the padded reduced map
    def _ps(self, name: str) -> torch.Tensor:
        key = "p:" + name
        if key not in self._cache:
            geo = self.geometry
            pixel = geo.pad(self._pixel(name))  # padding pixels are whole zero (or copied) pixels, so this commutes
            if geo.kernel == (1, 1):  # a 1x1 patch is the pixel itself
                self._cache[key] = pixel[..., :: geo.stride[0], :: geo.stride[1]].unsqueeze(1)
                return self._cache[key]
            if name in ("max", "min", "min_abs"):
                sign = -1 if name != "max" else 1
                out = sign * F.max_pool2d(sign * pixel, geo.kernel, stride=geo.stride, dilation=geo.dilation)
            else:
                ones = pixel.new_ones(self.blocks, 1, *geo.kernel)
                out = F.conv2d(pixel, ones, stride=geo.stride, dilation=geo.dilation, groups=self.blocks)
            self._cache[key] = out.unsqueeze(1)
        return self._cache[key]

    def _compute(self, name: str):
        g, p = self._gs, self._ps
        if name == "sum":
            return (g("sum") * p("sum")).sum(2)
        if name == "sq":
            return (g("sq") * p("sq")).sum(2)
        if name in ("signed", "signed_sq"):
            sq = "_sq" if name == "signed_sq" else ""
            gp, gn, pp, pn = g("pos" + sq), g("neg" + sq), p("pos" + sq), p("neg" + sq)
            return (gp * pp + gn * pn).sum(2), (gp * pn + gn * pp).sum(2)
        if name == "extremes":
            gmax, gmin, pmax, pmin = g("max"), g("min"), p("max"), p("min")
            corners = torch.stack([gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin])
            return corners.amax(0).amax(2), corners.amin(0).amin(2)
        return (g("min_abs") * p("min_abs")).amin(2)

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


def _side_stat(v: torch.Tensor, name: str, dim: int) -> torch.Tensor:
    """One statistic of ``v`` along ``dim``: sum, sq, pos, neg, pos_sq, neg_sq, max, min, min_abs."""
    if name == "sum":
        return v.sum(dim)
    if name == "sq":
        return (v * v).sum(dim)
    if name in ("pos", "pos_sq"):
        part = v.clamp(min=0)
    elif name in ("neg", "neg_sq"):
        part = (-v).clamp(min=0)
    elif name == "max":
        return v.amax(dim)
    elif name == "min":
        return v.amin(dim)
    else:
        return v.abs().amin(dim)
    return (part * part if name.endswith("_sq") else part).sum(dim)


# ----------------------------------------------------------------------------- closed forms for builtins
# Each takes a Dense or Factored contribution and the sign profile (a, b) of the composed pre-filters,
# f(x) = a*max(x, 0) + b*max(-x, 0), and returns the (N, T, h, w) map.
def factored_sum(c, profile: Profile) -> torch.Tensor:
    """``sum_i f(c_u)_i = a * sum c+ + b * sum c-``."""
    a, b = profile
    if a == -b:
        return a * c.total_sum()
    pos, neg = c.signed_sums()
    return a * (pos + neg) if a == b else a * pos + b * neg


def factored_norm(c, profile: Profile) -> torch.Tensor:
    """``||f(c_u)||_2 = sqrt(a^2 sum (c+)^2 + b^2 sum (c-)^2)``."""
    a, b = profile
    if a * a == b * b:
        sq = a * a * c.total_square_sum()
    else:
        pos, neg = c.signed_square_sums()
        sq = a * a * pos + b * b * neg
    return sq.clamp(min=0).sqrt()


def factored_max(c, profile: Profile) -> torch.Tensor:
    """``max_i f(c_u)_i``: ``max(f(M), f(m))`` for the extreme entries ``M, m`` (f monotone or convex);
    ``-min|c|`` for ``f = -|x|``."""
    if profile == (-1, -1):
        return -c.min_abs()
    hi, lo = c.extremes()
    return torch.maximum(apply_profile(hi, profile), apply_profile(lo, profile))


def factored_min(c, profile: Profile) -> torch.Tensor:
    """``min_i f(c_u)_i``: ``min(f(M), f(m))`` (f monotone or concave); ``min|c|`` for ``f = |x|``."""
    if profile == (1, 1):
        return c.min_abs()
    hi, lo = c.extremes()
    return torch.minimum(apply_profile(hi, profile), apply_profile(lo, profile))


ClosedForm = Callable[[Factored, Profile], Optional[torch.Tensor]]
