"""The ``layers`` argument of :func:`extagg.saliency`, resolved to layer names and their modules.

Accepted, alone or in a sequence, in any mix: ``named_modules()`` names, ``"input"``, ``"name@k"`` (the k-th
call of a module called several times), layer patterns (``"layer*"``, ``"features.*"``, ``"layer3.**"``; ``*``
stops at a dot, ``**`` crosses dots: :mod:`extagg.layer_patterns`), the named groups of :mod:`extagg.layer_select`
(``"stages"``, ``"blocks"``, ``"spatial"``, ``"last"``, or ``"group:NAME"``), and
module objects of the model (``model.layer4``, as Captum, TorchCAM and pytorch-grad-cam users pass them).
Patterns and groups cost one no-grad forward pass on the first image (the model left unchanged); names and
module objects cost none. Unknown names raise :class:`~extagg.errors.UnknownNameError` with a "did you mean".
"""
from __future__ import annotations

from typing import Optional

import torch

from .capture import resolve_layers
from .errors import InputError
from .layer_select import select_layers
from .util import as_list


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    """The ``named_modules()`` name of ``module`` inside ``model``; an :class:`InputError` if it is not one."""
    if module is model:
        raise InputError(f"layers: the model itself ({type(model).__name__}) is not a layer; pass one of its "
                         "submodules (e.g. model.layer4) or 'input' for the image")
    for name, m in model.named_modules():
        if m is module and name:
            return name
    raise InputError(f"layers: the module {type(module).__name__} passed as a layer is not a submodule of the "
                     f"model ({type(model).__name__}); pass one of model.named_modules() or its name")


def resolve_requested_layers(model: torch.nn.Module, layers, example: Optional[torch.Tensor] = None,
                             forward_kwargs: Optional[dict] = None
                             ) -> tuple[list[str], dict[str, Optional[torch.nn.Module]]]:
    """``(names, {name: module or None for the input})`` for the ``layers`` argument, in the order given,
    without duplicates; ``example`` is the batch a pattern or group's forward pass uses (its first image; the
    whole batch with ``forward_kwargs``, which may be batched like it)."""
    items = as_list(layers, "layers", atoms=(str, torch.nn.Module))
    spelled = []
    for item in items:
        if isinstance(item, torch.nn.Module):
            spelled.append(module_name(model, item))
        elif isinstance(item, str):
            spelled.append(item)
        else:
            raise InputError(f"layers are names, patterns, groups or modules of the model, got "
                             f"{type(item).__name__} {item!r}")
    if example is not None and not forward_kwargs:
        example = example[:1]  # keyword arguments may be batched like the images: then the whole batch runs
    names = select_layers(model, spelled, example, forward_kwargs)
    return names, resolve_layers(model, names)
