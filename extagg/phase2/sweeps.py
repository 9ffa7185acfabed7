"""PyTorch building blocks of the fused statistic sweeps: chunks of an axis, folding chunk results, and products
reduced through one reusable scratch buffer."""
from __future__ import annotations

from typing import Optional

import torch

from .stats import Side

CHUNK = 1 << 19
"""Elements per chunk in fused statistic sweeps (2 MiB in float32: a chunk's temporaries stay in cache)."""


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


def fold_into(acc: dict, key, value: torch.Tensor, op=torch.add) -> None:
    """Fold one chunk's ``value`` into ``acc[key]`` with ``op`` (add for sums, maximum/minimum for extremes)."""
    acc[key] = value if key not in acc else op(acc[key], value, out=acc[key])


def accumulate(acc: dict, c: torch.Tensor, dim: int, want, nonneg: bool) -> None:
    """Fold the side statistics ``want`` of chunk ``c`` along ``dim`` into ``acc`` (sums add, extremes compare)."""
    if Side.SUM in want:
        fold_into(acc, Side.SUM, c.sum(dim))
    if Side.SQ in want:
        fold_into(acc, Side.SQ, (c * c).sum(dim))
    if want & {Side.POS, Side.NEG, Side.POS_SQ, Side.NEG_SQ}:
        pos = c if nonneg else c.clamp(min=0)
        neg = None if nonneg else pos - c
        for name, part, square in ((Side.POS, pos, False), (Side.NEG, neg, False), (Side.POS_SQ, pos, True),
                                   (Side.NEG_SQ, neg, True)):
            if name in want and part is not None:
                fold_into(acc, name, (part * part if square else part).sum(dim))
    if Side.MAX in want:
        fold_into(acc, Side.MAX, c.amax(dim), torch.maximum)
    if Side.MIN in want:
        fold_into(acc, Side.MIN, c.amin(dim), torch.minimum)
    if Side.MIN_ABS in want:
        fold_into(acc, Side.MIN_ABS, (c if nonneg else c.abs()).amin(dim), torch.minimum)


class Scratch:
    """One reusable buffer for elementwise temporaries of a given shape (never holds a result)."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf: Optional[torch.Tensor] = None

    def get(self, shape, like: torch.Tensor) -> torch.Tensor:
        if self._buf is None or self._buf.shape != tuple(shape) or self._buf.dtype != like.dtype:
            self._buf = torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
        return self._buf


def fold(scratch: Scratch, op: str, *terms, scale: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``op`` ("sum", "amax", "amin") over axis 2 of ``scale * sum_k sign_k a_k b_k`` for terms ``(a, b[, sign])``
    (broadcasting); a None factor is an exact zero, and None is returned if every term is. The elementwise part
    runs in ``scratch``."""
    terms = [t for t in terms if t[0] is not None and t[1] is not None]
    if not terms:
        return None
    shape = tuple(max(sizes) for sizes in zip(*(t.shape for term in terms for t in term[:2])))
    buf = scratch.get(shape, terms[0][0])
    (a, b, *sign), rest = terms[0], terms[1:]
    torch.mul(a, b, out=buf)
    if sign and sign[0] < 0:
        buf.neg_()
    for a, b, *sign in rest:
        buf.addcmul_(a, b, value=sign[0] if sign else 1)
    if scale is not None:
        buf.mul_(scale)
    return getattr(buf, op)(2)
