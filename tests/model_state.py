"""The one check that a call left the user's model exactly as it was: parameters and buffers (bit for bit, the
same tensor objects), requires_grad flags, ``.grad`` (the same tensor, the same values), train/eval modes, every
kind of hook, and in-place flags of activations."""
from __future__ import annotations

import torch
from torch import nn

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def snapshot(model: nn.Module) -> dict:
    params = dict(model.named_parameters())
    return {
        "params": {n: (id(p), p.detach().clone()) for n, p in params.items()},
        "buffers": {n: (id(b), b.detach().clone()) for n, b in model.named_buffers()},
        "flags": {n: p.requires_grad for n, p in params.items()},
        "grads": {n: (p.grad, None if p.grad is None else p.grad.clone()) for n, p in params.items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: tuple(list(getattr(m, h, {})) for h in HOOKS) for n, m in model.named_modules()},
        "inplace": {n: getattr(m, "inplace", None) for n, m in model.named_modules()},
    }


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    for kind in ("params", "buffers"):
        assert after[kind].keys() == before[kind].keys(), kind
        for name, (ident, value) in before[kind].items():
            assert after[kind][name][0] == ident, f"{kind} {name} was replaced"
            assert torch.equal(after[kind][name][1], value), f"{kind} {name} changed"
    for name, (grad, value) in before["grads"].items():
        now = after["grads"][name][0]
        assert now is grad, f".grad of {name} was replaced"
        assert grad is None or torch.equal(now, value), f".grad of {name} changed"
    for key in ("flags", "training", "hooks", "inplace"):
        assert after[key] == before[key], key
