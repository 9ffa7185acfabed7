"""Straightforward definitions, written independently of extagg, for sequential test networks.

Activations and gradients come from splitting the network at the layer (no hooks); contributions are
materialised with ``unfold`` and explicit outer products; filters and aggregators are plain torch calls.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FILTERS = {"relu": lambda x: x.clamp(min=0), "abs": torch.abs, "neg": lambda x: (-x).clamp(min=0)}
AGGREGATORS = {
    "sum": lambda c: c.sum(2),
    "max": lambda c: c.amax(2),
    "min": lambda c: c.amin(2),
    "norm": lambda c: c.pow(2).sum(2).sqrt(),
}


def split_grad(net, x, index: int, targets: torch.Tensor):
    """(input of module index, output a, gradient (N,T,C,h,w) of each target logit w.r.t. a)."""
    x_in = net[:index](x).detach()
    a = net[index](x_in.clone()).detach()
    grads = []
    for t in range(targets.shape[1]):
        leaf = a.clone().requires_grad_(True)
        out = net[index + 1:](leaf.clone())
        score = out.gather(1, targets[:, t:t + 1]).sum()
        grads.append(torch.autograd.grad(score, leaf)[0])
    return x_in, a, torch.stack(grads, 1)


def unfold_same(a: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = a.shape
    return F.unfold(a, k, padding=k // 2).reshape(n, c, k * k, h, w)


GRADIENT_FILTERS = {"signed": lambda g: g, "relu": torch.relu, "abs": torch.abs}


def cam_weights(a, g, gf: str, pool: str, alpha_norm: bool) -> torch.Tensor:
    """(N, T, C, 1, 1) channel weights: Grad-CAM (mean), XGrad-CAM (mass), Grad-CAM++ eq. 19 (alpha)."""
    fg = GRADIENT_FILTERS[gf](g)
    if pool == "mean":
        return fg.mean((3, 4), keepdim=True)
    mass = a.sum((2, 3), keepdim=True)[:, None]
    if pool == "mass":
        return torch.nan_to_num((fg * a[:, None]).sum((3, 4), keepdim=True) / mass, nan=0.0, posinf=0.0, neginf=0.0)
    alpha = torch.nan_to_num(g ** 2 / (2 * g ** 2 + mass * g ** 3), nan=0.0, posinf=0.0, neginf=0.0)
    if alpha_norm:
        total = (alpha * (fg != 0)).sum((3, 4), keepdim=True)
        alpha = torch.where(total != 0, alpha / total, alpha)
    return (alpha * fg).sum((3, 4), keepdim=True)


def contribution(name: str, k: int, module, x_in, a, g, params=None) -> torch.Tensor:
    """The materialised per-location contribution (N, T, D, h, w) of extractor ``name``."""
    n, t, c, h, w = g.shape
    params = params or {}
    if name in ("bias", "bn-bias"):
        return g
    if name == "scaling":
        return a[:, None] * GRADIENT_FILTERS[params.get("g", "signed")](g)
    if name == "pooled-scaling":
        return a[:, None] * cam_weights(a, g, params.get("g", "signed"), params.get("pool", "mean"),
                                        params.get("alpha_norm", False))
    if name == "bias-value":
        if isinstance(module, torch.nn.BatchNorm2d):
            b = module.bias - module.weight * module.running_mean / (module.running_var + module.eps).sqrt()
        else:
            b = module.bias if module.bias is not None else torch.zeros(c, dtype=g.dtype)
        return b.detach()[None, None, :, None, None] * g
    if name == "bn-scale":
        xhat = (x_in - module.running_mean[:, None, None]) / (module.running_var[:, None, None] + module.eps).sqrt()
        return xhat[:, None] * g
    if name in ("conv1x1", "conv3x3", "iconv"):
        p = unfold_same(a, k).reshape(n, 1, 1, -1, h, w)
        return (g[:, :, :, None] * p).reshape(n, t, -1, h, w)
    if name == "dwconv":
        p = unfold_same(a, k)  # (N, C, k*k, h, w)
        return (g[:, :, :, None] * p[:, None]).reshape(n, t, -1, h, w)
    if name == "conv":
        groups = module.groups
        p = F.unfold(x_in, module.kernel_size, module.dilation, module.padding, module.stride)
        p = p.reshape(n, 1, groups, 1, -1, h, w)
        gg = g.reshape(n, t, groups, c // groups, 1, h, w)
        return (gg * p).reshape(n, t, -1, h, w)
    raise KeyError(name)


def method_map(method, net, x, index: int, targets: torch.Tensor) -> torch.Tensor:
    """The map (N, T, h, w) of a parsed extagg Method, from the definitions above."""
    x_in, a, g = split_grad(net, x, index, targets)
    k = {"conv1x1": 1, "conv3x3": 3}.get(method.extractor.name, method.extractor.kwargs.get("k", 3))
    c = contribution(method.extractor.name, k, net[index], x_in, a, g, method.extractor.kwargs)
    for f in method.pre:
        c = FILTERS[f.name](c)
    m = AGGREGATORS[method.aggregator.name](c)
    for f in method.post:
        m = FILTERS[f.name](m)
    return m


def _c_round(value: float) -> int:
    """``(int)(value + 0.5)`` in C: round half up, then truncate toward zero (so -2.7 -> -2, not -3)."""
    return int(value + 0.5)


def _staircase(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """The lattice points COCO traces for the edge a -> b (5x coordinates), in order from a to b: one point per
    unit step along the edge's longer axis, counted from the endpoint nearer the origin on that axis, the other
    coordinate rounded (:func:`_c_round`) from the straight line."""
    steep = abs(b[1] - a[1]) > abs(b[0] - a[0])
    major = 1 if steep else 0
    start, end = (a, b) if a[major] <= b[major] else (b, a)
    n = end[major] - start[major]
    slope = (end[1 - major] - start[1 - major]) / n if n else 0.0
    points = []
    for t in range(n + 1):
        minor = _c_round(start[1 - major] + slope * t)
        points.append((minor, start[1] + t) if steep else (start[0] + t, minor))
    return points if start == a else points[::-1]


def coco_polygon_mask(xy, height: int, width: int) -> np.ndarray:
    """The (height, width) boolean mask of a COCO polygon ``[x0, y0, x1, y1, ...]``, written from COCO's
    documented convention rather than from its code: vertices are snapped to a 5x grid, each edge is traced as a
    staircase of lattice points (:func:`_staircase`), and pixel (r, c) is inside if the traced boundary crosses
    the vertical line through column c's centre an odd number of times at or above the pixel's centre (crossing
    number at pixel centres; a crossing's height is the lower-index row of the step, mapped back to pixels)."""
    mask = np.zeros((height, width), dtype=bool)
    k = len(xy) // 2
    if k < 1:
        return mask
    vertices = [(_c_round(5.0 * xy[2 * j]), _c_round(5.0 * xy[2 * j + 1])) for j in range(k)]
    path: list[tuple[int, int]] = []
    for j in range(k):
        path += _staircase(vertices[j], vertices[(j + 1) % k])
    rows = np.arange(height)
    for (u0, v0), (u1, v1) in zip(path, path[1:]):
        if u0 == u1:
            continue
        left = min(u0, u1)  # the step crosses 5x column left + 1/2: pixel column c's centre if left = 5c + 2
        if (left - 2) % 5 or not 0 <= (left - 2) // 5 < width:
            continue
        top = (min(v0, v1) + 0.5) / 5.0 - 0.5
        mask[:, (left - 2) // 5] ^= rows >= top
    return mask


def column_major_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of ``mask``: alternating runs of 0s and 1s down the columns, 0s first."""
    flat = mask.T.reshape(-1)
    counts, value, run = [], False, 0
    for bit in flat:
        if bool(bit) == value:
            run += 1
        else:
            counts.append(run)
            value, run = not value, 1
    counts.append(run)
    return counts


def coco_polygon_rle(xy, height: int, width: int) -> list[int]:
    """:func:`coco_polygon_mask` as COCO RLE counts: the reference for extagg's bounded-cost polygon rasteriser."""
    return column_major_runs(coco_polygon_mask(xy, height, width))
