"""How a layer's output is laid out, decided only where it is unambiguous; otherwise the call says what settles it.

A layer's output becomes extagg maps in one of three layouts:

* ``"nchw"``: (N, C, h, w), channels first (convolutions, batch norms, pools);
* ``"nhwc"``: (N, h, w, C), channels last (Swin's blocks, a ``Linear`` or ``LayerNorm`` applied to 4-D maps);
  the capture is permuted to (N, C, h, w), so the maps are (N, T, h, w) on the layer's spatial grid;
* ``"nld"``: (N, L, D), a batch-first token sequence on a patch grid (:mod:`extagg.tokens`).

``layout=`` (one string for every layer but ``"input"``, or ``{layer: string}``) states it. Without it, a 4-D
output is settled, in this order, by (1) the module's own kind: channels-first modules (``Conv2d``,
``BatchNorm2d``, 2-D pools and pads, ``GroupNorm``, ...), channels-last ones (``Linear`` and a plain ``LayerNorm``
over one dimension, which act on the last dimension; torchvision's Swin blocks and patch merging), torchvision's
``Permute`` by its dims, a ``Sequential`` by its last child that is not an activation, dropout or identity; (2)
the modules of a known kind that read the layer's output in the same forward pass, if they agree (a ``Conv2d``
reading it proves (N, C, h, w)); (3) if neither: (N, C, h, w) only when nothing in the forward pass made or read
a channels-last 4-D tensor (a ``Linear``/``LayerNorm`` given 4-D input, a channel-moving ``Permute``, a Swin block);
otherwise it is a :class:`~extagg.errors.LayerMismatchError` that names ``layout=``. A model that moves channels
with functional code only (``x.permute`` and ``F.linear``, no module) leaves no trace for (3): state ``layout=``.
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch
from torch import nn

from .errors import InputError, LayerMismatchError
from .timm_layers import LAYOUTS as TIMM_LAYOUTS

LAYOUTS = ("nchw", "nhwc", "nld")
INPUT = "input"  # extagg.capture.INPUT (which imports this module)

CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.GroupNorm,
                  nn.LocalResponseNorm, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                  nn.LPPool2d, nn.FractionalMaxPool2d, nn.MaxUnpool2d, nn.Dropout2d, nn.PixelShuffle,
                  nn.PixelUnshuffle, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                  nn.ReplicationPad2d)
"""Modules whose 4-D input and output are (N, C, h, w) by definition."""
LAYOUT_KEEPING = (nn.Identity, nn.Dropout, nn.AlphaDropout)
"""Modules whose output has their input's layout (activation modules too); they settle nothing."""
KNOWN = {  # torchvision classes by (module, class name): the layout of their 4-D input and output
    ("torchvision.models.swin_transformer", name): "nhwc"
    for name in ("SwinTransformerBlock", "SwinTransformerBlockV2", "PatchMerging", "PatchMergingV2",
                 "ShiftedWindowAttention", "ShiftedWindowAttentionV2")
}
KNOWN.update({("torchvision.models.convnext", "LayerNorm2d"): "nchw", ("torchvision.models.convnext", "CNBlock"): "nchw",
              ("torchvision.ops.misc", "FrozenBatchNorm2d"): "nchw"})
KNOWN.update(TIMM_LAYOUTS)
_MOVES = {(0, 2, 3, 1): ("nchw", "nhwc"), (0, 3, 1, 2): ("nhwc", "nchw")}  # Permute dims: (input, output) layout


@attrs.frozen
class Told:
    """What the call states about one layer: ``layout`` (one of :data:`LAYOUTS`) and ``grid``
    ``(h, w, prefix, suffix)`` of a token layer; None where it states nothing."""

    layout: Optional[str] = None
    grid: Optional[tuple] = None
    grid_named: bool = False  # the grid was given for this layer by name, not for every token layer


