"""A tiny seeded conv net shared by the Quantus comparison tests (seconds, not minutes)."""
from __future__ import annotations

import torch

QUIET = dict(disable_warnings=True, display_progressbar=False)
"""Quantus's keyword arguments for a quiet metric call."""


def seeded_convnet(first_padding: int = 1) -> torch.nn.Module:
    """conv(3->6, 3x3) -> relu -> conv(stride 2) -> relu -> GAP -> linear, 5 classes, weights N(0, 0.25) from
    seed 0, in eval mode; ``first_padding=0`` shrinks the first feature map by 2 pixels."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=first_padding), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


def torch_init_convnet() -> torch.nn.Module:
    """conv(3->8) -> relu -> conv(8->8) -> relu -> GAP -> linear, 5 classes, torch's default initialisation after
    ``torch.manual_seed(0)`` (the global generator then continues, as the callers' inputs expect), in eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
