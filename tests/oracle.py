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


def contribution(name: str, k: int, module, x_in, a, g) -> torch.Tensor:
    """The materialised per-location contribution (N, T, D, h, w) of extractor ``name``."""
    n, t, c, h, w = g.shape
    if name in ("bias", "bn-bias"):
        return g
    if name == "scaling":
        return a[:, None] * g
    if name == "pooled-scaling":
        return a[:, None] * g.mean((3, 4), keepdim=True)
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
    c = contribution(method.extractor.name, k, net[index], x_in, a, g)
    for f in method.pre:
        c = FILTERS[f.name](c)
    m = AGGREGATORS[method.aggregator.name](c)
    for f in method.post:
        m = FILTERS[f.name](m)
    return m