def check_token_grid(grid) -> tuple[int, int, int, int]:
    """``token_grid`` as ``(h, w, prefix, suffix)``; an :class:`InputError` for anything else."""
    items = tuple(grid) if isinstance(grid, (tuple, list)) else None
    if (items is None or len(items) not in (2, 3, 4)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in items)
            or items[0] < 1 or items[1] < 1 or any(v < 0 for v in items[2:])):
        raise InputError(f"token_grid must be (h, w), (h, w, prefix) or (h, w, prefix, suffix) with h, w >= 1 and "
                         f"prefix, suffix >= 0 (leading and trailing tokens that are not patches), got {grid!r}")
    return (*items, 0, 0)[:4]


def check_layout(layout) -> str:
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(map(repr, LAYOUTS))} ((N, C, h, w), (N, h, w, C), "
                         f"batch-first tokens (N, L, D)), got {layout!r}")
    return layout.lower()


def _per_layer(option, what: str, layers: list[str], check) -> dict:
    if option is None:
        return {}
    if isinstance(option, dict):
        unknown = [key for key in option if key not in layers]
        if unknown:
            raise InputError(f"{what}: {unknown} are not among the requested layers {layers}; key it by the "
                             "layer names the maps are keyed by")
        return {layer: check(value) for layer, value in option.items()}
    value = check(option)
    return {layer: value for layer in layers if layer != INPUT}


def told_per_layer(layers: list[str], token_grid=None, layout=None) -> dict[str, Told]:
    """``{layer: Told}`` from the call's ``token_grid`` and ``layout`` (each None, one value for every layer but
    ``"input"``, or ``{layer: value}``); an :class:`InputError` for a bad value or a key that is not a layer."""
    grids = _per_layer(token_grid, "token_grid", layers, check_token_grid)
    shapes = _per_layer(layout, "layout", layers, check_layout)
    if shapes.get(INPUT, "nchw") != "nchw" or INPUT in grids:
        raise InputError("layout / token_grid: 'input' is the images, always (N, C, H, W)")
    named = isinstance(token_grid, dict)
    for layer, grid in grids.items():
        if named and shapes.get(layer, "nld") != "nld":
            raise InputError(f"layer {layer!r}: token_grid={grid} is for token layers, but layout={shapes[layer]!r}")
    return {layer: Told(shapes.get(layer), grids.get(layer), named and layer in grids)
            for layer in dict.fromkeys([*shapes, *grids])}


def _known(module: nn.Module) -> Optional[str]:
    return KNOWN.get((type(module).__module__, type(module).__name__))


def _last_dim_features(module: nn.Module) -> bool:
    """A module that acts on the last dimension: ``Linear``, a plain ``LayerNorm`` over one dimension."""
    return isinstance(module, nn.Linear) or (type(module) is nn.LayerNorm and len(module.normalized_shape) == 1)


def keeps_layout(module: nn.Module) -> bool:
    return (isinstance(module, LAYOUT_KEEPING) or (type(module).__module__ == "torch.nn.modules.activation"
                                                   and not isinstance(module, nn.MultiheadAttention))
            or (type(module).__module__, type(module).__name__) == ("torchvision.ops.stochastic_depth",
                                                                    "StochasticDepth"))


def output_kind(module: Optional[nn.Module]) -> Optional[str]:
    """The layout of the module's 4-D output as its kind defines it, or None if its kind does not say."""
    if module is None:
        return "nchw"  # the images
    if isinstance(module, CHANNELS_FIRST):
        return "nchw"
    if _last_dim_features(module):
        return "nhwc"
    known = _known(module)
    if known is not None:
        return known
    if (type(module).__module__, type(module).__name__) == ("torchvision.ops.misc", "Permute"):
        return _MOVES.get(tuple(module.dims), (None, None))[1]
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for child in reversed(list(module.children())):
            if not keeps_layout(child):
                return output_kind(child)
    return None


def input_kind(module: nn.Module) -> Optional[str]:
    """The layout the module's kind reads its first (4-D) input in, or None."""
    if isinstance(module, CHANNELS_FIRST):
        return "nchw"
    if _last_dim_features(module):
        return "nhwc"
    if (type(module).__module__, type(module).__name__) == ("torchvision.ops.misc", "Permute"):
        return _MOVES.get(tuple(module.dims), (None, None))[0]
    return _known(module)


