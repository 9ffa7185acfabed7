"""Pooling pixel statistics over convolution patches (separable slice reductions, or one ones-kernel conv)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMALL_MAP = 1 << 21
"""Up to this many elements, sum pooling by slice additions beats a ones-kernel convolution (nearly fixed cost)."""


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


def pool_sum(t: torch.Tensor, kernel, stride, dilation, padding=(0, 0)) -> torch.Tensor:
    """Sum over each window of a (N, B, H, W) map, zero-padded by ``padding`` (top/bottom, left/right)."""
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
