"""Overlay a saliency map on a photo and save it as a PNG (no matplotlib needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .maps import normalise, resize_maps


def jet(v: torch.Tensor) -> torch.Tensor:
    """The jet colour map: (H, W) in [0, 1] -> (3, H, W) RGB in [0, 1]."""
    four = 4 * v
    r = (torch.minimum(four - 1.5, -four + 4.5)).clamp(0, 1)
    g = (torch.minimum(four - 0.5, -four + 3.5)).clamp(0, 1)
    b = (torch.minimum(four + 0.5, -four + 2.5)).clamp(0, 1)
    return torch.stack([r, g, b])


def overlay(image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend ``jet(normalise(saliency))`` (any h, w; resized bilinearly) over ``image`` (3, H, W) in [0, 1]."""
    m = saliency.detach().float().reshape(1, 1, *saliency.shape[-2:])
    m = resize_maps(m, image.shape[-2:])[0, 0]
    return ((1 - alpha) * image.float().cpu() + alpha * jet(normalise(m).cpu())).clamp(0, 1)


def save_png(rgb: torch.Tensor, path: Union[str, Path]) -> Path:
    """Save a (3, H, W) [0, 1] tensor as a PNG."""
    from PIL import Image

    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path
