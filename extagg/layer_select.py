"""Layer selection by name, pattern or named group: ``select_layers(model, ["stages", "layer4.*"])``.

Names are ``named_modules()`` names, ``"input"`` (the image) and ``name@k`` (the k-th call of a module called
several times per forward pass). A pattern (``*``, ``?``, ``[``) matches module names part by part
(:mod:`extagg.layer_patterns`: ``*`` stops at a dot, ``**`` crosses dots; ``layer*`` is ``layer1`` .. ``layer4``
on a ResNet, ``layer3.**`` every module inside ``layer3``); a module called several
times expands to one ``name@k`` per call, and modules that are never called or return no single tensor (an
attention module's tuple, an unused ``ModuleList``) are left out of what a pattern matches. Named groups, found from the model's structure and one no-grad forward
pass on ``example`` (default: a zero 224x224 RGB image), never from class names:

* ``blocks``: the outermost composite modules held in a plain ``Sequential`` / ``ModuleList`` (ResNet
  bottlenecks ``layer3.1``, EfficientNet ``_blocks.7``, a ViT's encoder blocks, whose (N, L, D) tokens are read
  on the patch grid); for a model without such blocks (VGG), every activation module (``features.3``, the ReLU
  after each conv); for a model without either (Inception v3: no containers, functional ReLUs), the model's own
  composite children (``Mixed_5b``). timm's models have their own stage and block modules (:mod:`extagg.timm_layers`).
* ``stages``: the last block before each change of spatial size, named by its parent ``Sequential`` when it is
  that container's last child (ResNet ``layer1`` .. ``layer4``; EfficientNet ``_blocks.0``, ``_blocks.2``, ...;
  VGG the ReLU before each max-pool, ``features.3, .8, .15, .22, .29``).
* ``spatial``: every module call whose output is a 4-D map larger than 1x1, in execution order.
* ``last``: the last of those (the classic CAM layer).

``group:NAME`` always means the group; a bare group name means the module if the model has a module of that
name whose call returns one tensor (not a ``ModuleList`` that is never called; not in a timm model, whose
``stages`` / ``blocks`` containers the groups replace). Unknown names and patterns that match nothing raise :class:`~extagg.errors.UnknownNameError` with a
"did you mean".
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .capture import INPUT, split_layer
from .errors import InputError, UnknownNameError
from . import timm_layers
from .layer_patterns import is_layer_pattern, layer_filter, layer_match
from .layers import execution_order

GROUPS = ("blocks", "stages", "spatial", "last")
CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList)
ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.GELU, torch.nn.SiLU,
               torch.nn.Hardswish, torch.nn.Mish, torch.nn.PReLU, torch.nn.Tanh, torch.nn.Sigmoid)


def _is_container(m: torch.nn.Module) -> bool:
    return type(m) in CONTAINERS  # exact: Conv2dNormActivation subclasses Sequential but is a block


class _Layout:
    """Module names, parents and the execution order (computed once, lazily)."""

    def __init__(self, model: torch.nn.Module, example: Optional[torch.Tensor], forward_kwargs: Optional[dict] = None):
        self.model = model
        self.example = example
        self.forward_kwargs = forward_kwargs
        self.modules = {n: m for n, m in model.named_modules() if n}
        self._order: Optional[list[tuple[str, tuple[int, ...]]]] = None

    @property
    def order(self) -> list[tuple[str, tuple[int, ...]]]:
        if self._order is None:
            x = self.example
            if x is None:
                p = next(self.model.parameters(), None)
                x = torch.zeros(1, 3, 224, 224, device=p.device if p is not None else "cpu",
                                dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
            self._order = execution_order(self.model, x, self.forward_kwargs)
        return self._order

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{call name: output shape}`` (``()`` for an output that is not one tensor)."""
        return dict(self.order)

    def calls(self, name: str) -> list[str]:
        """``[name]`` for a module called once (or never), ``[name@0, name@1, ...]`` for one called several times."""
        hits = [n for n, _ in self.order if split_layer(n)[0] == name and "@" in n]
        return hits or [name]

    def spatial(self) -> list[str]:
        return [n for n, s in self.order if len(s) == 4 and s[-1] * s[-2] > 1]

    def blocks(self) -> list[str]:
        found: list[str] = []
        for name, m in self.modules.items():
            parent = self.modules.get(name.rpartition(".")[0]) if "." in name else self.model
            if parent is None or not _is_container(parent) or _is_container(m) or not any(True for _ in m.children()):
                continue
            if any(name.startswith(b + ".") for b in found):
                continue
            found.append(name)
        if not found:
            found = [n for n, m in self.modules.items() if isinstance(m, ACTIVATIONS)]
        if not found:  # no containers, functional activations (Inception v3): the model's composite children
            found = [n for n, m in self.model.named_children() if any(True for _ in m.children())]
        position = {n: i for i, (n, _) in enumerate(self.order)}
        shapes = self.shapes
        out = [c for n in found for c in self.calls(n) if len(shapes.get(c, ())) in (3, 4)]  # maps, token sequences
        return sorted(out, key=position.__getitem__)

    def stages(self) -> list[str]:
        shapes = self.shapes
        blocks = self.blocks()
        ends = [b for i, b in enumerate(blocks) if i + 1 == len(blocks) or shapes[blocks[i + 1]][-2:] != shapes[b][-2:]]
        return [self._outermost(b, blocks, shapes) for b in ends]

    def _outermost(self, name: str, blocks: list[str], shapes: dict) -> str:
        """Walk up while ``name`` is the last child of a plain Sequential (the same output tensor) whose blocks
        all share its spatial size (``layer1.2`` -> ``layer1``, but not up to a trunk spanning all stages)."""
        size = shapes[name][-2:]
        while "." in name and "@" not in name:
            parent_name, _, child = name.rpartition(".")
            parent = self.modules.get(parent_name)
            if parent is None or type(parent) is not torch.nn.Sequential or list(parent._modules)[-1] != child:
                break
            inside = [b for b in blocks if b.startswith(parent_name + ".")]
            if any(shapes[b][-2:] != size for b in inside):
                break
            name = parent_name
        return name

    def group(self, name: str) -> list[str]:
        known = timm_layers.group(self.model, name, self.shapes)  # timm's stage and block modules
        if known is not None:
            return known
        if name == "spatial":
            return self.spatial()
        if name == "last":
            found = self.spatial()
            return found[-1:]
        return self.blocks() if name == "blocks" else self.stages()