class Witness:
    """Watches one forward pass for what settles layouts: which modules of a known kind read each probed layer's
    output (``readers``: ``{layer: {module name: layout}}``) and the first module that made or read a
    channels-last 4-D tensor (``channels_last``). Its hooks only look; :class:`extagg.capture.Probes` installs and
    removes them with its own."""

    def __init__(self):
        self.probed: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []  # the probed outputs, held so that their ids stay theirs
        self.readers: dict[str, dict[str, str]] = {}
        self.channels_last: Optional[str] = None

    def install(self, model: nn.Module, handles: list) -> None:
        for name, module in model.named_modules():
            kind = input_kind(module)
            if kind is not None:
                moves = kind == "nhwc" or output_kind(module) == "nhwc"
                handles.append(module.register_forward_pre_hook(self._reader(name or type(model).__name__, kind,
                                                                             moves)))

    def probe(self, layer: str, tensor: torch.Tensor) -> None:
        """``tensor`` is what the network receives as ``layer``'s output."""
        self.probed[id(tensor)] = layer
        self.alive.append(tensor)

    def _reader(self, name: str, kind: str, channels_last: bool):
        def hook(module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                return None
            if channels_last and self.channels_last is None:
                self.channels_last = f"{name!r} ({type(module).__name__})"
            layer = self.probed.get(id(x))
            if layer is not None:
                self.readers.setdefault(layer, {})[name] = kind
            return None
        return hook

    def release(self) -> None:
        self.alive.clear()
        self.probed.clear()


def _error(layer: str, module, shape: tuple, why: str) -> LayerMismatchError:
    return LayerMismatchError(f"layer {layer!r} ({type(module).__name__}) has output shape {shape}: {why}")


def layout_4d(layer: str, module: nn.Module, shape: tuple, told: Optional[str],
              witness: Optional[Witness]) -> str:
    """``"nchw"`` or ``"nhwc"`` for a 4-D output, by the rules of this module; a :class:`LayerMismatchError`
    naming ``layout=`` where they do not settle it."""
    fix = (f"state it with layout='nchw' or layout='nhwc' (or layout={{{layer!r}: ...}}), which are (N, C, h, w) "
           "and (N, h, w, C)")
    if told is not None:
        if told == "nld":
            raise _error(layer, module, shape, f"layout='nld' is for (N, L, D) token sequences; {fix}")
        return told
    kind = output_kind(module)
    if kind is not None:
        return kind
    readers = (witness.readers.get(layer) if witness is not None else None) or {}
    kinds = set(readers.values())
    if len(kinds) == 1:
        return kinds.pop()
    if kinds:
        listed = ", ".join(f"{name!r} reads it as {kind}" for name, kind in sorted(readers.items()))
        raise _error(layer, module, shape, f"the modules reading it disagree ({listed}); {fix}")
    if witness is None or witness.channels_last is None:
        return "nchw"
    raise _error(layer, module, shape, f"the model runs channels-last (N, h, w, C) tensors ({witness.channels_last} "
                 f"makes or reads one) and neither the layer's kind nor a module reading its output tells whether "
                 f"this output is (N, C, h, w) or (N, h, w, C); {fix}")


def to_nchw(capture):
    """A capture of an (N, h, w, C) layer as (N, C, h, w) maps: output, gradient (N, T, h, w, C) and, when its
    leading dimensions are the output's, the input."""
    out = capture.output
    x_in = capture.input
    if x_in is not None:
        if x_in.ndim != 4 or x_in.shape[:3] != out.shape[:3]:
            raise _error(capture.name, capture.module, tuple(out.shape),
                         f"an (N, h, w, C) layer whose input {tuple(x_in.shape)} is not on the same (N, h, w) grid")
        x_in = x_in.permute(0, 3, 1, 2).contiguous()
    grad = capture.grad
    if grad is not None:
        grad = grad.permute(0, 1, 4, 2, 3).contiguous()
    return attrs.evolve(capture, output=out.permute(0, 3, 1, 2).contiguous(), input=x_in, grad=grad)
