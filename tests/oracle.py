"""Straightforward definitions, written independently of extagg, for sequential test networks.

Activations and gradients come from splitting the network at the layer (no hooks); contributions are
materialised with ``unfold`` and explicit outer products; filters and aggregators are plain torch calls.
"""
from __future__ import annotations

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


def rle_fr_poly(xy, height: int, width: int) -> list[int]:
    """pycocotools' ``rleFrPoly`` transcribed as written (every point of every edge at 5x resolution): the
    reference for extagg's bounded-cost polygon rasteriser."""
    import math

    k = len(xy) // 2
    if k < 1:
        return [height * width]
    scale = 5.0
    x = [int(scale * xy[2 * j] + 0.5) for j in range(k)] + [0]
    y = [int(scale * xy[2 * j + 1] + 0.5) for j in range(k)] + [0]
    x[k], y[k] = x[0], y[0]
    u, v = [], []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(ys + s * t + 0.5))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(xs + s * t + 0.5))
    a = []
    for j in range(1, len(u)):
        if u[j] != u[j - 1]:
            xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
            xd = (xd + 0.5) / scale - 0.5
            if math.floor(xd) != xd or xd < 0 or xd > width - 1:
                continue
            yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
            yd = (yd + 0.5) / scale - 0.5
            yd = 0.0 if yd < 0 else (float(height) if yd > height else yd)
            a.append(int(xd) * height + int(math.ceil(yd)))
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
