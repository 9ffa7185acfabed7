"""Capture activations and gradients at named layers in one forward and one backward pass.

Each requested layer gets one forward hook for the duration of a ``with`` block (hooks are always removed).
The hook returns ``output + probe`` where ``probe`` is a zero leaf tensor: the network runs on unchanged
values, the gradient with respect to ``probe`` is exactly ``d objective / d output``, and in-place operations
later in the network (``ReLU(inplace=True)``) act on the sum, never on the captured activation.
A module called more than once per forward pass is addressed per call as ``name@k`` (k = 0, 1, ...); naming it
without ``@k`` is an error rather than a silent mix of calls.
"""
from __future__ import annotations

import enum
import re
from typing import Iterable, Optional

import attrs
import torch

from .errors import InputError, UnknownNameError
from .layouts import Witness, output_kind

INPUT = "input"


class Part(enum.Enum):
    """Which tensor of a layer a version check watches: the module's output or its first positional input."""

    OUTPUT = "output"
    INPUT = "input"

_AT = re.compile(r"^(.*)@(\d+)$")


@attrs.define
class LayerCapture:
    """What an extractor sees at one layer.

    ``output``: the activation ``x^out`` (N, C, h, w); ``input``: the module's first positional input ``x^in``;
    ``grad``: ``+d objective / d x^out`` for every target, (N, T, C, h, w); ``module``: None at ``"input"``.
    Floating tensors are in the compute dtype (float32 for half/bfloat16 models). ``store``: the layer's
    :class:`extagg.phase2.Store` (set by phase 2 when it builds the capture it hands to extractors); pass it to
    the forms you build (``Dense(c.grad, store=c.store)``) so they share statistics of the captured tensors.
    ``grid``: at a token layer (N, L, D), ``(h, w, prefix, suffix)``; ``output``/``input``/``grad`` are then already
    the patch tokens on the grid, (N, D, h, w) and (N, T, D, h, w) (:mod:`extagg.tokens`); a channels-last
    (N, h, w, C) layer's are already permuted to channels first (:mod:`extagg.layouts`). ``training``: the module's
    ``training`` flag during the pass (phase 2 runs after the model's mode is restored; read this, not the module's).
    """

    name: str
    module: Optional[torch.nn.Module]
    output: Optional[torch.Tensor] = None
    input: Optional[torch.Tensor] = None
    grad: Optional[torch.Tensor] = None
    store: Optional[object] = None
    grid: Optional[tuple] = None  # (h, w, prefix, suffix) at a token layer (extagg.tokens), None for a 4-D one
    training: Optional[bool] = None  # the module's training flag during the pass (None at "input")


def split_layer(name: str) -> tuple[str, Optional[int]]:
    """``"blocks.3@1"`` -> ``("blocks.3", 1)``; ``"layer4"`` -> ``("layer4", None)``."""
    m = _AT.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def resolve_layers(model: torch.nn.Module, layers: Iterable[str]) -> dict[str, Optional[torch.nn.Module]]:
    """Map each layer name to its module (None for ``"input"``); unknown names raise with suggestions."""
    modules = dict(model.named_modules())
    out: dict[str, Optional[torch.nn.Module]] = {}
    for layer in layers:
        if not isinstance(layer, str):
            raise TypeError(f"layer names are strings (named_modules() names or 'input'), got {layer!r}")
        if layer == INPUT:
            out[layer] = None
            continue
        base, _ = split_layer(layer)
        if base not in modules or base == "":
            raise UnknownNameError("layer", layer, [INPUT, *(n for n in modules if n)])
        out[layer] = modules[base]
    return out


