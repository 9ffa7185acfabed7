"""Operations on saliency maps (..., h, w) shared by the engine, the combination, the evaluations and the
pictures: one min-max normalisation and one bilinear resize."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] per map over the last two dims; a constant map becomes all zeros (never NaN)."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    span = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(m))


def resize_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, T, h, w) maps to ``size`` (H, W), ``align_corners=False``; unchanged if equal."""
    size = tuple(int(v) for v in size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
