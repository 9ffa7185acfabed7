"""Per-location statistics of one tensor along one axis, and the patch pooling that turns pixel statistics into
patch statistics. The machinery behind :mod:`extagg.contributions`; nothing here is public API.

A :class:`Parts` holds a tensor with its positive and negative parts, computed at most once and shared by every
statistic that needs them; a nonnegative tensor (a ReLU output) is its own positive part and has no negative
part, which callers see as ``None`` ("exactly zero") and skip. :class:`SideStats` reduces a view of that tensor
along one axis; along an axis of size one the statistics are the parts themselves (no reduction, no copy).
A :class:`Store` shares both between the contributions of one layer, for the layer's own captured tensors only
(temporaries such as ``x * g`` stay private, so nothing is looked up by the id of a freed tensor).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import native

NAMES = native.SIDE_NAMES
"""The side statistics: ``sum``, ``sq``, ``pos``, ``neg``, ``pos_sq``, ``neg_sq``, ``max``, ``min``, ``min_abs``."""
_NONNEG_ALIAS = {"pos": "sum", "pos_sq": "sq", "min_abs": "min"}
CHUNK = 1 << 19
"""Elements per chunk in fused statistic sweeps (2 MiB in float32: a chunk's temporaries stay in cache)."""
_FRESH = ("sq", "pos_sq", "neg_sq", "min_abs")


class Parts:
    """``v`` and, on demand, ``relu(v)``, ``relu(-v)`` and whether ``v >= 0`` everywhere."""

    __slots__ = ("v", "_nonneg", "_pos", "_neg")

    def __init__(self, v: torch.Tensor, nonneg: Optional[bool] = None):
        self.v = v
        self._nonneg = nonneg  # None: checked when first needed
        self._pos = self._neg = None

    @property
    def nonneg(self) -> bool:
        if self._nonneg is None:
            self.learn_sign(self.v)
        return self._nonneg

    @property
    def sign_known(self) -> bool:
        """Whether :attr:`nonneg` is known without a pass over ``v``."""
        return self._nonneg is not None

    def learn_sign(self, minimum: torch.Tensor) -> None:
        """Record whether ``v >= 0`` from ``minimum``, a reduction of ``v``'s entries by min (all of them)."""
        if self._nonneg is None:
            self._nonneg = bool(minimum.amin() >= 0) if minimum.numel() else True

    def pos(self) -> torch.Tensor:
        if self.nonneg:
            return self.v
        if self._pos is None:
            self._pos = self.v.clamp(min=0)
        return self._pos

    def neg(self) -> Optional[torch.Tensor]:
        """``relu(-v)``, or None where ``v >= 0`` everywhere."""
        if self.nonneg:
            return None
        if self._neg is None:
            self._neg = self.pos() - self.v
        return self._neg


class SideStats:
    """Statistics of ``parts.v.reshape(shape)`` along ``dim``, each computed once.

    ``get(name)`` for ``name`` in :data:`NAMES` returns a tensor, or None for a statistic that is exactly zero
    (``neg`` and ``neg_sq`` of a nonnegative tensor).
    """

    __slots__ = ("parts", "shape", "dim", "_out", "_scratch", "_moved")

    def __init__(self, parts: Parts, shape: tuple[int, ...], dim: int):
        self.parts, self.shape, self.dim = parts, tuple(shape), dim
        self._out: dict[str, Optional[torch.Tensor]] = {}
        self._scratch: Optional[torch.Tensor] = None
        self._moved: Optional[torch.Tensor] = None

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.shape)

    @property
    def single(self) -> bool:
        """Whether the reduced axis has one entry: the statistics are then full-size elementwise functions."""
        return self.shape[self.dim] == 1

    def get(self, name: str) -> Optional[torch.Tensor]:
        name = self.resolve(name)
        if name in self._out:
            return self._out[name]
        out = self._compute(name)
        if not (self.single and name in _FRESH):  # full-size fresh results are pooled and cached by the caller
            self._out[name] = out
        return out

    def resolve(self, name: str) -> str:
        """The statistic that ``name`` equals here (for a nonnegative tensor ``pos`` is ``sum``, ...)."""
        if self.parts.nonneg:
            return _NONNEG_ALIAS.get(name, name)
        return name

    def prefetch(self, names) -> None:
        """Compute the statistics ``names`` that are not known yet in one sweep over chunks of the reduced axis
        (about :data:`CHUNK` elements each, so every chunk is read from memory once and stays in cache while all
        its statistics are taken; no full-size temporaries), or in one read by the native kernels where they apply.
        Results equal :meth:`get`'s up to rounding."""
        if self.single:
            return
        learn = not self.parts.sign_known  # the kernels learn the sign in the same read (no pass of its own)
        want = set(names) - set(self._out) if learn else self._unknown(names)
        if not want:
            return
        fused = native.side_stats(self.parts.v, self.shape, self.dim, want | ({"min"} if learn else set()))
        if fused is not None:
            if learn:
                self.parts.learn_sign(fused["min"])
            if self.parts.nonneg:  # exact zeros are None here, and get() looks aliases up under what they equal
                fused.update({name: None for name in ("neg", "neg_sq") if name in fused})
                for alias, same in _NONNEG_ALIAS.items():
                    if alias in fused:
                        fused.setdefault(same, fused[alias])
            self._out.update(fused)
            return
        want = self._unknown(want)
        if not want:
            return
        if "sq" in want and not self.parts.nonneg and {"pos_sq", "neg_sq"} <= want:
            want.discard("sq")  # the sum of the two, below
        v, dim = self._view(self.parts.v), self.dim
        acc: dict[str, torch.Tensor] = {}
        for _, c in chunks(v, dim):
            accumulate(acc, c, dim, want, self.parts.nonneg)
        if "pos_sq" in acc and "neg_sq" in acc and "sq" not in self._out:
            acc.setdefault("sq", acc["pos_sq"] + acc["neg_sq"])
        self._out.update(acc)

    def _unknown(self, names) -> set:
        """The statistics that ``names`` resolve to, less those already known and the exact zeros."""
        want = {self.resolve(n) for n in names} - set(self._out)
        return want - {"neg", "neg_sq"} if self.parts.nonneg else want

    def _reduce(self, fn, a: torch.Tensor, b: Optional[torch.Tensor], op: str) -> torch.Tensor:
        """``op`` of the elementwise ``fn(a, b)`` along the axis, through one reused buffer."""
        if self._scratch is None:
            self._scratch = torch.empty_like(a)
        buf = fn(a, b, out=self._scratch) if b is not None else fn(a, out=self._scratch)
        return getattr(buf, op)(self.dim)

    def _compute(self, name: str) -> Optional[torch.Tensor]:
        parts, dim, single = self.parts, self.dim, self.single
        if parts.nonneg and name in ("neg", "neg_sq"):
            return None
        v = self._view(parts.v)
        if name in ("pos", "neg", "pos_sq", "neg_sq"):
            part = self._view(parts.pos() if name.startswith("pos") else parts.neg())
            if not name.endswith("_sq"):
                return part.squeeze(dim) if single else part.sum(dim)
            if single:
                return (part * part).squeeze(dim)
            return self._reduce(torch.mul, part, part, "sum")
        if name == "sq":
            if single:
                return (v * v).squeeze(dim)
            if not parts.nonneg and "pos_sq" in self._out and "neg_sq" in self._out:
                return self._out["pos_sq"] + self._out["neg_sq"]
            return self._reduce(torch.mul, v, v, "sum")
        if name == "min_abs":
            return v.abs().squeeze(dim) if single else self._reduce(torch.abs, v, None, "amin")
        if single:  # sum, max and min of one entry: the entry itself, one view shared by all three
            return v.squeeze(dim) if name == "sum" else self.get("sum")
        if name == "sum":
            return v.sum(dim)
        if name in ("max", "min"):
            return self._extreme(v, name)
        raise KeyError(name)

    def _extreme(self, v: torch.Tensor, name: str) -> torch.Tensor:
        """amax/amin along the axis; with few entries after the axis (7x7 maps) through a copy that puts it last,
        where the CPU kernels vectorise (several times faster than reducing a middle axis of inner size 49)."""
        inner = 1
        for size in self.shape[self.dim + 1:]:
            inner *= size
        if inner >= 128 or v.device.type != "cpu":
            return v.amax(self.dim) if name == "max" else v.amin(self.dim)
        if self._moved is None:
            self._moved = v.movedim(self.dim, -1).contiguous()
        return self._moved.amax(-1) if name == "max" else self._moved.amin(-1)


