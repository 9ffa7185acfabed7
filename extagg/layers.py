"""Layer discovery: the model's modules in execution order, and a sensible default layer."""
from __future__ import annotations

from typing import Optional

import torch

from .guard import preserved


def execution_order(model: torch.nn.Module, images: torch.Tensor,
                    forward_kwargs: Optional[dict] = None) -> list[tuple[str, tuple[int, ...]]]:
    """``(layer name, output shape)`` of every module call in the order they finish during one forward pass.

    Modules called several times appear once per call as ``name@k``; containers appear after their children.
    Runs one no-grad forward pass (``model(images, **forward_kwargs)``); the model is left unchanged.
    """
    order: list[tuple[str, tuple[int, ...]]] = []
    names = {id(m): n for n, m in model.named_modules() if n}
    counts: dict[str, int] = {}

    def hook(module, _args, output):
        name = names[id(module)]
        k = counts.get(name, 0)
        counts[name] = k + 1
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        order.append((name, k, shape))

    with preserved(model), torch.no_grad():
        model.eval()
        handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if n]
        try:
            model(images, **(forward_kwargs or {}))
        finally:
            for h in handles:
                h.remove()
    return [(f"{n}@{k}" if counts[n] > 1 else n, shape) for n, k, shape in order]


def last_spatial_layer(model: torch.nn.Module, images: torch.Tensor) -> str:
    """The last module call whose output is a 4-D map larger than 1x1 (the classic CAM layer)."""
    candidates = [n for n, shape in execution_order(model, images) if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not candidates:
        raise ValueError("the model has no module with a 4-D spatial output; name a layer explicitly")
    return candidates[-1]