def select_layers(model: torch.nn.Module, patterns: Union[str, Sequence[str]],
                  example: Optional[torch.Tensor] = None, forward_kwargs: Optional[dict] = None) -> list[str]:
    """Layer names for :func:`extagg.saliency` from names, patterns (``*`` within a dotted part, ``**`` across
    parts) and groups, in the order given,
    without duplicates.

    :param patterns: e.g. ``["input", "stages", "_conv_head"]``, ``"layer4.*"``, ``"group:blocks"``.
    :param example: an input batch for the forward pass that groups and patterns need (shapes, repeated calls).
    :param forward_kwargs: the model's other keyword arguments for that pass.
    """
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    if not items or any(not isinstance(p, str) or not p.strip() for p in items):
        raise InputError(f"layers must be a non-empty string or list of non-empty strings, got {patterns!r}")
    layout = _Layout(model, example, forward_kwargs)
    known = [INPUT, *layout.modules]
    out: list[str] = []
    for raw in items:
        p = raw.strip()
        if p.startswith("group:") or (p in GROUPS and (p not in layout.modules or timm_layers.is_timm(model)
                                                       or not layout.shapes.get(p))):  # a module never called
            group = p.removeprefix("group:")
            if group not in GROUPS:
                raise UnknownNameError("layer group", group, GROUPS)
            found = layout.group(group)
            if not found:
                raise InputError(f"layer group {group!r} is empty for this model ({type(model).__name__}); "
                                 "name layers or patterns instead")
        elif is_layer_pattern(p):
            matched = [c for n in layer_filter(layout.modules, p) for c in layout.calls(n)]
            if not matched and not layer_match(INPUT, p):
                raise UnknownNameError("layer pattern", p, [*known, *GROUPS])
            shapes = layout.shapes
            found = [c for c in matched if shapes.get(c)]  # called, with one tensor output (not a tuple)
            if layer_match(INPUT, p):
                found.insert(0, INPUT)
            if not found:
                raise InputError(f"layer pattern {p!r} matches only modules that are never called or return no "
                                 f"single tensor ({', '.join(matched[:5])}{', ...' if len(matched) > 5 else ''}); "
                                 "choose layers whose output is one tensor")
        else:
            base, _ = split_layer(p)
            if p != INPUT and base not in layout.modules:
                raise UnknownNameError("layer", p, [*known, *GROUPS])
            found = [p]
        out += [n for n in found if n not in out]
    return out
