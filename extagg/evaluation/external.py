"""External explainers: maps made by code outside extagg, scored as methods by the one driver.

An explainer is a callable ``(model, x, targets) -> maps``: ``x`` the (N, C, H, W) model inputs on the model's
device, ``targets`` the (N,) explained classes (long, on the same device), ``maps`` an (N, H, W), (N, 1, H, W)
or (N, C, H, W) tensor or array (channels are summed, the maps resized bilinearly to the input). It is scored
under its name at the fixed layer :data:`EXTERNAL_LAYER` (``"external"``) by every metric; a metric that needs
further maps (another class, a randomised copy of the model, a perturbed input) calls it again with that model,
inputs and classes. Every call runs with the model in eval mode inside :func:`extagg.guard.preserved`: the
explainer may register hooks, switch modes or accumulate ``.grad``; the model is left as it was.
:mod:`extagg.interop` wraps Captum and pytorch-grad-cam explainers in this form.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..errors import ExtaggError, InputError

EXTERNAL_LAYER = "external"
"""The layer label of every external explainer's maps (in results, tables and per-image values)."""
Explainer = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Any]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def as_maps(maps, n: int, size: Sequence[int], what: str = "maps") -> torch.Tensor:
    """(N, H, W) float tensor from a tensor or array of (N, H, W), (N, 1, H, W) or (N, C, H, W) (summed over C,
    as Quantus and Captum users' channel attributions are), resized bilinearly to ``size`` if needed."""
    from .common import resize

    if not isinstance(maps, torch.Tensor):
        try:
            maps = torch.as_tensor(maps)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{what} must be a tensor or array of shape (N, H, W), got {type(maps).__name__}") from None
    maps = maps.detach()
    if maps.ndim == 4:
        maps = maps.sum(1)
    if maps.ndim != 3 or maps.shape[0] != n:
        raise InputError(f"{what} must be (N, H, W) or (N, 1, H, W) with N = {n} images, got shape "
                         f"{tuple(maps.shape)}")
    maps = maps.to(torch.float32) if not maps.is_floating_point() else maps
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = resize(maps[:, None], tuple(size))[:, 0]
    return maps


def check_explainers(explainers: Optional[Mapping[str, Explainer]], registry) -> dict[str, Explainer]:
    """``{name: callable}`` checked: names are plain words (a letter, then letters, digits, ``_ . -``) that are
    not extagg methods, values callables. None -> ``{}``."""
    if explainers is None:
        return {}
    if not isinstance(explainers, Mapping):
        raise InputError(f"explainers must be a dict {{name: callable(model, x, targets) -> maps}}, got "
                         f"{type(explainers).__name__}")
    out = {}
    for name, fn in explainers.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError(f"an explainer's name is a plain word such as 'scorecam' or 'captum-ig' (a letter, "
                             f"then letters, digits, '_', '.', '-'), got {name!r}")
        if not callable(fn):
            raise InputError(f"explainer {name!r} must be a callable (model, x, targets) -> maps, got "
                             f"{type(fn).__name__}")
        try:
            registry.canonical(name)
        except ExtaggError:
            pass
        else:
            raise InputError(f"explainer name {name!r} is an extagg method; give the external explainer another "
                             f"name (e.g. 'ext-{name}')")
        out[name] = fn
    return out


def explain_with(fn: Explainer, name: str, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 size: Sequence[int]) -> torch.Tensor:
    """(N, H, W) maps of ``fn`` for (N,) ``targets``, on ``x``'s device; the model in eval mode and restored."""
    from ..guard import preserved

    with preserved(model):
        model.eval()
        made = fn(model, x, targets.to(device=x.device, dtype=torch.long))
    return as_maps(made, x.shape[0], size, what=f"explainer {name!r}").to(x.device)
