"""Per-location contributions, the output of phase 1, and the closed forms of phase 2 on them.

An extractor returns one of two descriptions of ``c_u``, the contribution of location ``u``:

* :class:`Dense`: the vector itself, ``values`` of shape ``(N, T, D, h, w)`` (T: targets per image).
* :class:`Factored`: a block outer product, ``c_u = concat_b vec(g_u^b (p_u^b)^T)``, where ``g_u^b`` is block ``b``
  of the gradient at the layer's output (``g``, shape ``(N, T, C_g, h, w)``) and ``p_u^b`` the matching block of
  the patch of ``x`` that a convolution with the given :class:`PatchGeometry` reads at ``u``. Identity and real
  convolutions (grouped ones as one block per group) take this form; ``c_u`` is never materialised for the
  builtin filters and aggregators. Patch statistics come from pooling, not ``unfold``.

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


@attrs.frozen
class Dense:
    """A contribution given in full: ``values`` has shape ``(N, T, D, h, w)``."""

    values: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, t, _, h, w = self.values.shape
        return n, t, h, w


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
        if isinstance(conv.padding, str):
            if conv.padding != "valid":
                raise ValueError(f"conv padding={conv.padding!r} is not supported; use explicit integer padding")
            ph = pw = 0
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
class Factored:
    """A block outer product ``g_u (p_u)^T``; see the module docstring. Statistics are computed lazily and cached."""

    g: torch.Tensor  # (N, T, C_g, h, w)
    x: torch.Tensor  # (N, C_x, H, W): the tensor the patches are read from
    geometry: PatchGeometry
    _cache: dict = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        groups = self.geometry.groups
        if self.g.shape[2] % groups or self.x.shape[1] % groups:
            raise ValueError(f"channels {self.g.shape[2]}, {self.x.shape[1]} not divisible by groups={groups}")
        grid = tuple(self.patch_max(IDENTITY).shape[-2:])
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

    # ---- gradient side: (N, T, B, h, w)
    def _g_blocks(self) -> torch.Tensor:
        n, t, c, h, w = self.g.shape
        return self.g.reshape(n, t, self.blocks, c // self.blocks, h, w)

    def g_sum(self, profile: Profile, square: bool = False) -> torch.Tensor:
        key = ("gs", profile, square)
        if key not in self._cache:
            v = apply_profile(self._g_blocks(), profile)
            self._cache[key] = (v * v if square else v).sum(3)
        return self._cache[key]

    def g_max(self, profile: Profile) -> torch.Tensor:
        key = ("gm", profile)
        if key not in self._cache:
            self._cache[key] = apply_profile(self._g_blocks(), profile).amax(3)
        return self._cache[key]

    # ---- patch side: (N, 1, B, h, w), from pooling the padded input
    def _grouped(self, v: torch.Tensor, reduce: str) -> torch.Tensor:
        n, c, hh, ww = v.shape
        v = v.reshape(n, self.blocks, c // self.blocks, hh, ww)
        return v.sum(2) if reduce == "sum" else v.amax(2)

    def patch_sum(self, profile: Profile, square: bool = False) -> torch.Tensor:
        """Sum over each block's patch of ``f(x)`` (or ``f(x)**2``); padding counts as zeros only in 'zeros' mode."""
        key = ("ps", profile, square)
        if key not in self._cache:
            geo = self.geometry
            v = apply_profile(geo.pad(self.x), profile)
            v = self._grouped(v * v if square else v, "sum")
            ones = v.new_ones(self.blocks, 1, *geo.kernel)
            s = F.conv2d(v, ones, stride=geo.stride, dilation=geo.dilation, groups=self.blocks)
            self._cache[key] = s.unsqueeze(1)
        return self._cache[key]

    def patch_max(self, profile: Profile) -> torch.Tensor:
        key = ("pm", profile)
        if key not in self._cache:
            geo = self.geometry
            v = self._grouped(apply_profile(geo.pad(self.x), profile), "max")
            m = F.max_pool2d(v, geo.kernel, stride=geo.stride, dilation=geo.dilation)
            self._cache[key] = m.unsqueeze(1)
        return self._cache[key]

    def extremes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per location, the largest and smallest entry of ``c_u`` (from the four corner products per block)."""
        key = ("ext",)
        if key not in self._cache:
            gmax, gmin = self.g_max(IDENTITY), -self.g_max((-1, 1))
            pmax, pmin = self.patch_max(IDENTITY), -self.patch_max((-1, 1))
            corners = torch.stack([gmax * pmax, gmax * pmin, gmin * pmax, gmin * pmin])
            self._cache[key] = (corners.amax(0).amax(2), corners.amin(0).amin(2))
        return self._cache[key]

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


# ----------------------------------------------------------------------------- closed forms for builtins
def factored_sum(c: Factored, profile: Profile) -> torch.Tensor:
    """``sum_i f(c_u)_i`` for the sign-linear ``f`` of ``profile``, from block sums."""
    a, b = profile
    if a == -b:
        return a * (c.g_sum(IDENTITY) * c.patch_sum(IDENTITY)).sum(2)
    if a == b:
        return a * (c.g_sum((1, 1)) * c.patch_sum((1, 1))).sum(2)
    gp, gn = c.g_sum((1, 0)), c.g_sum((0, 1))
    pp, pn = c.patch_sum((1, 0)), c.patch_sum((0, 1))
    return (a * (gp * pp + gn * pn) + b * (gp * pn + gn * pp)).sum(2)


def factored_norm(c: Factored, profile: Profile) -> torch.Tensor:
    """``||f(c_u)||_2`` from block sums of squares of positive and negative parts."""
    a, b = profile
    if a * a == b * b:
        sq = (c.g_sum(IDENTITY, True) * c.patch_sum(IDENTITY, True)).sum(2) * (a * a)
    else:
        gp, gn = c.g_sum((1, 0), True), c.g_sum((0, 1), True)
        pp, pn = c.patch_sum((1, 0), True), c.patch_sum((0, 1), True)
        sq = (a * a * (gp * pp + gn * pn) + b * b * (gp * pn + gn * pp)).sum(2)
    return sq.clamp(min=0).sqrt()


def _min_abs(c: Factored) -> torch.Tensor:
    """``min_i |c_u|_i = min |g| * min |p|`` per block, minimised over blocks."""
    return (c.g_max((-1, -1)) * c.patch_max((-1, -1))).amin(2)  # (-min|g|) * (-min|p|)


def factored_max(c: Factored, profile: Profile) -> torch.Tensor:
    """``max_i f(c_u)_i``: ``max(f(M), f(m))`` for the extreme entries ``M, m`` (f monotone or convex);
    for ``f = -|x|`` it is ``-min|g| min|p|``."""
    if profile == (-1, -1):
        return -_min_abs(c)
    hi, lo = c.extremes()
    return torch.maximum(apply_profile(hi, profile), apply_profile(lo, profile))


def factored_min(c: Factored, profile: Profile) -> torch.Tensor:
    """``min_i f(c_u)_i``: ``min(f(M), f(m))`` (f monotone or concave); for ``f = |x|`` it is ``min|g| min|p|``."""
    if profile == (1, 1):
        return _min_abs(c)
    hi, lo = c.extremes()
    return torch.minimum(apply_profile(hi, profile), apply_profile(lo, profile))


ClosedForm = Callable[[Factored, Profile], Optional[torch.Tensor]]
