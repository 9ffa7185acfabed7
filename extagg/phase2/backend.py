"""The one place phase 2 chooses between the native fused kernels (:mod:`extagg.native`) and PyTorch.

Every function here returns the same typed result whichever path runs (keys are :class:`Side` or
:class:`Stat` members), so the forms never see the kernels' string names or output order. :data:`SIDES` is the
single list of side statistics in the kernels' output order (``native_kernels.c`` ``S_SUM`` ... ``S_MIN_ABS``,
checked against the C source by a test). The PyTorch paths are the kernels' oracle in the tests.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import native
from .depthwise import one_per_block_stats
from .sides import SideStats
from .stats import Side, Stat
from .sweeps import accumulate, chunks

SIDES: tuple[Side, ...] = tuple(Side)
"""The side statistics in the native kernels' output order."""
_DEPTHWISE = {"sum": (Stat.SUM, None), "sq": (Stat.SQ, None), "signed.0": (Stat.SIGNED, 0),
              "signed.1": (Stat.SIGNED, 1), "signed_sq.0": (Stat.SIGNED_SQ, 0), "signed_sq.1": (Stat.SIGNED_SQ, 1),
              "extremes.0": (Stat.EXTREMES, 0), "extremes.1": (Stat.EXTREMES, 1), "min_abs": (Stat.MIN_ABS, None)}
"""The depthwise kernel's outputs (``native.DEPTHWISE_NAMES``) as contribution statistics."""


def fused(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels take these tensors (then every statistic costs one read of them)."""
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != dtype or (t.requires_grad and torch.is_grad_enabled()):
            return False
    return native.available()


def _native_sides(v, shape, dim, want, **factors) -> Optional[dict]:
    out = native.side_stats(v, shape, dim, {s.value for s in want}, **factors)
    return None if out is None else {Side(name): value for name, value in out.items()}


def prefetch_sides(side: SideStats, sides) -> None:
    """Fill ``side`` with the statistics ``sides`` it does not know yet, from one read of its tensor (native) or
    one sweep over chunks of the reduced axis (PyTorch); no full-size temporaries either way."""
    if side.single:
        return
    parts = side.parts
    learn = not parts.sign_known  # the kernels learn the sign in the same read (no pass of its own)
    want = {s for s in sides if not side.known(s)} if learn else side.unknown(sides)
    if not want:
        return
    computed = _native_sides(parts.v, side.shape, side.dim, want | ({Side.MIN} if learn else set()))
    if computed is not None:
        if learn:
            parts.learn_sign(computed[Side.MIN])
        side.absorb(computed)
        return
    want = side.unknown(want)
    if not want:
        return
    if Side.SQ in want and not parts.nonneg and {Side.POS_SQ, Side.NEG_SQ} <= want:
        want.discard(Side.SQ)  # the sum of the two, below
    acc: dict = {}
    for _, c in chunks(side.view(), side.dim):
        accumulate(acc, c, side.dim, want, parts.nonneg)
    if Side.POS_SQ in acc and Side.NEG_SQ in acc and not side.known(Side.SQ):
        acc.setdefault(Side.SQ, acc[Side.POS_SQ] + acc[Side.NEG_SQ])
    side.absorb(acc)


def product_sides(x: torch.Tensor, shape, sides, *, other: Optional[torch.Tensor] = None,
                  scale: Optional[torch.Tensor] = None) -> dict:
    """The side statistics ``sides`` along axis 2 of the (N, T, D, h, w) product ``x * other * scale`` (``x``
    (N, D, h, w) broadcast over T; ``other`` of ``shape``; ``scale`` (N, T, D)), without forming it: one native
    read, or a PyTorch sweep over chunks of D that forms one chunk of the product at a time."""
    shape = tuple(shape)
    computed = _native_sides(x, shape, 2, set(sides), other=other, scale=scale)
    if computed is not None:
        return computed
    acc: dict = {}
    for start, xc in chunks(x, 1):
        size = xc.shape[1]
        chunk = xc[:, None]
        if other is not None:
            chunk = chunk * other[:, :, start:start + size]
        if scale is not None:
            chunk = chunk * scale[:, :, start:start + size, None, None]
        accumulate(acc, chunk.expand(*shape[:2], *chunk.shape[2:]), 2, set(sides), nonneg=False)
    return acc


def depthwise_stats(g: torch.Tensor, x: torch.Tensor, geometry, stats, *, pool: Callable,
                    signs: Callable[[], tuple[bool, bool]]) -> dict:
    """The contribution statistics ``stats`` of a depthwise factored contribution (``g`` (N, T, C, h, w), patches
    of ``x`` (N, C, H, W) read with ``geometry``), keyed by :class:`Stat` (pairs as tuples; None: exactly zero).
    The native kernel computes all of them in one read; the PyTorch path (:mod:`extagg.phase2.depthwise`) the
    ones asked for, with ``pool`` for patch statistics and ``signs()`` = (g >= 0, x >= 0) everywhere."""
    out = native.depthwise_stats(g, x, geometry)
    if out is not None:
        typed: dict = {}
        for name, value in out.items():
            stat, index = _DEPTHWISE[name]
            if index is None:
                typed[stat] = value
            else:
                typed.setdefault(stat, [None, None])[index] = value
        return {stat: tuple(v) if isinstance(v, list) else v for stat, v in typed.items()}
    g_nonneg, x_nonneg = signs()
    return one_per_block_stats(g, x, geometry.groups, pool, stats, g_nonneg=g_nonneg, x_nonneg=x_nonneg)

