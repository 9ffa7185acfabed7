"""Token layers: a layer whose output is a token sequence (N, L, D) is a spatial layer on a patch grid.

A vision transformer's blocks (torchvision's ``VisionTransformer.encoder.layers.*``, timm-style ``blocks.*``)
return (N, L, D): ``prefix`` leading tokens that are not patches (the class token, register or distillation
tokens), ``h * w`` patch tokens in row-major order, then ``suffix`` trailing tokens that are not patches (registers
some models append). Such a capture becomes the (N, D, h, w) activation and (N, T, D, h, w) gradient of the
patch tokens, so every extractor that needs no spatial neighbourhood (``bias``, ``scaling``, ``pooled-scaling``,
``conv1x1``, ``linear``: an ``nn.Linear``'s own weight gradient per token) gives (N, T, h, w) maps there. Grad-CAM's channel weights are the gradient pooled over the patch tokens; the other
tokens' gradient is not part of any map (:func:`layer_form`, then :func:`spatial_capture`). A 4-D output is
laid out by :mod:`extagg.layouts`.

The grid is never guessed from the token count. It is ``token_grid=(h, w[, prefix[, suffix]])`` from the call
(one for every token layer, or ``{layer: grid}``), or what the model declares: the nearest module, from the layer
up to the model, that declares non-patch tokens (``num_prefix_tokens`` / ``num_suffix_tokens`` attributes, as
timm's models have, or else a ``class_token`` / ``cls_token`` parameter: one leading token), or the model itself;
its patch embedding (the ``Conv2d`` inside it, reading the image's channels, with ``kernel_size == stride``, no
padding, no dilation: ``h = H // stride[0]``, ``w = W // stride[1]``); and the layer must hold exactly
``prefix + h * w + suffix`` tokens. Anything else (no such convolution, several strides, another count: trailing
register tokens the model does not declare, a class-token-only layer, a pooled or merged sequence) is a
:class:`~extagg.errors.LayerMismatchError` that names ``token_grid=``. The batch comes first: an output whose
first dimension is not N is refused, and one whose first two dimensions are both N is read as (N, L, D) only
where the layer or a module around it declares ``batch_first=True`` (``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer``; torchvision's ViT encoder is batch-first) or the call says ``layout="nld"``.

Extractors declared ``neighbourhood=True`` (``conv3x3``, ``iconv``, ``dwconv``: kxk patches of the map) do not
apply: neighbouring patch tokens are not neighbours of a convolution the network has. Any other output (2-D as an
``fc`` layer's, a 1-D conv's (N, C, L), 5-D) is a :class:`~extagg.errors.LayerMismatchError` naming the layer
and its shape.
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch
from torch import nn

from .capture import split_layer
from .errors import LayerMismatchError
from .layouts import Told, layout_4d, to_nchw

CHANNELS_FIRST_1D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
                     nn.AdaptiveMaxPool1d, nn.InstanceNorm1d)
BATCH_FIRST = {("torchvision.models.vision_transformer", name) for name in ("EncoderBlock", "Encoder")}
"""Classes whose token sequences are (N, L, D) by construction."""


def _ancestors(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """The layer's module and the modules around it, nearest first, the model last."""
    modules = dict(model.named_modules())
    parts = split_layer(layer)[0].split(".")
    names = [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]
    return [(name, modules[name]) for name in names if name in modules]


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _non_patch_tokens(module: nn.Module) -> Optional[tuple[int, int, str]]:
    """``(prefix, suffix, how it says so)`` if the module declares its non-patch tokens, else None."""
    prefix, suffix = _int(getattr(module, "num_prefix_tokens", None)), _int(getattr(module, "num_suffix_tokens", None))
    classes = [name for name in ("class_token", "cls_token") if isinstance(module._parameters.get(name), nn.Parameter)]
    if prefix is None and suffix is None and not classes:
        return None
    said = []
    if prefix is not None:
        said.append(f"num_prefix_tokens={prefix}")
    elif classes:
        said.append(f"a class token ({classes[0]!r})")
    if suffix is not None:
        said.append(f"num_suffix_tokens={suffix}")
    return (len(classes[:1]) if prefix is None else prefix), (suffix or 0), ", ".join(said)