class Probes:
    """Context manager that hooks the requested layers; after the forward pass, ``probes`` and ``captures`` are set.
    With ``witness``, a :class:`extagg.layouts.Witness` (``self.witness``) also watches the pass for what settles
    the layers' layouts; its hooks only look and are removed with the probes'."""

    def __init__(self, model: torch.nn.Module, needs: dict[str, set[str]],
                 modules: Optional[dict[str, Optional[torch.nn.Module]]] = None, witness: bool = False):
        self.model = model
        self.witness = Witness() if witness else None
        self.needs = needs
        self.modules = ({layer: modules[layer] for layer in needs} if modules is not None
                        else resolve_layers(model, needs))
        self.handles: list = []
        self.calls: dict[int, int] = {}
        self.raw: dict[str, dict[str, torch.Tensor]] = {}
        self.probes: dict[str, torch.Tensor] = {}
        self.versions: dict[tuple[str, Part], tuple[torch.Tensor, int]] = {}

    def __enter__(self) -> "Probes":
        by_module: dict[int, list[tuple[str, Optional[int]]]] = {}
        seen: dict[int, torch.nn.Module] = {}
        for layer, module in self.modules.items():
            if module is None:
                continue
            by_module.setdefault(id(module), []).append((layer, split_layer(layer)[1]))
            seen[id(module)] = module
        try:
            for key, module in seen.items():
                self.handles.append(module.register_forward_hook(self._hook(key, by_module[key])))
            if self.witness is not None and any(output_kind(m) is None for m in seen.values()):
                self.witness.install(self.model, self.handles)  # only where a layer's kind does not settle it
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.witness is not None:
            self.witness.release()

    def input_probe(self, images: torch.Tensor) -> torch.Tensor:
        """The image tensor the model should see; a leaf that requires grad if ``"input"`` is requested."""
        if INPUT not in self.modules:
            return images
        x = images.detach().requires_grad_(True)
        self.probes[INPUT] = x
        self.raw[INPUT] = {"output": images.detach()}
        return x

    def _hook(self, key: int, wanted: list[tuple[str, Optional[int]]]):
        def hook(module, args, output):
            index = self.calls.get(key, 0)
            self.calls[key] = index + 1
            for layer, at in wanted:
                if (at if at is not None else 0) != index:
                    continue
                if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                    raise InputError(
                        f"layer {layer!r} ({type(module).__name__}) returns {type(output).__name__}, not a floating "
                        "tensor; choose a layer whose output is one tensor"
                    )
                record = {"output": output.detach(), "training": module.training}
                self.versions[(layer, Part.OUTPUT)] = (output, output._version)
                if "input" in self.needs[layer]:
                    if not args or not isinstance(args[0], torch.Tensor):
                        raise InputError(f"layer {layer!r} has no tensor input to capture")
                    record["input"] = args[0].detach()
                    self.versions[(layer, Part.INPUT)] = (args[0], args[0]._version)
                probe = torch.zeros_like(output, requires_grad=True)
                self.probes[layer] = probe
                self.raw[layer] = record
                output = output + probe
                if self.witness is not None:
                    self.witness.probe(layer, output)
            return output

        return hook

    def check(self) -> None:
        """After the forward pass: every layer was reached exactly as addressed, captures were not modified."""
        for layer, module in self.modules.items():
            if module is None:
                continue
            base, at = split_layer(layer)
            count = self.calls.get(id(module), 0)
            if count == 0:
                raise InputError(f"layer {layer!r} was not called in the forward pass; choose a layer the model uses")
            if at is None and count > 1:
                raise InputError(
                    f"layer {layer!r} ({type(module).__name__}) was called {count} times in one forward pass; "
                    f"name one call: " + ", ".join(f"'{base}@{i}'" for i in range(count))
                )
            if at is not None and at >= count:
                raise InputError(f"layer {layer!r}: the module was called only {count} time(s) (valid: @0..@{count - 1})")
        for (layer, part), (tensor, version) in self.versions.items():
            if tensor._version != version:
                raise InputError(
                    f"the {part.value} of layer {layer!r} "
                    "was modified in place later in the forward pass; choose the next layer instead"
                )