def chunk_step(per_index: int) -> int:
    """How many indices of an axis make a chunk of about :data:`CHUNK` elements (at least one), when one index
    spans ``per_index`` elements."""
    return max(1, CHUNK // max(1, per_index))


def chunks(v: torch.Tensor, dim: int):
    """``(start, slice)`` for consecutive slices of ``v`` along ``dim`` of about :data:`CHUNK` elements each."""
    n = v.shape[dim]
    step = chunk_step(v.numel() // max(1, n))
    for start in range(0, n, step):
        yield start, v.narrow(dim, start, min(step, n - start))


def combine(acc: dict, key, value: torch.Tensor, op=torch.add) -> None:
    """Fold one chunk's ``value`` into ``acc[key]`` with ``op`` (add for sums, maximum/minimum for extremes)."""
    acc[key] = value if key not in acc else op(acc[key], value, out=acc[key])


def accumulate(acc: dict, c: torch.Tensor, dim: int, want: set, nonneg: bool) -> None:
    """Fold the statistics ``want`` of chunk ``c`` along ``dim`` into ``acc`` (sums add, extremes compare)."""
    def add(name, r, op=torch.add):
        combine(acc, name, r, op)

    if "sum" in want:
        add("sum", c.sum(dim))
    if "sq" in want:
        add("sq", (c * c).sum(dim))
    if want & {"pos", "neg", "pos_sq", "neg_sq"}:
        pos = c if nonneg else c.clamp(min=0)
        neg = None if nonneg else pos - c
        for name, part, square in (("pos", pos, False), ("neg", neg, False), ("pos_sq", pos, True),
                                   ("neg_sq", neg, True)):
            if name in want and part is not None:
                add(name, (part * part if square else part).sum(dim))
    if "max" in want:
        add("max", c.amax(dim), torch.maximum)
    if "min" in want:
        add("min", c.amin(dim), torch.minimum)
    if "min_abs" in want:
        add("min_abs", (c if nonneg else c.abs()).amin(dim), torch.minimum)


def fold(cache: dict, op: str, *terms, scale: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``op`` ("sum", "amax", "amin") over axis 2 of ``scale * sum_k sign_k a_k b_k`` for terms ``(a, b[, sign])``
    (broadcasting); a None factor is an exact zero, and None is returned if every term is. The elementwise part
    runs in one buffer kept in ``cache`` and reused by later calls of the same shape."""
    terms = [t for t in terms if t[0] is not None and t[1] is not None]
    if not terms:
        return None
    shape = tuple(max(sizes) for sizes in zip(*(t.shape for term in terms for t in term[:2])))
    buf = cache.get("buffer")
    if buf is None or buf.shape != shape:
        a = terms[0][0]
        buf = cache["buffer"] = torch.empty(shape, dtype=a.dtype, device=a.device)
    (a, b, *sign), rest = terms[0], terms[1:]
    torch.mul(a, b, out=buf)
    if sign and sign[0] < 0:
        buf.neg_()
    for a, b, *sign in rest:
        buf.addcmul_(a, b, value=sign[0] if sign else 1)
    if scale is not None:
        buf.mul_(scale)
    return getattr(buf, op)(2)


class Store:
    """Parts and side statistics shared by the contributions of one layer, for ``pinned`` tensors only."""

    def __init__(self, pinned=()):
        self._pinned = {id(t): t for t in pinned if t is not None}
        self._parts: dict[int, Parts] = {}
        self._sides: dict[tuple, SideStats] = {}

    def parts(self, t: torch.Tensor) -> Parts:
        if self._pinned.get(id(t)) is not t:
            return Parts(t)
        if id(t) not in self._parts:
            self._parts[id(t)] = Parts(t)
        return self._parts[id(t)]

    def side(self, t: torch.Tensor, shape: tuple[int, ...], dim: int) -> SideStats:
        """Statistics of ``t.reshape(shape)`` along ``dim``, shared if ``t`` is pinned."""
        if self._pinned.get(id(t)) is not t:
            return SideStats(Parts(t), shape, dim)
        key = (id(t), tuple(shape), dim)
        if key not in self._sides:
            self._sides[key] = SideStats(self.parts(t), shape, dim)
        return self._sides[key]


# ----------------------------------------------------------------------------- pooling over patches
def pad_zeros(t: torch.Tensor, padding) -> torch.Tensor:
    """``F.pad(t, padding)`` (left, right, top, bottom) with zeros, writing only the border (no full fill)."""
    left, right, top, bottom = padding
    h, w = t.shape[-2], t.shape[-1]
    out = t.new_empty((*t.shape[:-2], h + top + bottom, w + left + right))
    out[..., top:top + h, left:left + w] = t
    if top:
        out[..., :top, :] = 0
    if bottom:
        out[..., top + h:, :] = 0
    if left:
        out[..., top:top + h, :left] = 0
    if right:
        out[..., top:top + h, left + w:] = 0
    return out

def _windows(t: torch.Tensor, axis: int, k: int, stride: int, dilation: int):
    """The k shifted, strided views of ``t`` along ``axis`` whose elementwise reduction is a 1-D pool."""
    out = (t.shape[axis] - dilation * (k - 1) - 1) // stride + 1
    lead = (slice(None),) * (axis % t.ndim)
    for a in range(k):
        start = a * dilation
        if stride == 1:
            yield t.narrow(axis, start, out)
        else:
            yield t[lead + (slice(start, start + (out - 1) * stride + 1, stride),)]


def pool_extreme(t: torch.Tensor, kernel, stride, dilation, largest: bool) -> torch.Tensor:
    """Max (or min) over each window of an already padded (..., H, W) map: separable, no indices, no sign flips."""
    op = torch.maximum if largest else torch.minimum
    for axis, k, s, d in ((-2, kernel[0], stride[0], dilation[0]), (-1, kernel[1], stride[1], dilation[1])):
        views = _windows(t, axis, k, s, d)
        acc = next(views)
        if k > 1:
            acc = op(acc, next(views))
            for view in views:
                acc = op(acc, view, out=acc) if acc.is_contiguous() else op(acc, view)
        t = acc
    return t


SMALL_MAP = 1 << 21
"""Up to this many elements, sum pooling by slice additions beats a ones-kernel convolution (nearly fixed cost)."""


def pool_sum(t: torch.Tensor, kernel, stride, dilation, padding=(0, 0)) -> torch.Tensor:
    """Sum over each window of a (N, B, H, W) map, zero-padded by ``padding`` (one ones-kernel depthwise
    convolution)."""
    if tuple(kernel) == (1, 1) and not any(padding):
        return t[..., :: stride[0], :: stride[1]]
    if t.numel() <= SMALL_MAP:
        if any(padding):
            t = pad_zeros(t, (padding[1], padding[1], padding[0], padding[0]))
        for axis, k, s, d in ((-2, kernel[0], stride[0], dilation[0]), (-1, kernel[1], stride[1], dilation[1])):
            views = _windows(t, axis, k, s, d)
            acc = next(views)
            acc = acc + next(views) if k > 1 else acc
            for view in views:
                acc += view
            t = acc
        return t
    b = t.shape[1]
    ones = torch.ones((b, 1, *kernel), dtype=t.dtype, device=t.device)
    return F.conv2d(t, ones, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=b)
