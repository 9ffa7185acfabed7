"""COCO segmentation masks without pycocotools: compressed and uncompressed RLE decoded exactly, polygons
rasterised exactly as pycocotools' ``rleFrPoly`` does, and the union of a class's instances built from their runs.

Every segmentation is checked first (an :class:`~extagg.errors.InputError` naming the field); cost is bounded by
the image: a polygon edge costs at most the image's width in steps however far it reaches outside the image, and
a union costs the instances' runs plus one pass over the image.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ..errors import InputError
from .fields import Where


def rle_counts_from_string(s: Union[str, bytes], limit: Optional[int] = None) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``: 6-bit LEB128-like, chars 48..111); with
    ``limit``, a count outside 0..limit is an error (found before anything of that size is made)."""
    if isinstance(s, bytes):
        s = s.decode("ascii", errors="replace")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise InputError(f"truncated compressed RLE string {s[:40]!r}")
            if k > 13:
                raise InputError(f"compressed RLE string {s[:40]!r} holds a count of more than 64 bits")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"invalid character {s[p]!r} in compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if limit is not None and not 0 <= x <= limit:
            raise InputError(f"compressed RLE string {s[:40]!r} holds the count {x}, outside 0..{limit}")
        counts.append(x)
    return counts


def _checked_counts(counts: Sequence, height: int, width: int) -> list[int]:
    area = height * width
    out = []
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= area:
            raise InputError(f"RLE count {str(c)[:40]!r} is not a whole number in 0..height*width = {area}")
        out.append(c)
    if sum(out) != area:
        raise InputError(f"RLE counts sum to {sum(out)}; expected height*width = {area}")
    return out


def rle_decode(counts: Sequence[int], height: int, width: int) -> torch.Tensor:
    """(H, W) bool mask of column-major run lengths (first run is background)."""
    c = torch.as_tensor(_checked_counts(counts, height, width), dtype=torch.long)
    values = (torch.arange(len(c)) % 2).bool()
    flat = torch.repeat_interleave(values, c)
    return flat.reshape(width, height).t().contiguous()


MAX_COORDINATE = 1e7
"""Largest absolute polygon coordinate accepted (pixels)."""