def declared_grid(model: nn.Module, layer: str, image_shape: tuple) -> tuple[Optional[tuple], str]:
    """``((h, w, prefix, suffix) or None, what the model declares)`` for a token layer (see the module docstring)."""
    scope_name, scope, counts = "", model, (0, 0, "no non-patch tokens")
    for name, module in _ancestors(model, layer):
        found = _non_patch_tokens(module)
        if found is not None:
            scope_name, scope, counts = name, module, found
            break
    where = f"{scope_name!r}" if scope_name else "the model"
    channels, height, width = image_shape[1:]
    convs = {(name, tuple(m.stride)) for name, m in scope.named_modules()
             if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == tuple(m.stride) and m.padding in ((0, 0), "valid")
             and tuple(m.dilation) == (1, 1) and m.in_channels == channels}
    strides = {stride for _, stride in convs}
    prefix, suffix, said = counts
    if len(strides) != 1:
        what = ("no patch embedding (a Conv2d on the image's channels with kernel_size == stride and no padding)"
                if not strides else "patch embeddings of different strides (" +
                ", ".join(f"{name!r}: {stride}" for name, stride in sorted(convs)) + ")")
        return None, f"{where} declares {said} and has {what}"
    stride = strides.pop()
    name = sorted(convs)[0][0]
    grid = (height // stride[0], width // stride[1], prefix, suffix)
    return grid, (f"{where} declares {said}; its patch embedding {scope_name + '.' + name if scope_name else name!r} "
                  f"(stride {stride}) gives {grid[0]}x{grid[1]} patches")


def batch_first(model: nn.Module, layer: str) -> tuple[Optional[bool], str]:
    """Whether the layer or the nearest module around it declares its sequences batch-first, and which one."""
    for name, module in _ancestors(model, layer):
        flag = getattr(module, "batch_first", None)
        if isinstance(flag, bool):
            return flag, f"{name or type(model).__name__!r} ({type(module).__name__}) declares batch_first={flag}"
        if (type(module).__module__, type(module).__name__) in BATCH_FIRST:
            return True, f"{name!r} ({type(module).__name__}) is batch-first"
    return None, ""


def _shape_error(layer: str, module, shape: tuple, why: str) -> LayerMismatchError:
    what = type(module).__name__ if module is not None else "the input"
    return LayerMismatchError(f"layer {layer!r} ({what}) has output shape {shape}: {why}")


def layer_grid(layer: str, module, output: torch.Tensor, n: int, image_shape: tuple, told: Told = Told(),
               model: Optional[nn.Module] = None) -> tuple[int, int, int, int]:
    """``(h, w, prefix, suffix)`` of an (N, L, D) token layer by the rules of this module; an error naming the
    layer, its shape and the argument that settles it otherwise."""
    shape = tuple(output.shape)
    fix = f"pass token_grid=(h, w, prefix, suffix) (or token_grid={{{layer!r}: ...}})"
    if told.layout not in (None, "nld"):
        raise _shape_error(layer, module, shape, f"layout={told.layout!r} is for 4-D maps; a 3-D output is read "
                           "as tokens (N, L, D) only")
    if isinstance(module, CHANNELS_FIRST_1D):
        raise _shape_error(layer, module, shape, "a 1-D signal (N, C, L), not a token sequence; extagg maps need "
                           "(N, C, h, w) maps or (N, L, D) tokens")
    if shape[0] != n:
        raise _shape_error(layer, module, shape, f"the first dimension is not the batch ({n}); a token layer must "
                           "be batch-first (N, L, D), e.g. nn.MultiheadAttention(batch_first=True)")
    if shape[1] == n and told.layout != "nld":
        flag, said = batch_first(model, layer) if model is not None else (None, "")
        if not flag:
            why = (f"{said}, so this is (L, N, D) with L = N, which has no map; use a batch-first layer" if flag is False
                   else f"its first two dimensions both equal the batch size {n}, and nothing declares whether it is "
                   f"batch-first (N, L, D) or sequence-first (L, N, D); if batch-first, say so with layout='nld' "
                   f"(or layout={{{layer!r}: 'nld'}})")
            raise _shape_error(layer, module, shape, why)
    length = shape[1]
    if told.grid is not None:
        h, w, prefix, suffix = told.grid
        if h * w + prefix + suffix != length:
            raise _shape_error(layer, module, shape, f"token_grid={told.grid} needs {h * w + prefix + suffix} tokens, "
                               f"the layer has {length}")
        return told.grid
    grid, said = declared_grid(model, layer, image_shape) if model is not None else (None, "no model")
    if grid is None:
        raise _shape_error(layer, module, shape, f"no patch grid is declared ({said}); {fix}")
    h, w, prefix, suffix = grid
    if h * w + prefix + suffix != length:
        raise _shape_error(layer, module, shape, f"{said}, {prefix} leading and {suffix} trailing non-patch tokens: "
                           f"{h * w + prefix + suffix} tokens, but the layer has {length} (undeclared register "
                           f"tokens? a pooled or merged sequence?); if it is on a patch grid, {fix}")
    return grid


def to_grid(tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
    """(..., L, D) tokens -> (..., D, h, w) of the patch tokens."""
    h, w, prefix, suffix = grid
    patches = tokens[..., prefix:tokens.shape[-2] - suffix, :]
    return patches.transpose(-1, -2).reshape(*patches.shape[:-2], patches.shape[-1], h, w)


def layer_form(capture, n: int, image_shape: tuple, told: Optional[Told] = None,
               model: Optional[nn.Module] = None, witness=None):
    """How the capture becomes (N, C, h, w) maps: ``"nchw"`` (as it is), ``"nhwc"`` (permuted,
    :mod:`extagg.layouts`; ``witness`` is the pass's :class:`~extagg.layouts.Witness`) or a token layer's
    ``(h, w, prefix, suffix)``; an error naming the layer, its shape and what settles it otherwise. Reads only the
    output's shape, so it runs before the backward pass."""
    if capture.output is None or capture.module is None:
        return "nchw"
    told = told or Told()
    out = capture.output
    shape = tuple(out.shape)
    if out.ndim == 4:
        if told.grid_named:
            raise _shape_error(capture.name, capture.module, shape, f"token_grid={told.grid} is for (N, L, D) token "
                               "layers; this one is 4-D (its layout: layout='nchw' or 'nhwc')")
        return layout_4d(capture.name, capture.module, shape, told.layout, witness)
    if out.ndim != 3:
        hint = ("a vector per image, with no spatial grid; choose a layer before the pooling or flattening"
                if out.ndim == 2 else "extagg maps need (N, C, h, w) maps or (N, L, D) token sequences")
        raise _shape_error(capture.name, capture.module, shape, hint)
    return layer_grid(capture.name, capture.module, out, n, image_shape, told, model)


def spatial_capture(capture, form):
    """The capture as extractors see it, in the ``form`` :func:`layer_form` gave: (N, C, h, w) maps, a token
    layer's on its patch grid (``grid`` set)."""
    if form == "nchw":
        return capture
    if form == "nhwc":
        return to_nchw(capture)
    out, x_in = capture.output, capture.input
    if x_in is not None:
        if x_in.ndim != 3 or x_in.shape[:2] != out.shape[:2]:
            raise _shape_error(capture.name, capture.module, tuple(out.shape),
                               f"a token layer whose input {tuple(x_in.shape)} is not a sequence of the same tokens")
        x_in = to_grid(x_in, form)
    return attrs.evolve(capture, output=to_grid(out, form), input=x_in,
                        grad=None if capture.grad is None else to_grid(capture.grad, form), grid=form)


def usable(registry, capture, methods: list, mismatched: str) -> list:
    """``methods`` whose extractors apply at the layer: at a token layer an extractor declared
    ``neighbourhood`` is a :class:`LayerMismatchError` (``mismatched="raise"``) or left out (``"skip"``)."""
    if getattr(capture, "grid", None) is None:
        return methods
    out = []
    for method in methods:
        spec = registry.extractors[method.extractor.name]
        if not spec.neighbourhood:
            out.append(method)
        elif mismatched == "raise":
            h, w, prefix, suffix = capture.grid
            raise LayerMismatchError(
                f"extractor {spec.name!r} (in {str(method)!r}) reads kxk neighbourhoods of a spatial map, but layer "
                f"{capture.name!r} is a token layer ({h}x{w} patch tokens, {prefix + suffix} other): neighbouring "
                "tokens are not inputs of a convolution the network has; use 'bias', 'scaling', 'pooled-scaling', "
                "'conv1x1' or 'linear' there, or mismatched='skip'")
    return out
