"""Token layers: a layer whose output is a token sequence (N, L, D) is a spatial layer on a token grid.

A vision transformer's blocks (torchvision's ``VisionTransformer.encoder.layers.*``, timm-style ``blocks.*``)
return (N, L, D): ``prefix`` tokens that are not patches (the class token, register or distillation tokens)
followed by ``h * w`` patch tokens in row-major order. :func:`spatial_capture` turns such a capture into the
(N, D, h, w) activation and (N, T, D, h, w) gradient of the patch tokens, so every extractor that needs no
spatial neighbourhood (``bias``, ``scaling``, ``pooled-scaling``, ``conv1x1``, ``linear``: an ``nn.Linear``'s
own weight gradient per token) gives (N, T, h, w) maps there. Grad-CAM's channel weights are the gradient
pooled over the patch tokens; the prefix tokens' gradient is not part of any map.

The grid: given as ``token_grid=(h, w)`` or ``(h, w, prefix)`` to :func:`extagg.saliency`, or found as the
smallest ``prefix`` in ``0 .. MAX_PREFIX`` for which ``L - prefix = h * w`` with ``h / w`` equal to the image's
``H / W`` (square patches). Extractors declared ``neighbourhood=True`` (``conv3x3``, ``iconv``, ``dwconv``: kxk
patches of the map) do not apply: neighbouring patch tokens are not neighbours of a convolution the network
has. Any other output (2-D as an ``fc`` layer's, a 1-D conv's (N, C, L), 5-D) is a
:class:`~extagg.errors.LayerMismatchError` naming the layer and its shape.
"""
from __future__ import annotations

import math
from typing import Optional

import attrs
import torch

from .errors import InputError, LayerMismatchError

MAX_PREFIX = 8
"""Most non-patch tokens the grid search tries (class, distillation and register tokens)."""
CHANNELS_FIRST_1D = (torch.nn.Conv1d, torch.nn.BatchNorm1d, torch.nn.MaxPool1d, torch.nn.AvgPool1d,
                     torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveMaxPool1d, torch.nn.InstanceNorm1d)


def check_token_grid(grid) -> Optional[tuple[int, int, int]]:
    """``token_grid`` as ``(h, w, prefix)`` (None stays None); an :class:`InputError` for anything else."""
    if grid is None:
        return None
    items = tuple(grid) if isinstance(grid, (tuple, list)) else None
    if (items is None or len(items) not in (2, 3)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in items)
            or items[0] < 1 or items[1] < 1 or (len(items) == 3 and items[2] < 0)):
        raise InputError(f"token_grid must be (h, w) or (h, w, prefix) with h, w >= 1 and prefix >= 0, got {grid!r}")
    return (*items, 0) if len(items) == 2 else items


def find_grid(length: int, image_hw: tuple[int, int]) -> Optional[tuple[int, int, int]]:
    """``(h, w, prefix)`` with ``h * w = length - prefix`` and ``h / w = H / W``, smallest prefix; None if none."""
    height, width = image_hw
    for prefix in range(0, min(MAX_PREFIX, length - 1) + 1):
        patches = length - prefix
        # h = sqrt(patches * H / W), w = patches / h, exactly
        h = round(math.sqrt(patches * height / width))
        for cand in (h - 1, h, h + 1):
            if cand >= 1 and patches % cand == 0 and cand * width == (patches // cand) * height:
                return cand, patches // cand, prefix
    return None


def _shape_error(layer: str, module, shape: tuple, why: str) -> LayerMismatchError:
    what = type(module).__name__ if module is not None else "the input"
    return LayerMismatchError(f"layer {layer!r} ({what}) has output shape {shape}: {why}")


def layer_grid(layer: str, module, output: torch.Tensor, n: int, image_hw: tuple[int, int],
               told: Optional[tuple[int, int, int]]) -> Optional[tuple[int, int, int]]:
    """None for a (N, C, h, w) layer, ``(h, w, prefix)`` for a token layer; an error naming the layer and shape
    for any other output."""
    shape = tuple(output.shape)
    if output.ndim == 4:
        return None
    if output.ndim != 3:
        hint = ("a vector per image, with no spatial grid; choose a layer before the pooling or flattening"
                if output.ndim == 2 else "extagg maps need (N, C, h, w) maps or (N, L, D) token sequences")
        raise _shape_error(layer, module, shape, hint)
    if isinstance(module, CHANNELS_FIRST_1D):
        raise _shape_error(layer, module, shape, "a 1-D signal (N, C, L), not a token sequence; extagg maps need "
                           "(N, C, h, w) maps or (N, L, D) tokens")
    if shape[0] != n:
        raise _shape_error(layer, module, shape, f"the first dimension is not the batch ({n}); a token layer must "
                           "be batch-first (N, L, D), e.g. nn.MultiheadAttention(batch_first=True)")
    length = shape[1]
    if told is not None:
        h, w, prefix = told
        if h * w + prefix != length:
            raise _shape_error(layer, module, shape, f"token_grid={told} needs {h * w + prefix} tokens, the layer "
                               f"has {length}")
        return told
    grid = find_grid(length, image_hw)
    if grid is None:
        raise _shape_error(layer, module, shape, f"no h x w patch grid with the image's aspect ratio "
                           f"{image_hw[0]}:{image_hw[1]} and at most {MAX_PREFIX} other tokens fits {length} "
                           "tokens; pass token_grid=(h, w, prefix)")
    return grid


def to_grid(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(..., L, D) tokens -> (..., D, h, w) of the patch tokens."""
    h, w, prefix = grid
    patches = tokens[..., prefix:, :]
    return patches.transpose(-1, -2).reshape(*patches.shape[:-2], patches.shape[-1], h, w)


def spatial_capture(capture, n: int, image_hw: tuple[int, int], told=None):
    """The capture as extractors see it: unchanged for a (N, C, h, w) layer; on the patch grid (``grid`` set)
    for a token layer; an error naming the layer and shape for any other."""
    if capture.output is None or capture.module is None:
        return capture
    grid = layer_grid(capture.name, capture.module, capture.output, n, image_hw, told)
    if grid is None:
        return capture
    x_in = capture.input
    if x_in is not None:
        if x_in.ndim != 3 or x_in.shape[:2] != capture.output.shape[:2]:
            raise _shape_error(capture.name, capture.module, tuple(capture.output.shape),
                               f"a token layer whose input {tuple(x_in.shape)} is not a sequence of the same tokens")
        x_in = to_grid(x_in, grid)
    return attrs.evolve(capture, output=to_grid(capture.output, grid), input=x_in,
                        grad=None if capture.grad is None else to_grid(capture.grad, grid), grid=grid)


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
            h, w, prefix = capture.grid
            raise LayerMismatchError(
                f"extractor {spec.name!r} (in {str(method)!r}) reads kxk neighbourhoods of a spatial map, but layer "
                f"{capture.name!r} is a token layer ({h}x{w} patch tokens, {prefix} other): neighbouring tokens are "
                "not inputs of a convolution the network has; use 'bias', 'scaling', 'pooled-scaling', 'conv1x1' "
                "or 'linear' there, or mismatched='skip'")
    return out