def polygon_rle_counts(xy: Sequence[float], height: int, width: int) -> list[int]:
    """Run lengths of a polygon ``[x0, y0, x1, y1, ...]``, equal to pycocotools ``rleFrPoly``.

    ``rleFrPoly`` walks every point of every edge at 5x resolution and keeps only the steps that cross a pixel
    column's centre inside the image; this port visits just those crossings (a step along x for flat edges, a
    bisection over the edge for steep ones), so its cost is bounded by the image's width per edge, however far the
    polygon reaches outside the image, with the same arithmetic at each crossing.
    """
    k = len(xy) // 2
    if k < 1:
        return [height * width]
    scale = 5.0
    x = [int(scale * xy[2 * j] + 0.5) for j in range(k)] + [0]
    y = [int(scale * xy[2 * j + 1] + 0.5) for j in range(k)] + [0]
    x[k], y[k] = x[0], y[0]
    a: list[int] = []

    def cross(u: int, v: int) -> None:
        """The step from column u to u + 1 (u = 5 c + 2: pixel column c's centre) at height v (the lower end)."""
        yd = (float(v) + 0.5) / scale - 0.5
        yd = 0.0 if yd < 0 else (float(height) if yd > height else yd)
        a.append((u - 2) // 5 * height + int(math.ceil(yd)))

    def centres(lo: int, hi: int) -> range:
        """The u = 5 c + 2 (c in 0..width-1) with lo <= u <= hi."""
        first = max(0, -((2 - lo) // 5))
        last = min(width - 1, (hi - 2) // 5)
        return range(5 * first + 2, 5 * last + 3, 5) if first <= last else range(0)

    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:  # points (xs + t, int(ys + s t + 0.5)), t = 0..dx: every step moves one column
            s = (ye - ys) / dx if dx else 0.0
            for u in centres(xs, xe - 1):
                t = u - xs
                cross(u, min(int(ys + s * t + 0.5), int(ys + s * (t + 1) + 0.5)))
        else:  # points (int(xs + s t + 0.5), ys + t), t = 0..dy: columns change monotonically, at most one a step
            s = (xe - xs) / dy
            rising = xe > xs
            for u in centres(min(xs, xe), max(xs, xe) - 1):
                lo, hi = 1, dy  # the first t + 1 whose column is past u (rising) or at u (falling)
                while lo < hi:
                    mid = (lo + hi) // 2
                    col = int(xs + s * mid + 0.5)
                    if (col >= u + 1) if rising else (col <= u):
                        hi = mid
                    else:
                        lo = mid + 1
                cross(u, ys + lo - 1)
    a.append(height * width)
    a.sort()
    prev = 0
    for j in range(len(a)):
        a[j], prev = a[j] - prev, a[j]
    b = [a[0]]
    j = 1
    while j < len(a):
        if a[j] > 0:
            b.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                b[-1] += a[j]
                j += 1
    return b


def segmentation_counts(segmentation, height: int, width: int, where: Optional[Where] = None) -> list[list[int]]:
    """The checked run lengths of one COCO ``segmentation`` (polygon list, uncompressed or compressed RLE), one
    list per polygon or RLE."""
    where = where or Where("(segmentation)")
    try:
        if isinstance(segmentation, list):
            out = []
            for i, poly in enumerate(segmentation):
                if not isinstance(poly, list) or len(poly) % 2:
                    raise InputError(f"polygon {i} must be a list of x, y pairs, got {str(poly)[:60]!r}")
                for v in poly:
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                            or abs(v) > MAX_COORDINATE:
                        raise InputError(f"polygon {i} has the coordinate {str(v)[:40]!r}; expected finite numbers "
                                         f"within +-{MAX_COORDINATE:g}")
                out.append(polygon_rle_counts(poly, height, width))
            return out
        if isinstance(segmentation, dict) and "counts" in segmentation:
            size = segmentation.get("size", [height, width])
            if not isinstance(size, (list, tuple)) or len(size) != 2 or any(
                    isinstance(v, bool) or not isinstance(v, int) for v in size):
                raise InputError(f"RLE size must be [height, width], got {str(size)[:40]!r}")
            if tuple(size) != (height, width):
                raise InputError(f"RLE size {tuple(size)} differs from the image size {(height, width)}")
            counts = segmentation["counts"]
            if isinstance(counts, (str, bytes)):
                counts = rle_counts_from_string(counts, height * width)
            elif not isinstance(counts, list):
                raise InputError(f"RLE counts must be a list or a compressed string, got {type(counts).__name__}")
            return [_checked_counts(counts, height, width)]
    except InputError as e:
        raise where.error("segmentation", str(e)) from None
    raise where.error("segmentation", f"unsupported {str(segmentation)[:60]!r}: expected polygons or RLE")


def annotation_mask(segmentation, height: int, width: int) -> torch.Tensor:
    """(H, W) bool mask of one COCO ``segmentation``: polygon list, uncompressed or compressed RLE."""
    union = MaskUnion(height, width)
    union.add(segmentation_counts(segmentation, height, width))
    return union.mask()


class MaskUnion:
    """The union of many run-length masks of one (H, W) image, from their foreground runs: memory and time are the
    runs plus one pass over the image, however many instances there are."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, runs: list[list[int]]) -> None:
        for counts in runs:
            pos = 0
            for i, c in enumerate(counts):
                if i % 2 and c:
                    self.starts.append(pos)
                    self.ends.append(pos + c)
                pos += c

    def mask(self) -> torch.Tensor:
        diff = torch.zeros(self.height * self.width + 1, dtype=torch.int64)
        ones = torch.ones(len(self.starts), dtype=torch.int64)
        diff.index_add_(0, torch.tensor(self.starts, dtype=torch.long), ones)
        diff.index_add_(0, torch.tensor(self.ends, dtype=torch.long), -ones)
        return (diff.cumsum(0)[:-1] > 0).reshape(self.width, self.height).t().contiguous()
